"""samples.png: what the student will be taught, a row of selected images per class.

Paper Sec. 3.1 filters and balances the teacher's pseudo labels; selection.png shows the
counts, this shows the images. It reads the selected records themselves (the output of
noisy_student.select, already shuffled, so file order is a random draw) and stops as
soon as every shown class has `per_class` distinct images, or after `max_records`
records: a few thousand records at ImageNet scale, not the selection.

Each image is shown with its pseudo label's confidence above it; where the record keeps
the image's true label (`image/class/hidden_label`, kept by data.split for unlabeled
images), a green frame means the pseudo label is right and a red one that it is wrong.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from data.records import schema
from noisy_student.common import job_io

PER_CLASS = 8
MAX_ROWS = 100        # More classes (ImageNet's 1000): this many, evenly spaced.
MAX_RECORDS = 50_000  # Stop reading after this many records, full or not.
THUMB = 64            # Thumbnail side in pixels.
_PAD = 6

_SPEC = {
    schema.ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.PSEUDO_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    schema.PSEUDO_CONFIDENCE: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    schema.HIDDEN_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def shown_classes(num_classes: int, max_rows: int = MAX_ROWS) -> list[int]:
  """Every class, or `max_rows` evenly spaced ones (first and last included)."""
  if num_classes <= max_rows:
    return list(range(num_classes))
  return sorted(set(np.linspace(0, num_classes - 1, max_rows).round().astype(int).tolist()))


def thumbnail(encoded: bytes, size: int = THUMB) -> np.ndarray | None:
  """[h, w, 3] uint8 with max(h, w) <= size, or None if the bytes do not decode."""
  try:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, ValueError):
    return None
  image = tf.image.resize(image, [size, size], preserve_aspect_ratio=True, antialias=True)
  return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def read_samples(files: list[str], classes: list[int], *, per_class: int = PER_CLASS,
                 max_records: int = MAX_RECORDS, label_offset: int = 0
                 ) -> dict[int, list[dict]]:
  """Up to `per_class` distinct images of each of `classes`, in file order. Hidden
  labels are stored as the labels were; `label_offset` makes them 0-based like the
  pseudo labels (1 for ImageNet TPU files).

  Returns:
    {class: [{"image": thumbnail or None, "confidence": float, "hidden_label": int}]};
    copies of one image (upsampled classes) count once (keyed on image/id, else the
    encoded bytes).
  """
  rows = {c: [] for c in classes}
  missing, seen, read = set(classes), set(), 0
  for batch in _batches(files):
    for label, conf, encoded, image_id, hidden in zip(
        batch[schema.PSEUDO_LABEL].tolist(), batch[schema.PSEUDO_CONFIDENCE].tolist(),
        batch[schema.ENCODED], batch[schema.ID], batch[schema.HIDDEN_LABEL].tolist()):
      key = image_id or hashlib.sha1(encoded).digest()
      if label not in missing or key in seen:
        continue
      seen.add(key)
      rows[label].append({"image": thumbnail(encoded), "confidence": conf,
                          "hidden_label": hidden - label_offset if hidden >= 0 else -1})
      if len(rows[label]) >= per_class:
        missing.discard(label)
    read += len(batch[schema.PSEUDO_LABEL])
    if not missing or read >= max_records:
      break
  return rows


def _batches(files: list[str], batch_size: int = 256):
  """Parsed batches, file by file (a batch never reaches into the next file, so
  stopping early never opens it)."""
  for path in files:
    ds = tf.data.TFRecordDataset(path).batch(batch_size).map(
        lambda s: tf.io.parse_example(s, _SPEC))
    yield from ds.as_numpy_iterator()


def mosaic(rows: dict[int, list[dict]], per_class: int) -> np.ndarray:
  """[rows * (THUMB + pad), per_class * (THUMB + pad), 3] uint8, one row per class;
  a 2-pixel frame green / red where the hidden true label agrees / disagrees."""
  cell = THUMB + _PAD
  canvas = np.full([len(rows) * cell, per_class * cell, 3], 255, np.uint8)
  for r, (label, samples) in enumerate(rows.items()):
    for k, sample in enumerate(samples[:per_class]):
      y, x = r * cell + _PAD // 2, k * cell + _PAD // 2
      if sample["hidden_label"] >= 0:
        color = (40, 160, 40) if sample["hidden_label"] == label else (210, 30, 30)
        canvas[y - 2:y + THUMB + 2, x - 2:x + THUMB + 2] = color
      image = sample["image"]
      if image is None:                      # Undecodable: a grey tile.
        canvas[y:y + THUMB, x:x + THUMB] = 200
        continue
      h, w = image.shape[:2]
      canvas[y:y + THUMB, x:x + THUMB] = 255
      oy, ox = (THUMB - h) // 2, (THUMB - w) // 2
      canvas[y + oy:y + oy + h, x + ox:x + ox + w] = image
  return canvas


def plot_samples(rows: dict[int, list[dict]], path: str, *, num_classes: int,
                 per_class: int = PER_CLASS, dpi: int = 100) -> None:
  """Writes the grid (one row per shown class) as a PNG to `path` (any tf.io.gfile path)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  canvas = mosaic(rows, per_class)
  cell = THUMB + _PAD
  height, width = canvas.shape[0] / dpi, canvas.shape[1] / dpi
  fig = plt.figure(figsize=(width + 1.2, height + 0.7), dpi=dpi)
  ax = fig.add_axes([1.0 / (width + 1.2), 0.05 / (height + 0.7),
                     width / (width + 1.2), height / (height + 0.7)])
  ax.imshow(canvas, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([r * cell + cell / 2 for r in range(len(rows))])
  ax.set_yticklabels([f"class {c} ({len(s)})" for c, s in rows.items()], fontsize=7)
  for r, samples in enumerate(rows.values()):
    for k, sample in enumerate(samples[:per_class]):
      ax.text(k * cell + cell / 2, r * cell + 1, f"{sample['confidence']:.2f}",
              ha="center", va="top", fontsize=6,
              bbox=dict(facecolor="white", alpha=0.7, pad=0.5, linewidth=0))
  fig.suptitle(f"Selected pseudo-labelled images: up to {per_class} per class, "
               f"{len(rows)} of {num_classes} classes\nconfidence on each; frame: true "
               "label agrees (green) / disagrees (red)", fontsize=7,
               y=1 - 0.05 / (height + 0.7))
  with job_io.atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      fig.savefig(f, format="png", dpi=dpi)
  plt.close(fig)


def write_samples(files: list[str], path: str, num_classes: int, *,
                  per_class: int = PER_CLASS, label_offset: int = 0) -> list[int]:
  """Reads samples of the selected `files` and writes samples.png; returns how many
  images each shown class got (in `shown_classes` order)."""
  rows = read_samples(files, shown_classes(num_classes), per_class=per_class,
                      label_offset=label_offset)
  plot_samples(rows, path, num_classes=num_classes, per_class=per_class)
  return [len(s) for s in rows.values()]
