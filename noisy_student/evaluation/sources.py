"""Where evaluation images come from: TFRecords or a class-folder tree, as masked batches.

Every suite reads through `iterate_batches`, so a record that does not decode, a label out
of range and a truncated file are handled (counted, limited, named) the same way for all.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf

from data import fileio
from data.input import pipeline
from data.input import preprocessing
from data.records import sources as records_sources

IMAGE_EXTENSIONS = records_sources.TF_DECODABLE_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class Source:
  """Where images come from.

  kind "tfrecord": `path` is a file pattern read by `data.input.pipeline.eval_dataset`.
  kind "folder": `path`/<class>/<image>; classes in sorted order get labels 0, 1, ...
  (or `label_map[i]`); `crop` applies the eval center crop (raw photos, ImageNet-A),
  otherwise images are only resized to the model size (ImageNet-C's stored crops).
  """
  kind: str
  path: str
  crop: bool = True
  label_map: tuple[int, ...] | None = None


def clean_source(config, label_map=None, crop: bool = True) -> Source:
  """The clean set of an EvalConfig: --eval_pattern, else --image_folder."""
  if config.eval_pattern:
    return Source("tfrecord", config.eval_pattern)
  return Source("folder", config.image_folder, crop=crop, label_map=label_map)


def folder_files(root: str) -> tuple[list[str], list[int], list[str]]:
  """(image paths, class indices, class names) of a class-folder tree, sorted: the
  project's one class-folder listing (`data.records.sources.folder_images`).

  Raises:
    ValueError: no class folders, or an image `tf.io.decode_image` cannot read (named).
  """
  try:
    files, labels, classes = records_sources.folder_images(root)
  except FileNotFoundError as e:
    raise ValueError(f"no image folder at {root!r}") from e
  if classes is None:
    raise ValueError(f"no class folders under {root!r} (expected {root}/<class>/<image>)")
  for f in files:
    if not f.lower().endswith(IMAGE_EXTENSIONS):
      raise ValueError(f"{f}: evaluation decodes with tf.io.decode_image, which reads only "
                       f"{', '.join(IMAGE_EXTENSIONS)}; convert the folder with "
                       "`python -m data.make_tfrecords --source=folder:...` and pass "
                       "--eval_pattern")
  return files, labels, classes


def folder_dataset(source: Source, preprocess: preprocessing.PreprocessConfig,
                   batch_size: int) -> tf.data.Dataset:
  """Batches {"image", "label", "id", "mask", "ok"} from a class-folder tree."""
  files, labels, classes = folder_files(source.path)
  if source.label_map is not None:
    if len(source.label_map) != len(classes):
      raise ValueError(f"{source.path} has {len(classes)} class folders, the class subset "
                       f"{len(source.label_map)} classes")
    labels = [source.label_map[i] for i in labels]
  config = preprocess.for_eval()

  def load(path, label):
    encoded = tf.io.read_file(path)
    if source.crop:
      image = preprocessing.preprocess_image(encoded, config)
    elif config.mode == "small":
      image = tf.cast(preprocessing.fit_small(preprocessing.decode_rgb(encoded),
                                              config.image_size), tf.float32)
    else:
      image = preprocessing.resize(preprocessing.decode_rgb(encoded), config.image_size)
    return {"image": image, "label": label, "id": path, "mask": 1.0, "ok": 1.0}

  ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(labels, tf.int32)))
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)


def iterate_batches(source: Source, *, preprocess, num_classes: int, batch_size: int,
                    label_offset: int = 0, max_examples: int = 0,
                    max_bad_records: int = pipeline.DEFAULT_MAX_BAD_RECORDS
                    ) -> Iterator[dict]:
  """NumPy batches with "image", "label", "id" and "valid" (a real, decoded, labeled row).

  Rows that are not valid are never scored; each batch also counts the ones that matter:
  "failed" (records that could not be read) and "unlabeled" (label -1). With
  max_examples, rows past the first `max_examples` valid ones are marked invalid (and
  not counted) and iteration stops. A record that does not decode, or whose label is
  outside [0, num_classes), counts as failed; more than `max_bad_records` of them is a
  ValueError, as is a truncated TFRecord file (named).
  """
  if source.kind == "tfrecord":
    ds = pipeline.eval_dataset(source.path, global_batch_size=batch_size,
                               preprocess=preprocess, num_classes=num_classes,
                               label_offset=label_offset, flag_bad_labels=True)
  else:
    ds = folder_dataset(source, preprocess, batch_size)
  seen = failed = 0
  for batch in _naming_broken_files(ds.as_numpy_iterator(), source):
    real = batch["mask"] > 0
    read = real & (batch["ok"] > 0)
    valid = read & (batch["label"] >= 0)
    if max_examples:
      valid &= np.cumsum(valid) + seen <= max_examples
    done = bool(max_examples) and seen + int(valid.sum()) >= max_examples
    if done:  # Rows after the last one used are not looked at.
      real &= np.arange(len(real)) <= np.flatnonzero(valid)[-1]
    seen += int(valid.sum())
    failed += int((real & ~read).sum())
    if failed > max_bad_records:
      raise ValueError(
          f"{source.path}: more than --max_bad_records={max_bad_records} records do not "
          f"decode or have a label outside [0, {num_classes}) after --label_offset="
          f"{label_offset} ({failed} so far): fix or remove them, check --label_offset, "
          "or raise --max_bad_records")
    yield {"image": batch["image"], "label": batch["label"].astype(np.int64),
           "id": batch["id"], "valid": valid, "failed": int((real & ~read).sum()),
           "unlabeled": int((real & read & (batch["label"] < 0)).sum())}
    if done:
      return


def _naming_broken_files(batches: Iterator[dict], source: Source) -> Iterator[dict]:
  """`batches`; a truncated TFRecord file of `source` is a ValueError naming it."""
  try:
    yield from batches
  except tf.errors.DataLossError as e:
    raise fileio.data_loss_error(fileio.list_record_files(source.path), e) from None
