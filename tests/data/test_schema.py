"""Round trips through the shared TFRecord schema."""
import numpy as np
import pytest
import tensorflow as tf

from data.records import schema


def _roundtrip(features, **kwargs):
  serialized = schema.make_example(features).SerializeToString()
  return schema.parse_example(tf.constant(serialized), **kwargs)


def test_image_fields_and_label_offset():
  features = schema.image_features(b"abc", "id-7", label=5, filename="x.png")
  out = _roundtrip(features, label_offset=1)
  assert out["encoded"].numpy() == b"abc"
  assert out["id"].numpy() == b"id-7"
  assert out["label"].numpy() == 4


def test_unlabeled_stays_unlabeled_under_offset():
  out = _roundtrip(schema.image_features(b"x", "i"), label_offset=1)
  assert out["label"].numpy() == schema.UNLABELED


def test_id_falls_back_to_filename():
  out = _roundtrip(schema.image_features(b"x", "", filename="n01440764_10026.JPEG"))
  assert out["id"].numpy() == b"n01440764_10026.JPEG"


PROBS = np.array([0.1, 0.6, 0.05, 0.25], np.float32)


@pytest.mark.parametrize("storage,top_k,expected", [
    ("float32", 0, PROBS),
    ("float16", 0, PROBS.astype(np.float16).astype(np.float32)),
    ("float32", 2, np.array([0.075, 0.6, 0.075, 0.25], np.float32)),
])
def test_pseudo_label_storages(storage, top_k, expected):
  features = schema.image_features(b"x", "i")
  features.update(schema.pseudo_features(PROBS, storage=storage, top_k=top_k))
  out = _roundtrip(features, with_pseudo=True, num_classes=4)
  np.testing.assert_allclose(out["pseudo_probs"].numpy(), expected, atol=1e-6)
  assert out["pseudo_label"].numpy() == 1
  assert out["pseudo_confidence"].numpy() == pytest.approx(0.6)


def test_pseudo_label_wrong_class_count_is_an_error():
  features = schema.image_features(b"x", "i")
  features.update(schema.pseudo_features(PROBS))
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
    _roundtrip(features, with_pseudo=True, num_classes=10)
