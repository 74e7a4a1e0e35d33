"""The EfficientNet builder: one function for B0..B8 and L2 (Tan & Le 2019; Xie et al. 2020).

A functional `keras.Model` whose layer names follow `keras.applications` (`stem_conv`,
`block2b_expand_conv`, `top_bn`, `predictions`, ...), so weights can be imported by name and
any layer can be fetched with `model.get_layer`. Only `keras.layers` / `keras.ops` are used,
so the same code runs on the TensorFlow and JAX backends.

Noise (Noisy Student, Sec. 2): `dropout_rate` before the classifier and
`stochastic_depth_rate` on residual blocks; both are inactive when called with
`training=False`.
"""

from __future__ import annotations

import keras

from efficientnet import config
from efficientnet.layers import InputNormalization, StochasticDepth

# Official initialisers: He-normal on fan-out for convolutions (untruncated), and
# uniform(-1/sqrt(fan_out), 1/sqrt(fan_out)) for the classifier.
CONV_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
DENSE_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def _conv(filters, kernel_size, name, strides=1, **kwargs):
  # padding="same" with stride 2 pads (k-1)//2 before and the rest after, exactly what
  # keras.applications' explicit `correct_pad` + "valid" computes, in one op.
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding="same", use_bias=False,
      kernel_initializer=CONV_INITIALIZER, name=name, **kwargs)


def _bn(name, sync):
  return keras.layers.BatchNormalization(
      momentum=config.BN_MOMENTUM, epsilon=config.BN_EPSILON, synchronized=sync, name=name)


def _mbconv(x, block: config.Block, sync_bn: bool):
  """One inverted-residual block: expand 1x1, depthwise kxk, squeeze-excite, project 1x1.

  Args:
    x: [batch, h, w, block.filters_in] features.
    block: the block's rounded shape and stochastic-depth rate.
    sync_bn: use cross-replica batch normalisation.

  Returns:
    [batch, h / strides, w / strides, block.filters_out] features.
  """
  p = block.name + "_"
  inputs = x
  filters = block.expanded_filters
  if block.expand_ratio != 1:
    x = _conv(filters, 1, p + "expand_conv")(x)
    x = _bn(p + "expand_bn", sync_bn)(x)
    x = keras.layers.Activation("swish", name=p + "expand_activation")(x)
  x = keras.layers.DepthwiseConv2D(
      block.kernel_size, strides=block.strides, padding="same", use_bias=False,
      depthwise_initializer=CONV_INITIALIZER, name=p + "dwconv")(x)
  x = _bn(p + "bn", sync_bn)(x)
  x = keras.layers.Activation("swish", name=p + "activation")(x)

  # Squeeze-excite on [batch, channels] with Dense layers: the same weights as
  # keras.applications' 1x1 convolutions on a 1x1 map (the import reshapes them), but
  # a plain MatMul, about 4x cheaper than 1x1 Conv2D on CPU for these tiny tensors.
  se = keras.layers.GlobalAveragePooling2D(name=p + "se_squeeze")(x)
  se = keras.layers.Dense(
      block.se_filters, activation="swish", kernel_initializer=CONV_INITIALIZER,
      name=p + "se_reduce")(se)
  se = keras.layers.Dense(
      filters, activation="sigmoid", kernel_initializer=CONV_INITIALIZER,
      name=p + "se_expand")(se)
  se = keras.layers.Reshape((1, 1, filters), name=p + "se_reshape")(se)
  x = keras.layers.Multiply(name=p + "se_excite")([x, se])

  x = _conv(block.filters_out, 1, p + "project_conv")(x)
  x = _bn(p + "project_bn", sync_bn)(x)
  if block.has_identity_skip:
    if block.drop_rate > 0:
      x = StochasticDepth(block.drop_rate, name=p + "drop")(x)
    x = keras.layers.Add(name=p + "add")([x, inputs])
  return x


def build_model(name: str, num_classes: int = 1000, input_shape=None,
                dropout_rate: float | None = None, stochastic_depth_rate: float = 0.2,
                small_image: bool = False, sync_batch_norm: bool = False,
                width_coefficient: float | None = None,
                depth_coefficient: float | None = None, normalize_inputs: bool = True,
                model_name: str | None = None) -> keras.Model:
  """Builds an EfficientNet classifier.

  Args:
    name: variant, "efficientnet-b0" .. "efficientnet-b8" or "efficientnet-l2"
      (the short forms "b0", "l2" work too).
    num_classes: size of the logits.
    input_shape: (height, width, 3); None means (resolution, resolution, 3) of the
      variant. Spatial dimensions may be None for variable-size inputs.
    dropout_rate: head dropout before the classifier; None means the variant's.
    stochastic_depth_rate: maximum stochastic-depth rate; block i of N drops its residual
      branch with rate `stochastic_depth_rate * i / N`. 0 disables it.
    small_image: the official 32x32 variant (block groups 2 and 3 with stride 1, so
      a 32x32 input ends in a 4x4 feature map).
    sync_batch_norm: cross-replica batch statistics (TensorFlow backend only).
    width_coefficient, depth_coefficient: override the variant's scaling.
    normalize_inputs: if True (the project's convention) the model takes pixels in
      [0, 255] and normalises them with the ImageNet mean / std itself.
    model_name: the Keras model name; defaults to the canonical variant name.

  Returns:
    A `keras.Model` mapping [batch, h, w, 3] float32 pixels to [batch, num_classes]
    float32 logits (float32 even under a mixed-precision policy).
  """
  variant = config.get_variant(name)
  width = variant.width if width_coefficient is None else width_coefficient
  depth = variant.depth if depth_coefficient is None else depth_coefficient
  dropout_rate = variant.dropout if dropout_rate is None else dropout_rate
  if input_shape is None:
    input_shape = (variant.resolution, variant.resolution, 3)
  blocks = config.expand_blocks(width, depth, stochastic_depth_rate, small_image)

  inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="image")
  x = InputNormalization(name="input_normalization")(inputs) if normalize_inputs else inputs
  x = _conv(config.round_filters(config.STEM_FILTERS, width), 3, "stem_conv", strides=2)(x)
  x = _bn("stem_bn", sync_batch_norm)(x)
  x = keras.layers.Activation("swish", name="stem_activation")(x)
  for block in blocks:
    x = _mbconv(x, block, sync_batch_norm)
  x = _conv(config.round_filters(config.HEAD_FILTERS, width), 1, "top_conv")(x)
  x = _bn("top_bn", sync_batch_norm)(x)
  x = keras.layers.Activation("swish", name="top_activation")(x)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
  x = keras.layers.Dropout(dropout_rate, name="top_dropout")(x)
  # float32 classifier: logits (and the loss on them) stay float32 under mixed precision.
  logits = keras.layers.Dense(
      num_classes, kernel_initializer=DENSE_INITIALIZER, name="predictions",
      dtype="float32")(x)
  return keras.Model(inputs, logits, name=model_name or variant.name)
