"""Training and evaluation input: tf.data pipelines, preprocessing, RandAugment."""
