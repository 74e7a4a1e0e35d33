"""Pseudo labelling: the teacher's predictions on unlabeled shards and their stats files."""
