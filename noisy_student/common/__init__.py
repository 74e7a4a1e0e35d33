"""What every stage uses at run time: the distribution strategy, model files, shard-job outputs."""
