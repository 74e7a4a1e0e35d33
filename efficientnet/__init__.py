"""EfficientNet B0..B8 and L2 for Noisy Student Training, in Keras 3 (any backend).

  model = efficientnet.build_model("efficientnet-b0", num_classes=10, small_image=True,
                                   input_shape=(32, 32, 3))
  logits = model(pixels_0_255, training=False)   # [batch, 10] float32

Importing this package registers the custom layers, so `keras.models.load_model` reads
`.keras` files of these models. It does not import TensorFlow (`load_tf1_checkpoint`
imports it when called).
"""

from efficientnet.config import (VARIANT_NAMES, VARIANTS, Block, BlockSpec, Variant,
                                 expand_blocks, get_variant, round_filters, round_repeats,
                                 stochastic_depth_schedule)
from efficientnet.layers import InputNormalization, StochasticDepth
from efficientnet.model import build_model
from efficientnet.tf1_checkpoint import load_tf1_checkpoint
from efficientnet.weights import load_keras_applications_weights

__all__ = [
    "VARIANT_NAMES", "VARIANTS", "Block", "BlockSpec", "Variant", "expand_blocks",
    "get_variant", "round_filters", "round_repeats", "stochastic_depth_schedule",
    "InputNormalization", "StochasticDepth", "build_model",
    "load_keras_applications_weights", "load_tf1_checkpoint",
]
