"""Tiny TFRecord fixtures for the trainer tests (random PNGs, written by the tests)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from data.records import schema


def write_records(path: str, num: int, *, num_classes: int = 4, size: int = 16,
                  seed: int = 0, labeled: bool = True, pseudo: bool = False,
                  label_shift: int = 0) -> str:
  """Writes `num` random size x size PNG examples to `path`; returns the path."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(num):
      label = int(rng.integers(num_classes))
      # Class-dependent brightness so that a few steps can learn something.
      image = np.clip(rng.normal(40 + 50 * label, 30, (size, size, 3)), 0, 255)
      encoded = tf.io.encode_png(image.astype(np.uint8)).numpy()
      features = schema.image_features(
          encoded, f"{os.path.basename(path)}-{i}",
          label + label_shift if labeled else schema.UNLABELED, height=size, width=size)
      if pseudo:
        probs = rng.dirichlet(np.ones(num_classes))
        features.update(schema.pseudo_features(probs))
      writer.write(schema.make_example(features).SerializeToString())
  return path
