"""Selection: confidence filtering and class balancing of the pseudo labels."""
