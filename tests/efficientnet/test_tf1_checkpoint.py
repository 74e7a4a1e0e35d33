"""Import of official TF1 checkpoints, written by the tests from random keras.applications
models (no downloads): outputs, EMA preference, errors, and L2 by shapes."""
import math
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")  # The import reads checkpoints with TensorFlow.

import efficientnet  # noqa: E402
from efficientnet import tf1_checkpoint  # noqa: E402
from keras.src.backend.common import global_state  # noqa: E402
from tests.efficientnet import tf1_fixtures as fx  # noqa: E402

TOLERANCE = 1e-3  # Max |logit difference|; a wrong or missing weight moves logits by O(1).


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
  """A random keras.applications B0 (10 classes) and its official-format checkpoint."""
  theirs = fx.keras_model("efficientnet-b0", classes=10)
  tensors = fx.official_tensors(theirs, "efficientnet-b0")
  prefix = str(tmp_path_factory.mktemp("b0") / "model.ckpt")
  return theirs, tensors, fx.write_checkpoint(prefix, tensors)


def _ours(name, classes=10, **kwargs):
  model = efficientnet.build_model(name, num_classes=classes,
                                   input_shape=(fx.SIZE, fx.SIZE, 3), **kwargs)
  # Not the ImageNet statistics: the import must set them.
  model.get_layer("input_normalization").set_weights([np.zeros(3), np.ones(3)])
  return model


def _assert_same_outputs(ours, theirs):
  x = fx.images()
  a, b = fx.logits(ours, x), fx.logits(theirs, x)
  assert np.abs(b).max() > 0.1  # The comparison is meaningful.
  assert np.abs(a - b).max() < TOLERANCE


def test_checkpoint_has_the_official_names(b0):
  import tensorflow as tf
  _, _, prefix = b0
  names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  for name, shape in [("efficientnet-b0/stem/conv2d/kernel", [3, 3, 3, 32]),
                      ("efficientnet-b0/blocks_0/depthwise_conv2d/depthwise_kernel",
                       [3, 3, 32, 1]),
                      ("efficientnet-b0/blocks_0/conv2d/kernel", [1, 1, 32, 16]),
                      ("efficientnet-b0/blocks_1/conv2d_1/kernel", [1, 1, 96, 24]),
                      ("efficientnet-b0/blocks_1/se/conv2d/kernel", [1, 1, 96, 4]),
                      ("efficientnet-b0/blocks_15/tpu_batch_normalization_2/moving_mean",
                       [320]),
                      ("efficientnet-b0/head/dense/kernel/ExponentialMovingAverage",
                       [1280, 10])]:
    assert names[name] == shape, name


def test_b0_reproduces_keras_applications_and_prefers_ema(b0):
  theirs, _, prefix = b0
  ours = efficientnet.load_tf1_checkpoint(_ours("efficientnet-b0"), prefix)
  # Raw trainable values are off by N(0, 1): matching means every EMA copy was read,
  # and the BN statistics (raw only) were read where no EMA copy exists.
  _assert_same_outputs(ours, theirs)
  norm = ours.get_layer("input_normalization").get_weights()
  np.testing.assert_allclose(norm[0], fx.IMAGENET_MEAN * 255, rtol=1e-6)
  np.testing.assert_allclose(norm[1], fx.IMAGENET_STD * 255, rtol=1e-6)


def test_b3_reproduces_keras_applications(tmp_path):
  theirs = fx.keras_model("efficientnet-b3", classes=1000, seed=3)
  fx.write_checkpoint(str(tmp_path / "model.ckpt"),
                      fx.official_tensors(theirs, "efficientnet-b3", seed=3))
  # A directory without a `checkpoint` state file: its one *.index is used.
  ours = efficientnet.load_tf1_checkpoint(_ours("efficientnet-b3", 1000), str(tmp_path))
  _assert_same_outputs(ours, theirs)


def test_raw_variables_without_ema(b0):
  _, tensors, prefix = b0
  ours = efficientnet.load_tf1_checkpoint(_ours("efficientnet-b0"), prefix, use_ema=False)
  np.testing.assert_array_equal(ours.get_layer("stem_conv").get_weights()[0],
                                tensors["efficientnet-b0/stem/conv2d/kernel"])
  np.testing.assert_array_equal(  # SE: the checkpoint's 1x1 conv kernel, as Dense.
      ours.get_layer("block2a_se_reduce").get_weights()[0],
      tensors["efficientnet-b0/blocks_1/se/conv2d/kernel"][0, 0])


def test_missing_variable_is_named_and_nothing_is_assigned(b0, tmp_path):
  _, tensors, _ = b0
  gone = "efficientnet-b0/blocks_3/se/conv2d_1/bias"
  partial = {k: v for k, v in tensors.items() if not k.startswith(gone)}
  prefix = fx.write_checkpoint(str(tmp_path / "model.ckpt"), partial)
  ours = _ours("efficientnet-b0")
  before = ours.get_layer("stem_conv").get_weights()[0]
  with pytest.raises(ValueError, match=f"1 missing from the checkpoint: {gone} for "
                     "block3a_se_expand/bias"):
    efficientnet.load_tf1_checkpoint(ours, prefix)
  np.testing.assert_array_equal(ours.get_layer("stem_conv").get_weights()[0], before)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_another_variant_is_a_clear_error(tmp_path):
  b1 = fx.keras_model("efficientnet-b1", classes=10)
  prefix = fx.write_checkpoint(str(tmp_path / "model.ckpt"),
                               fx.official_tensors(b1, "efficientnet-b1"))
  with pytest.raises(ValueError, match=r"(?s)'efficientnet-b1' \(23 blocks\) does not fit "
                     r"model 'efficientnet-b0' \(16 blocks\).*unused: "
                     r"efficientnet-b1/blocks_16/"):
    efficientnet.load_tf1_checkpoint(_ours("efficientnet-b0"), prefix)


def test_head_of_another_class_count(b0):
  theirs, _, prefix = b0
  ours = _ours("efficientnet-b0", classes=7)
  with pytest.raises(ValueError, match=r"head/dense/kernel/ExponentialMovingAverage "
                     r"\[1280, 10\] for predictions/kernel \[1280, 7\]"):
    efficientnet.load_tf1_checkpoint(ours, prefix)
  head = ours.get_layer("predictions").get_weights()[0]
  efficientnet.load_tf1_checkpoint(ours, prefix, include_head=False)
  np.testing.assert_array_equal(ours.get_layer("predictions").get_weights()[0], head)
  np.testing.assert_array_equal(ours.get_layer("top_conv").get_weights()[0],
                                theirs.get_layer("top_conv").get_weights()[0])


def _unmaterialised(build):
  """Builds with deferred (never created) variables: shapes only, no memory."""
  pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
  with keras.StatelessScope(initialize_variables=False):
    model = build()
  global_state.set_global_attribute("uninitialized_variables", pending)
  return model


def test_l2_matches_the_official_names_and_shapes():
  # keras.applications' builder at L2's scaling gives the official architecture's
  # variables; their official names and shapes must cover ours one to one.
  from keras.src.applications.efficientnet import EfficientNet
  # Keras walks its deeper graph (ZeroPadding, Dropout layers) recursively.
  limit = sys.getrecursionlimit()
  sys.setrecursionlimit(max(limit, 10_000))
  try:
    theirs = _unmaterialised(lambda: EfficientNet(
        4.3, 5.3, 800, weights=None, input_shape=(fx.SIZE, fx.SIZE, 3),
        classifier_activation=None))
  finally:
    sys.setrecursionlimit(limit)
  shapes = {name: list(v.shape)
            for name, v in fx.tf1_variables(theirs, "efficientnet-l2").items()}
  shapes.update({n + fx.EMA: s for n, s in shapes.items() if "moving_" not in n})
  ours = _unmaterialised(lambda: efficientnet.build_model(
      "efficientnet-l2", input_shape=(fx.SIZE, fx.SIZE, 3)))
  plan = tf1_checkpoint.match_checkpoint(ours, shapes)
  assert len(plan) == len(ours.weights) - 2  # All but the normalisation's mean / std.
  assert len({name for _, name in plan}) == len(plan)
  assert all(name.endswith(fx.EMA) == ("moving_" not in name) for _, name in plan)
  # test_model.PARAM_COUNTS: L2 without the input normalisation.
  assert sum(math.prod(shapes[name]) for _, name in plan) == 481_399_996
  assert shapes["efficientnet-l2/stem/conv2d/kernel"] == [3, 3, 3, 136]
  assert shapes["efficientnet-l2/blocks_87/se/conv2d/kernel"] == [1, 1, 8256, 344]
  assert shapes["efficientnet-l2/head/dense/kernel"] == [5504, 1000]
  with pytest.raises(ValueError, match=r"\(88 blocks\) does not fit model "
                     r"'efficientnet-b7' \(55 blocks\)"):
    tf1_checkpoint.match_checkpoint(_unmaterialised(lambda: efficientnet.build_model(
        "efficientnet-b7", input_shape=(fx.SIZE, fx.SIZE, 3))), shapes)


def test_batch_normalization_spelling_of_non_tpu_training():
  shapes = {"m/stem/conv2d/kernel": [3, 3, 3, 8]}
  shapes.update({f"m/stem/batch_normalization/{w}": [8]
                 for w in ("gamma", "beta", "moving_mean", "moving_variance")})
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem_conv")(inputs)
  model = keras.Model(inputs, keras.layers.BatchNormalization(name="stem_bn")(x))
  plan = tf1_checkpoint.match_checkpoint(model, shapes)
  assert sorted(name for _, name in plan) == sorted(shapes)
