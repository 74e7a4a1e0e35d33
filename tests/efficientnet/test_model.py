"""The builder: parameter counts, shapes, noise, gradients, saving, mixed precision.

Models are tiny (B0 at width 0.25 / depth 0.5, 32x32, batch 2) except the parameter
counts, which build the full-size variants inside a `keras.StatelessScope` so that no
weight is ever materialised (L2 has 481M parameters).
"""
import math

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

import efficientnet

TINY = dict(width_coefficient=0.25, depth_coefficient=0.5, input_shape=(32, 32, 3),
            small_image=True, num_classes=5)

# (model.count_params() with normalize_inputs=False, trainable parameters), 1000 classes.
# The totals include the batch-norm moving statistics; the published figures (B0 5.3M,
# B1 7.8M, B2 9.2M, B3 12M, B4 19M, B5 30M, B6 43M, B7 66M, L2 480M) match either.
PARAM_COUNTS = {
    "efficientnet-b0": (5_330_564, 5_288_548),
    "efficientnet-b1": (7_856_232, 7_794_184),
    "efficientnet-b2": (9_177_562, 9_109_994),
    "efficientnet-b3": (12_320_528, 12_233_232),
    "efficientnet-b4": (19_466_816, 19_341_616),
    "efficientnet-b5": (30_562_520, 30_389_784),
    "efficientnet-b6": (43_265_136, 43_040_704),
    "efficientnet-b7": (66_658_680, 66_347_960),
    "efficientnet-b8": (87_793_174, 87_413_142),
    "efficientnet-l2": (481_399_996, 480_309_308),
}
PUBLISHED_MILLIONS = {"efficientnet-b0": 5.3, "efficientnet-b1": 7.8, "efficientnet-b2": 9.2,
                      "efficientnet-b3": 12, "efficientnet-b4": 19, "efficientnet-b5": 30,
                      "efficientnet-b6": 43, "efficientnet-b7": 66, "efficientnet-l2": 480}
KERAS_APPLICATIONS = {"efficientnet-b0": "EfficientNetB0", "efficientnet-b7": "EfficientNetB7"}


def _unmaterialised(build):
  """Builds a model with deferred (never created) variables; for counting only.

  Keras registers deferred variables globally and would materialise them when the
  next stateless scope closes; restoring the registry forgets them.
  """
  pending = list(global_state.get_global_attribute("uninitialized_variables") or [])
  with keras.StatelessScope(initialize_variables=False):
    model = build()
  global_state.set_global_attribute("uninitialized_variables", pending)
  return model


def _counts(model):
  trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
  return model.count_params(), trainable


@pytest.mark.parametrize("name", efficientnet.VARIANT_NAMES)
def test_param_counts(name):
  # Parameters do not depend on resolution: 32x32 keeps graph construction cheap.
  model = _unmaterialised(lambda: efficientnet.build_model(
      name, input_shape=(32, 32, 3), normalize_inputs=False))
  total, trainable = _counts(model)
  assert (total, trainable) == PARAM_COUNTS[name]
  if name in PUBLISHED_MILLIONS:
    published = PUBLISHED_MILLIONS[name]
    # Published figures are rounded to 2 significant digits.
    assert abs(trainable / 1e6 - published) <= 0.05 * published


@pytest.mark.parametrize("name", sorted(KERAS_APPLICATIONS))
def test_param_counts_match_keras_applications(name):
  theirs = _unmaterialised(lambda: getattr(keras.applications, KERAS_APPLICATIONS[name])(
      weights=None, input_shape=(32, 32, 3)))
  ours = _unmaterialised(lambda: efficientnet.build_model(name, input_shape=(32, 32, 3)))
  # Same network; their Normalization has mean, variance and a count (7 values), our
  # InputNormalization a mean and a std (6).
  assert _counts(ours)[1] == _counts(theirs)[1]
  assert _counts(ours)[0] - 6 == _counts(theirs)[0] - 7


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b7", "efficientnet-l2"])
def test_model_applies_schedule_on_residual_blocks_only(name):
  model = _unmaterialised(lambda: efficientnet.build_model(name, input_shape=(32, 32, 3)))
  drops = {l.name[:-len("_drop")]: l.rate for l in model.layers
           if isinstance(l, efficientnet.StochasticDepth)}
  expected = {block: rate for block, rate, skip in
              efficientnet.stochastic_depth_schedule(name, 0.2) if skip and rate > 0}
  assert drops == pytest.approx(expected)
  assert max(drops.values()) < 0.2


def test_default_input_shape_and_names():
  model = _unmaterialised(lambda: efficientnet.build_model("efficientnet-b0"))
  assert model.input_shape == (None, 224, 224, 3)
  assert model.output_shape == (None, 1000)
  assert model.name == "efficientnet-b0"
  for layer in ["input_normalization", "stem_conv", "stem_bn", "block1a_dwconv",
                "block2b_expand_conv", "block2b_se_reduce", "block2b_drop", "top_conv",
                "top_bn", "top_dropout", "predictions"]:
    model.get_layer(layer)
  assert model.get_layer("top_dropout").rate == 0.2
  bn = model.get_layer("block3a_bn")
  assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)


@pytest.mark.parametrize("small_image,size", [(True, 4), (False, 1)])
def test_feature_map_size(small_image, size):
  model = efficientnet.build_model(
      "efficientnet-b0", input_shape=(32, 32, 3), small_image=small_image,
      width_coefficient=0.25, depth_coefficient=0.5)
  assert model.get_layer("top_activation").output.shape[1:3] == (size, size)


def _images(n=2, size=32, seed=0):
  return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_noise_only_in_training():
  model = efficientnet.build_model(
      "efficientnet-b0", dropout_rate=0.5, stochastic_depth_rate=0.5, **TINY)
  x = _images(4)
  np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)),
                                keras.ops.convert_to_numpy(model(x, training=False)))
  a = keras.ops.convert_to_numpy(model(x, training=True))
  b = keras.ops.convert_to_numpy(model(x, training=True))
  assert not np.allclose(a, b)


def test_stochastic_depth_is_per_sample_and_rescaled():
  layer = efficientnet.StochasticDepth(0.25, seed=1)
  x = np.ones((4000, 2, 2, 3), "float32")
  y = keras.ops.convert_to_numpy(layer(x, training=True))
  per_sample = y.reshape(len(y), -1)
  # Each sample is either dropped entirely or kept and scaled by 1 / keep.
  assert np.all(per_sample == per_sample[:, :1])
  assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
  assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
  np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_input_normalisation_contract():
  model = efficientnet.build_model("efficientnet-b0", **TINY)
  norm = model.get_layer("input_normalization")
  pixels = np.array([[[[123.675, 116.28, 103.53]]]], "float32")  # The ImageNet mean.
  np.testing.assert_allclose(keras.ops.convert_to_numpy(norm(pixels)), 0.0, atol=1e-5)
  white = keras.ops.convert_to_numpy(norm(np.full((1, 1, 1, 3), 255.0, "float32")))
  np.testing.assert_allclose(white.ravel(), [(1 - .485) / .229, (1 - .456) / .224,
                                             (1 - .406) / .225], rtol=1e-5)
  raw = efficientnet.build_model("efficientnet-b0", normalize_inputs=False, **TINY)
  assert "input_normalization" not in [l.name for l in raw.layers]


def _gradients(model, x, y):
  """Gradients of the mean cross entropy wrt the trainable variables, any backend."""
  def loss_of(logits):
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True))
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    with tf.GradientTape() as tape:
      loss = loss_of(model(x, training=True))
    return tape.gradient(loss, model.trainable_variables)
  if keras.backend.backend() == "jax":
    import jax
    def loss_fn(trainable):
      logits, _ = model.stateless_call(
          trainable, [v.value for v in model.non_trainable_variables], x, training=True)
      return loss_of(logits)
    return jax.grad(loss_fn)([v.value for v in model.trainable_variables])
  pytest.skip(f"no gradient helper for backend {keras.backend.backend()}")


def test_every_trainable_variable_gets_a_gradient():
  model = efficientnet.build_model(
      "efficientnet-b0", dropout_rate=0.0, stochastic_depth_rate=0.0, **TINY)
  grads = _gradients(model, _images(2), np.array([1, 3]))
  assert len(grads) == len(model.trainable_variables) > 0
  for variable, grad in zip(model.trainable_variables, grads):
    assert grad is not None, variable.path
    assert np.any(keras.ops.convert_to_numpy(grad) != 0), variable.path


def test_save_and_reload_keras_file(tmp_path):
  model = efficientnet.build_model("efficientnet-b0", **TINY)
  x = _images(2)
  model(x, training=True)  # Move the BN statistics away from their initial values.
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)),
                                keras.ops.convert_to_numpy(model(x, training=False)))
  rates = lambda m: [(l.name, l.rate) for l in m.layers
                     if isinstance(l, efficientnet.StochasticDepth)]
  assert rates(loaded) == rates(model) and rates(model)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_logits_stay_float32_under_mixed_precision(policy):
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(policy)
  try:
    model = efficientnet.build_model("efficientnet-b0", **TINY)
  finally:
    keras.config.set_dtype_policy(previous)
  assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
  for training in (False, True):
    logits = model(_images(2), training=training)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


def test_sync_batch_norm_flag():
  if keras.backend.backend() != "tensorflow":
    pytest.skip("synchronized batch norm is TensorFlow-only")
  model = efficientnet.build_model("efficientnet-b0", sync_batch_norm=True, **TINY)
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.synchronized for l in bns)
