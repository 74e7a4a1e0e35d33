"""RMSprop slot initialisation, learning-rate schedule values and EMA warmup, exactly."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.training import optimization

# ------------------------------------------------------------------------------ RMSprop


def _tf1_rmsprop(var, grads, lr, rho=0.9, momentum=0.9, eps=1e-3):
  """TF1 ApplyRMSProp with ms initialised to 1, in float64."""
  ms, mom = np.ones_like(var), np.zeros_like(var)
  for g in grads:
    ms = rho * ms + (1 - rho) * g * g
    mom = momentum * mom + lr * g / np.sqrt(ms + eps)
    var = var - mom
  return var, ms, mom


def test_rmsprop_mean_square_slots_start_at_one():
  v = keras.Variable(np.zeros([3], "float32"))
  opt = optimization.build_optimizer("rmsprop", 0.1)
  opt.build([v])
  np.testing.assert_array_equal(opt._velocities[0].numpy(), np.ones(3))
  np.testing.assert_array_equal(opt._momentums[0].numpy(), np.zeros(3))
  # Keras' own RMSprop starts at 0: what this class exists to change.
  ref = keras.optimizers.RMSprop(0.1, momentum=0.9)
  ref.build([v])
  np.testing.assert_array_equal(ref._velocities[0].numpy(), np.zeros(3))


def test_rmsprop_updates_match_tf1_formula():
  init = np.array([1.0, -2.0, 0.5], "float32")
  grads = [np.array([0.3, -1.0, 2.0], "float32"), np.array([-0.1, 0.5, 1.0], "float32"),
           np.array([0.2, 0.2, -3.0], "float32")]
  v = keras.Variable(init)
  opt = optimization.build_optimizer("rmsprop", 0.05)
  for g in grads:
    opt.apply([tf.constant(g)], [v])
  want, ms, mom = _tf1_rmsprop(init.astype("float64"), [g.astype("float64") for g in grads],
                               0.05)
  np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(opt._velocities[0].numpy(), ms, rtol=1e-6)
  np.testing.assert_allclose(opt._momentums[0].numpy(), mom, rtol=1e-5)
  # First step exactly: 0.05 * 0.3 / sqrt(0.9 + 0.1 * 0.09 + 1e-3).
  v1 = keras.Variable(init)
  optimization.build_optimizer("rmsprop", 0.05).apply([tf.constant(grads[0])], [v1])
  assert v1.numpy()[0] == pytest.approx(1.0 - 0.05 * 0.3 / math.sqrt(0.9 + 0.009 + 1e-3),
                                        rel=1e-6)


def test_loss_scale_wraps_the_optimizer():
  opt = optimization.build_optimizer("rmsprop", 0.1, loss_scale=True)
  assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
  assert isinstance(opt.inner_optimizer, optimization.TF1RMSprop)


# ------------------------------------------------------------------------- LR schedule

IMAGENET = optimization.ScheduleConfig(
    base_lr=0.016, labeled_batch_size=2048, steps_per_epoch=1281167 / 2048,
    warmup_epochs=5, decay_epochs=2.4, decay_factor=0.97)


@pytest.mark.parametrize("step, want", [
    (0, 0.0),
    (1000, 0.128 * 1000 / 3127),             # warmup: int(5 * 625.57) = 3127 steps
    (3126, 0.128 * 3126 / 3127),
    (3127, 0.128 * 0.97 ** 2),               # decay counted from step 0: floor(5/2.4) = 2
    (10000, 0.128 * 0.97 ** 6),              # 10000 / (2.4 * 625.57) = 6.66
    (109474, 0.128 * 0.97 ** 72),            # 350 epochs: floor(174.99 / 2.4) = 72
])
def test_imagenet_schedule_values(step, want):
  assert IMAGENET.scaled_lr == pytest.approx(0.128)
  assert IMAGENET.warmup_steps == 3127
  got = float(optimization.learning_rate_at(step, IMAGENET))
  assert got == pytest.approx(want, rel=1e-5, abs=1e-9)


def test_final_base_lr_solves_the_decay_period():
  # Official SVHN demo: 109474 steps of 128 over 69257 labeled images, 2e-4 at the end.
  total_epochs = 109474 * 128 / 69257
  decay = optimization.decay_epochs_for_final_lr(
      base_lr=0.016, final_base_lr=2e-4, total_epochs=total_epochs, warmup_epochs=5)
  num_decays = math.log(2e-4 / 0.016) / math.log(0.97)
  assert decay == pytest.approx((total_epochs - 5) / num_decays)
  assert decay == pytest.approx(1.3717, abs=1e-3)
  config = optimization.ScheduleConfig(base_lr=0.016, labeled_batch_size=128,
                                       steps_per_epoch=69257 / 128, decay_epochs=decay)
  end = float(optimization.learning_rate_at(109474 - 1, config))
  assert end == pytest.approx(0.016 * 128 / 256 * 0.97 ** math.floor(total_epochs / decay),
                              rel=1e-5)
  with pytest.raises(ValueError, match="final_base_lr"):
    optimization.decay_epochs_for_final_lr(base_lr=0.016, final_base_lr=0.1,
                                           total_epochs=10, warmup_epochs=5)


def test_cosine_and_constant_schedules():
  cosine = optimization.ScheduleConfig(base_lr=0.256, labeled_batch_size=256,
                                       steps_per_epoch=10, warmup_epochs=0, kind="cosine",
                                       total_steps=100)
  assert float(optimization.learning_rate_at(50, cosine)) == pytest.approx(0.128)
  assert float(optimization.learning_rate_at(100, cosine)) == pytest.approx(0.0, abs=1e-7)
  constant = optimization.ScheduleConfig(base_lr=0.016, labeled_batch_size=512,
                                         steps_per_epoch=10, warmup_epochs=1,
                                         kind="constant")
  assert float(optimization.learning_rate_at(5, constant)) == pytest.approx(0.016)
  assert float(optimization.learning_rate_at(500, constant)) == pytest.approx(0.032)


# --------------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("t, want", [(0, 0.1), (1, 2 / 11), (90, 91 / 100),
                                     (10**6, 0.9999)])
def test_ema_decay_warmup(t, want):
  assert float(optimization.ema_decay_at(t, 0.9999)) == pytest.approx(want, rel=1e-6)


def _tiny_model():
  inputs = keras.Input((4,))
  x = keras.layers.Dense(3, name="dense")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.Dropout(0.5, name="drop")(x)
  return keras.Model(inputs, x)


def test_ema_covers_all_float_variables_including_bn_statistics():
  model, ema_model = _tiny_model(), _tiny_model()
  ema = optimization.ExponentialMovingAverage(model, ema_model, 0.9999)
  # Starts as a copy of the model.
  for a, b in zip(model.get_weights(), ema_model.get_weights()):
    np.testing.assert_array_equal(a, b)
  before = {v.path: v.numpy().copy() for v in ema_model.variables}
  new = {}
  for v in model.variables:
    if "float" in str(v.dtype):
      new[v.path] = v.numpy() + 1.0
      v.assign(new[v.path])
  decay = float(ema.update(tf.constant(1, tf.int64)))
  assert decay == pytest.approx(2 / 11)
  paths = []
  for v, s in zip(model.variables, ema_model.variables):
    if "float" not in str(v.dtype):
      # The dropout seed state is integer: not averaged.
      np.testing.assert_array_equal(s.numpy(), before[s.path])
      continue
    paths.append(v.path)
    want = before[s.path] - (1 - 2 / 11) * (before[s.path] - new[v.path])
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-6)
  assert "bn/moving_mean" in paths and "bn/moving_variance" in paths


def test_ema_rejects_different_architectures():
  other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="same builder"):
    optimization.ExponentialMovingAverage(_tiny_model(), other)
