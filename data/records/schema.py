"""The TFRecord schema shared by every stage: production, training, labelling, selection.

Images are stored as `tf.train.Example`s with the standard ImageNet keys used by the TPU
conversion script (`image/encoded`, `image/class/label`, ...) plus a stable per-image id
and, after teacher inference (paper Sec. 2, Algorithm 1 step 2), the pseudo-label keys.

Labels:
  * `image/class/label` is 0-based in files this project writes. ImageNet TFRecords made
    by the TPU conversion script are 1-based: read them with `label_offset=1`.
  * `UNLABELED` (-1) marks an image without a label. The semi-supervised split keeps the
    true label of unlabeled images under `image/class/hidden_label` for analysis only;
    nothing in training reads it.

Pseudo labels (written by `noisy_student.label`):
  * `pseudo/probabilities`: the full soft-label vector (float32, temperature applied), or
  * `pseudo/probabilities_f16`: the same vector as raw little-endian float16 bytes, or
  * `pseudo/top_k/indices` + `pseudo/top_k/values`: only the k largest entries
    (`densify_pseudo_label` spreads the remaining mass uniformly over the other classes);
  * `pseudo/label` (argmax, int64) and `pseudo/confidence` (max probability, float).
"""

from __future__ import annotations

import tensorflow as tf

ENCODED = "image/encoded"
FORMAT = "image/format"
LABEL = "image/class/label"
HIDDEN_LABEL = "image/class/hidden_label"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
ID = "image/id"

PSEUDO_PROBS = "pseudo/probabilities"
PSEUDO_PROBS_F16 = "pseudo/probabilities_f16"
PSEUDO_TOPK_INDICES = "pseudo/top_k/indices"
PSEUDO_TOPK_VALUES = "pseudo/top_k/values"
PSEUDO_LABEL = "pseudo/label"
PSEUDO_CONFIDENCE = "pseudo/confidence"

UNLABELED = -1


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def image_features(encoded: bytes, image_id: str | bytes, label: int = UNLABELED, *,
                   image_format: str = "png", height: int = 0, width: int = 0,
                   filename: str | bytes = b"", hidden_label: int | None = None) -> dict:
  """The image part of an example, as a feature dict (merge pseudo features into it)."""
  def as_bytes(s):
    return s.encode() if isinstance(s, str) else s
  features = {
      ENCODED: _bytes([encoded]),
      FORMAT: _bytes([as_bytes(image_format)]),
      LABEL: _ints([int(label)]),
      HEIGHT: _ints([int(height)]),
      WIDTH: _ints([int(width)]),
      FILENAME: _bytes([as_bytes(filename)]),
      ID: _bytes([as_bytes(image_id)]),
  }
  if hidden_label is not None:
    features[HIDDEN_LABEL] = _ints([int(hidden_label)])
  return features


def pseudo_features(probabilities, *, storage: str = "float32", top_k: int = 0) -> dict:
  """Pseudo-label features for one image.

  Args:
    probabilities: [num_classes] float soft labels (temperature already applied).
    storage: "float32" (full vector) or "float16" (raw bytes, half the size).
    top_k: if > 0, store only the k most probable classes (indices and values).
  """
  import numpy as np  # Local: this module is imported inside tf.data graphs too.
  probs = np.asarray(probabilities, dtype=np.float32)
  features = {
      PSEUDO_LABEL: _ints([int(probs.argmax())]),
      PSEUDO_CONFIDENCE: _floats([float(probs.max())]),
  }
  if top_k:
    order = np.argsort(-probs, kind="stable")[:top_k]
    features[PSEUDO_TOPK_INDICES] = _ints(order.tolist())
    features[PSEUDO_TOPK_VALUES] = _floats(probs[order].tolist())
  elif storage == "float16":
    features[PSEUDO_PROBS_F16] = _bytes([probs.astype("<f2").tobytes()])
  elif storage == "float32":
    features[PSEUDO_PROBS] = _floats(probs.tolist())
  else:
    raise ValueError(f"storage must be float32 or float16, got {storage!r}")
  return features


def make_example(features: dict) -> tf.train.Example:
  return tf.train.Example(features=tf.train.Features(feature=features))


IMAGE_SPEC = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
}

PSEUDO_SPEC = {
    PSEUDO_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    PSEUDO_CONFIDENCE: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    PSEUDO_PROBS: tf.io.VarLenFeature(tf.float32),
    PSEUDO_PROBS_F16: tf.io.FixedLenFeature([], tf.string, default_value=""),
    PSEUDO_TOPK_INDICES: tf.io.VarLenFeature(tf.int64),
    PSEUDO_TOPK_VALUES: tf.io.VarLenFeature(tf.float32),
}


def parse_example(serialized: tf.Tensor, *, label_offset: int = 0,
                  with_pseudo: bool = False, num_classes: int | None = None,
                  with_hidden_label: bool = False) -> dict:
  """Parses one serialized example.

  Returns a dict with "encoded" (string), "label" (int32, 0-based, UNLABELED if absent),
  "id" (string; the filename when the record has no id) and, with `with_pseudo=True`,
  "pseudo_probs" ([num_classes] float32), "pseudo_label" (int32), "pseudo_confidence";
  with `with_hidden_label=True`, "hidden_label" (int32, 0-based, UNLABELED if absent;
  for analysis of pseudo labels only, never for training).
  """
  spec = dict(IMAGE_SPEC)
  if with_hidden_label:
    spec[HIDDEN_LABEL] = tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED)
  if with_pseudo:
    if num_classes is None:
      raise ValueError("with_pseudo=True needs num_classes")
    spec.update(PSEUDO_SPEC)
  parsed = tf.io.parse_single_example(serialized, spec)
  label = tf.cast(parsed[LABEL], tf.int32)
  label = tf.where(label == UNLABELED, label, label - label_offset)
  image_id = tf.where(tf.strings.length(parsed[ID]) > 0, parsed[ID], parsed[FILENAME])
  out = {"encoded": parsed[ENCODED], "label": label, "id": image_id}
  if with_hidden_label:
    # The split tool copies the label as it was read, so the offset applies here too.
    hidden = tf.cast(parsed[HIDDEN_LABEL], tf.int32)
    out["hidden_label"] = tf.where(hidden == UNLABELED, hidden, hidden - label_offset)
  if with_pseudo:
    out["pseudo_probs"] = densify_pseudo_label(parsed, num_classes)
    out["pseudo_label"] = tf.cast(parsed[PSEUDO_LABEL], tf.int32)
    out["pseudo_confidence"] = parsed[PSEUDO_CONFIDENCE]
  return out


def densify_pseudo_label(parsed: dict, num_classes: int) -> tf.Tensor:
  """The [num_classes] float32 soft label from whichever storage the record uses.

  Top-k records spread the probability mass the teacher gave to the other classes
  uniformly over them, so the vector still sums to 1.
  """
  full = tf.sparse.to_dense(parsed[PSEUDO_PROBS])
  half = tf.cast(tf.io.decode_raw(parsed[PSEUDO_PROBS_F16], tf.float16), tf.float32)
  indices = tf.sparse.to_dense(parsed[PSEUDO_TOPK_INDICES])
  values = tf.sparse.to_dense(parsed[PSEUDO_TOPK_VALUES])
  k = tf.shape(indices)[0]
  rest = tf.maximum(1.0 - tf.reduce_sum(values), 0.0) / tf.cast(
      tf.maximum(num_classes - k, 1), tf.float32)
  from_top_k = tf.tensor_scatter_nd_update(
      tf.fill([num_classes], rest), indices[:, None], values)
  hard = tf.one_hot(parsed[PSEUDO_LABEL], num_classes)
  probs = tf.case([
      (tf.size(full) > 0, lambda: full),
      (tf.size(half) > 0, lambda: half),
      (k > 0, lambda: from_top_k),
  ], default=lambda: hard)
  tf.debugging.assert_equal(tf.size(probs), num_classes,
                            message="pseudo-label vector length != num_classes")
  return tf.ensure_shape(tf.reshape(probs, [num_classes]), [num_classes])
