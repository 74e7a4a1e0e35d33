"""Records: the TFRecord schema, the image sources records are made from, shard jobs."""
