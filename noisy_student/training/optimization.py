"""Optimisation as in the official Noisy Student / EfficientNet code (paper Sec. 3).

* `TF1RMSprop`: RMSProp(rho 0.9, momentum 0.9, epsilon 1e-3) whose mean-square slots
  start at 1, like TF1's `tf.train.RMSPropOptimizer`. Keras 3 starts them at 0, which
  makes the first update ~1/sqrt(0.1 + eps) = 3x larger per step and, with momentum,
  up to ~30x larger over the first steps than the official optimiser's.
* `learning_rate_at`: linear warmup, then staircase exponential decay counted from
  step 0 on *labeled* epochs (0.016 per 256 labeled images, 0.97 every 2.4 epochs);
  `decay_epochs_for_final_lr` is the official `final_base_lr` variant.
* `ExponentialMovingAverage`: decay min(0.9999, (1 + t) / (10 + t)) over ALL model
  variables, BN moving statistics included, kept in the variables of a second copy of
  the model so that evaluation and export simply use that copy.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

# ---------------------------------------------------------------------------------------
# Optimizer


class TF1RMSprop(keras.optimizers.RMSprop):
  """Keras RMSprop with the mean-square ("velocity") slots initialised to 1.

  The update is TF1's ApplyRMSProp: ms = rho*ms + (1-rho)*g^2;
  mom = momentum*mom + lr*g/sqrt(ms + eps); var -= mom. Keras implements the same
  formula; only the slot initialisation differs.
  """

  def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
    if name == "velocity":
      initializer = "ones"
    return super().add_optimizer_variables(trainable_variables, name,
                                           initializer=initializer)


def build_optimizer(name: str, learning_rate, *, rho: float = 0.9, momentum: float = 0.9,
                    epsilon: float = 1e-3, loss_scale: bool = False):
  """The training optimizer.

  Args:
    name: "rmsprop" (official), "momentum" (SGD with momentum) or "sgd".
    learning_rate: a float or a zero-argument callable returning the current rate.
    loss_scale: wrap in a dynamic `LossScaleOptimizer` (float16 training).
  """
  if name == "rmsprop":
    opt = TF1RMSprop(learning_rate, rho=rho, momentum=momentum, epsilon=epsilon)
  elif name == "momentum":
    opt = keras.optimizers.SGD(learning_rate, momentum=momentum)
  elif name == "sgd":
    opt = keras.optimizers.SGD(learning_rate)
  else:
    raise ValueError(f"unknown optimizer {name!r}")
  if loss_scale:
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt


# ---------------------------------------------------------------------------------------
# Learning-rate schedule


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """The learning-rate schedule, in labeled epochs.

  Attributes:
    base_lr: learning rate per 256 labeled images (official 0.016).
    labeled_batch_size: labeled images per step (the unlabeled part does not count).
    steps_per_epoch: num_labeled_examples / labeled_batch_size (a float).
    warmup_epochs: linear warmup from 0.
    decay_epochs: staircase period (2.4 for 350-epoch runs, 4.8 for 700).
    decay_factor: 0.97.
    kind: "exponential" (official), "cosine" or "constant".
    total_steps: needed by "cosine".
  """
  base_lr: float = 0.016
  labeled_batch_size: int = 256
  steps_per_epoch: float = 1.0
  warmup_epochs: float = 5.0
  decay_epochs: float = 2.4
  decay_factor: float = 0.97
  kind: str = "exponential"
  total_steps: int = 0

  @property
  def scaled_lr(self) -> float:
    return self.base_lr * self.labeled_batch_size / 256.0

  @property
  def warmup_steps(self) -> int:
    return int(self.warmup_epochs * self.steps_per_epoch)


def learning_rate_at(step, config: ScheduleConfig) -> tf.Tensor:
  """The learning rate for `step` (0-based count of completed updates), float32.

  Decay is counted from step 0, so at the end of a 5-epoch warmup the rate is already
  0.97^floor(5/2.4) times the peak (the official schedule's jump).
  """
  step = tf.cast(step, tf.float32)
  peak = config.scaled_lr
  if config.kind == "exponential":
    decay_steps = config.steps_per_epoch * config.decay_epochs
    lr = peak * tf.pow(config.decay_factor, tf.floor(step / decay_steps))
  elif config.kind == "cosine":
    total = float(max(config.total_steps, 1))
    lr = 0.5 * peak * (1.0 + tf.cos(np.pi * tf.minimum(step, total) / total))
  elif config.kind == "constant":
    lr = tf.constant(peak, tf.float32)
  else:
    raise ValueError(f"unknown schedule {config.kind!r}")
  if config.warmup_steps > 0:
    warmup = peak * step / float(config.warmup_steps)
    lr = tf.where(step < config.warmup_steps, warmup, lr)
  return lr


def decay_epochs_for_final_lr(*, base_lr: float, final_base_lr: float,
                              total_epochs: float, warmup_epochs: float,
                              decay_factor: float = 0.97) -> float:
  """The staircase period that ends training at `final_base_lr` (official variant).

  The decays left after warmup, log(final/base) / log(factor), are spread evenly over
  the post-warmup epochs.
  """
  if not 0 < final_base_lr < base_lr:
    raise ValueError(f"final_base_lr must be in (0, base_lr={base_lr}), got {final_base_lr}")
  if total_epochs <= warmup_epochs:
    raise ValueError(f"training ({total_epochs:.3g} epochs) must be longer than the "
                     f"warmup ({warmup_epochs} epochs) to use final_base_lr")
  num_decays = math.log(final_base_lr / base_lr) / math.log(decay_factor)
  return (total_epochs - warmup_epochs) / num_decays


# ---------------------------------------------------------------------------------------
# Exponential moving average


def ema_decay_at(num_updates, decay: float) -> tf.Tensor:
  """TF1 ExponentialMovingAverage with num_updates: min(decay, (1 + t) / (10 + t))."""
  t = tf.cast(num_updates, tf.float32)
  return tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))


def _float_variables(model: keras.Model) -> list:
  # Integer state (e.g. dropout seed generators) is not averaged.
  return [v for v in model.variables if "float" in str(v.dtype)]


def moving_statistics(model: keras.Model) -> list:
  """The BN moving means and variances: per replica unless BN is synchronized."""
  return [v for v in _float_variables(model) if v.name in ("moving_mean", "moving_variance")]


def average_across_replicas(variables: list) -> None:
  """In replica context: sets every replica's copy of `variables` to their mean.

  Keras creates BN moving statistics with aggregation "none", so without synchronized BN
  each replica keeps its own; the EMA averages them into its copy, and without an EMA
  this keeps the evaluated and exported model the same on every replica. The statistics
  are not used in training, and their update is linear, so averaging at every step
  equals averaging the replicas' statistics at the end.
  """
  ctx = tf.distribute.get_replica_context()
  if not variables or ctx is None or ctx.num_replicas_in_sync == 1:
    return
  averaged = ctx.all_reduce(tf.distribute.ReduceOp.MEAN,
                            [tf.identity(v.value) for v in variables])
  for v, value in zip(variables, averaged):
    v.assign(value)


class ExponentialMovingAverage:
  """Keeps `ema_model`'s variables an exponential moving average of `model`'s.

  Both models come from the same builder, so their float variables pair up in order.
  `ema_model` starts as a copy of `model` (TF1 initialises the averages to the
  variables' values) and is what evaluation, teacher checkpoints and exports use.

  Under a multi-replica strategy without synchronized BN every replica has its own BN
  moving statistics; the average is taken of their cross-replica mean, so every
  replica's EMA copy is identical.
  """

  def __init__(self, model: keras.Model, ema_model: keras.Model, decay: float = 0.9999,
               average_replica_statistics: bool = True):
    self.decay = float(decay)
    self.average_replica_statistics = average_replica_statistics
    self._vars = _float_variables(model)
    self._shadows = _float_variables(ema_model)
    if len(self._vars) != len(self._shadows):
      raise ValueError(f"model has {len(self._vars)} float variables, the EMA model "
                       f"{len(self._shadows)}: they must come from the same builder")
    for v, s in zip(self._vars, self._shadows):
      if tuple(v.shape) != tuple(s.shape):
        raise ValueError(f"EMA variable {s.path} {s.shape} does not match {v.path} {v.shape}")
    self._trainable = [v.trainable for v in self._vars]
    self.copy_from_model()

  def copy_from_model(self) -> None:
    """Sets the averages to the model's current values (cross-replica context)."""
    for v, s in zip(self._vars, self._shadows):
      s.assign(v.value)

  def update(self, num_updates) -> tf.Tensor:
    """One EMA step; call in replica context right after the optimizer update.

    Args:
      num_updates: updates done so far including this one (TF1 reads the global step
        after the train op increments it).

    Returns:
      The decay used, float32 scalar.
    """
    decay = ema_decay_at(num_updates, self.decay)
    values = [tf.identity(v.value) for v in self._vars]  # This replica's values.
    ctx = tf.distribute.get_replica_context()
    if (self.average_replica_statistics and ctx is not None
        and ctx.num_replicas_in_sync > 1):
      stats = [i for i, t in enumerate(self._trainable) if not t]
      if stats:
        averaged = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [values[i] for i in stats])
        for i, value in zip(stats, averaged):
          values[i] = value

    def apply(distribution, values, decay):
      def assign(shadow, value, decay):
        return shadow.assign_sub((1.0 - decay) * (shadow - value))
      for shadow, value in zip(self._shadows, values):
        distribution.extended.update(shadow.value, assign, args=(value, decay),
                                     group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        apply, tf.distribute.get_strategy(), values, decay)
    return decay


def skip_non_finite_together(grads: list) -> list:
  """In replica context, before a LossScaleOptimizer applies this replica's gradients:
  if any replica's are non-finite, every replica's become NaN.

  Keras decides whether to skip a float16 step from replica 0's gradients (or, where the
  strategy needs no merge call, from each replica's own), assuming they are already
  all-reduced; they are not yet, so an overflow on another replica would be summed into
  the update. With this, every replica sees the overflow, the step is skipped everywhere
  and the loss scale drops.
  """
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return grads
  dense = [g for g in grads if g is not None]
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in dense])
  overflowed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
  everywhere = tf.equal(overflowed, 0.0)
  return [None if g is None else tf.where(everywhere, g, tf.constant(float("nan"), g.dtype))
          for g in grads]
