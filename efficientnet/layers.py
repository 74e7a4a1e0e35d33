"""The two custom layers of the model: input normalisation and stochastic depth.

Both use only `keras.ops` / `keras.random`, so they run on every Keras backend, and both
are registered so that `keras.models.load_model` rebuilds them after `import efficientnet`.
"""

from __future__ import annotations

import keras
from keras import ops

from efficientnet import config


@keras.saving.register_keras_serializable(package="efficientnet")
class InputNormalization(keras.layers.Layer):
  """(pixels - mean) / std per channel, for pixels in [0, 255].

  The statistics are non-trainable weights (not constants) so that the weight import can
  set them to whatever a `keras.applications` model computes, and so that they travel with
  the weights in a `.keras` file. The layer always computes in float32: under a mixed
  policy the stem convolution casts its result down, after the normalisation.

  Args:
    mean: per-channel mean in pixel units (default: ImageNet RGB mean * 255).
    std: per-channel standard deviation in pixel units (default: ImageNet std * 255).
  """

  def __init__(self, mean=config.IMAGENET_MEAN_RGB, std=config.IMAGENET_STDDEV_RGB,
               **kwargs):
    kwargs["dtype"] = "float32"
    super().__init__(**kwargs)
    if len(mean) != len(std):
      raise ValueError(f"mean and std differ in length: {mean} vs {std}")
    self.mean_init = tuple(float(m) for m in mean)
    self.std_init = tuple(float(s) for s in std)
    channels = len(self.mean_init)
    self.mean = self.add_weight(
        name="mean", shape=(channels,), trainable=False,
        initializer=keras.initializers.Constant(self.mean_init))
    self.std = self.add_weight(
        name="std", shape=(channels,), trainable=False,
        initializer=keras.initializers.Constant(self.std_init))

  def call(self, inputs):
    """inputs: [batch, h, w, channels] float pixels -> same shape, float32."""
    return (ops.cast(inputs, "float32") - self.mean) / self.std

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    cfg = super().get_config()
    cfg.update(mean=list(self.mean_init), std=list(self.std_init))
    return cfg


@keras.saving.register_keras_serializable(package="efficientnet")
class StochasticDepth(keras.layers.Layer):
  """Drops a residual branch for a random subset of the batch (Huang et al., 2016).

  In training, each sample's branch is kept with probability `1 - rate` and scaled by
  `1 / (1 - rate)` (so its expectation is unchanged); at inference it is the identity.
  As in the official EfficientNet code the layer sits on the branch, before the add.

  Args:
    rate: probability of dropping the branch of one sample, in [0, 1).
    seed: optional integer seed.
  """

  def __init__(self, rate: float, seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
    self.rate = float(rate)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs, training=None):
    """inputs: [batch, ...] branch activations -> same shape and dtype."""
    if not training or self.rate == 0.0:
      return inputs
    keep = 1.0 - self.rate
    mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
    # floor(keep + U[0, 1)) is 1 with probability `keep`; built in float32 so that a
    # bfloat16 policy cannot round `keep` (0.8 is not exact in bfloat16).
    noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype="float32")
    mask = ops.floor(keep + noise) / keep
    return inputs * ops.cast(mask, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    cfg = super().get_config()
    cfg.update(rate=self.rate, seed=self.seed)
    return cfg
