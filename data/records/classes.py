"""How many classes a data set has, read from the data (the driver's `--num_classes=0`).

  * `fashion_mnist:*`: 10.
  * `folder:PATH`: the class subfolders of PATH (listed, not walked).
  * `tfds:NAME/SPLIT`: the dataset's ClassLabel feature (from its metadata; nothing is read).
  * `records:PATTERN`: 1 + the largest label of the records (every record is read, so
    this suits labeled sets of up to a few million images; give the count otherwise).
"""

from __future__ import annotations

import os

import tensorflow as tf

from data import fileio
from data.records import schema

FASHION_MNIST_CLASSES = 10


def count_classes(spec: str, *, label_offset: int = 0, tfds_data_dir: str | None = None
                  ) -> int:
  """The number of classes of `spec` (see the module docstring).

  Raises:
    ValueError: an unknown spec, or data without classes (a flat folder, no labels).
  """
  kind, _, arg = spec.partition(":")
  if kind == "fashion_mnist":
    return FASHION_MNIST_CLASSES
  if kind == "folder":
    count = _class_folders(arg)
  elif kind == "tfds":
    count = _tfds_classes(arg, tfds_data_dir)
  elif kind == "records":
    count = _record_classes(arg, label_offset)
  else:
    raise ValueError(f"cannot count the classes of {spec!r}: use fashion_mnist:SPLIT, "
                     "folder:PATH, tfds:NAME/SPLIT or records:PATTERN")
  if count < 1:
    raise ValueError(f"{spec} has no classes (no class folders or no labels): give "
                     "--num_classes")
  return count


def _class_folders(root: str) -> int:
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist")
  return sum(1 for d in tf.io.gfile.listdir(root)
             if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(root, d)))


def _tfds_classes(spec: str, data_dir: str | None) -> int:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(spec.split("/", 1)[0], data_dir=data_dir)
  labels = [f for f in builder.info.features.values()
            if isinstance(f, tfds.features.ClassLabel)]
  return labels[0].num_classes if labels else 0


def _record_classes(pattern: str, label_offset: int) -> int:
  files = fileio.list_files(pattern)
  labels = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(
      lambda s: schema.parse_example(s, label_offset=label_offset)["label"],
      num_parallel_calls=tf.data.AUTOTUNE)
  largest = labels.reduce(tf.constant(schema.UNLABELED), tf.maximum)
  return int(largest) + 1
