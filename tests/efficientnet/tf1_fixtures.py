"""TF1-format EfficientNet checkpoints written by the tests from keras.applications models.

Names follow the official checkpoints (github.com/tensorflow/tpu
models/official/efficientnet): `<scope>/stem/conv2d/kernel`, `<scope>/blocks_<i>/...`,
`<scope>/head/dense/bias`, each with an optional `/ExponentialMovingAverage` copy.
`tf.raw_ops.SaveV2` writes exactly the given names, eagerly, without a TF1 graph.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from tests.efficientnet import keras_fixtures

from tests.efficientnet.keras_fixtures import IMAGENET_MEAN, IMAGENET_STD, SIZE  # noqa: F401

EMA = "/ExponentialMovingAverage"
BN = "tpu_batch_normalization"
# keras.applications layer suffix -> scope inside blocks_<i>, for blocks with and
# without the expansion convolution (batch norms numbered in order of use).
WITH_EXPANSION = {
    "expand_conv": "conv2d", "expand_bn": BN, "dwconv": "depthwise_conv2d",
    "bn": BN + "_1", "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1",
    "project_conv": "conv2d_1", "project_bn": BN + "_2"}
WITHOUT_EXPANSION = {
    "dwconv": "depthwise_conv2d", "bn": BN, "se_reduce": "se/conv2d",
    "se_expand": "se/conv2d_1", "project_conv": "conv2d", "project_bn": BN + "_1"}
OUTSIDE_BLOCKS = {"stem_conv": "stem/conv2d", "stem_bn": "stem/" + BN,
                  "top_conv": "head/conv2d", "top_bn": "head/" + BN,
                  "predictions": "head/dense"}


def keras_model(name: str, classes: int = 1000, seed: int = 0) -> keras.Model:
  """A randomised keras.applications model (logits out) normalising inputs as the
  official code does: (pixels / 255 - mean) / std with the ImageNet mean and std."""
  return keras_fixtures.random_keras_model(name, classes, seed, mean_noise=0.0)


def tf1_variables(model: keras.Model, scope: str) -> dict:
  """{official checkpoint name: keras variable} for a keras.applications EfficientNet."""
  blocks = list(dict.fromkeys(
      m.group(1) for m in (re.match(r"(block\d+[a-z]+)_", l.name) for l in model.layers) if m))
  names = {layer.name for layer in model.layers}
  out = {}
  for layer in model.layers:
    if layer.name in OUTSIDE_BLOCKS:
      where = OUTSIDE_BLOCKS[layer.name]
    elif (m := re.match(r"(block\d+[a-z]+)_(.+)$", layer.name)) and layer.weights:
      table = WITH_EXPANSION if f"{m.group(1)}_expand_conv" in names else WITHOUT_EXPANSION
      where = f"blocks_{blocks.index(m.group(1))}/{table[m.group(2)]}"
    else:
      continue  # Rescaling / Normalization: preprocessing outside the official graph.
    for v in layer.weights:
      leaf = "depthwise_kernel" if isinstance(
          layer, keras.layers.DepthwiseConv2D) and v.name == "kernel" else v.name
      out[f"{scope}/{where}/{leaf}"] = v
  return out


def official_tensors(model: keras.Model, scope: str, seed: int = 0) -> dict:
  """What a released checkpoint holds, with the model's values as the ones to import.

  Trainable variables: raw = model value + noise, EMA copy = model value, and optimizer
  slots on every third variable. BN moving statistics: the model value, raw only (no
  EMA copy), so only an import that prefers EMA copies and falls back to raw variables
  reproduces the model. Plus a `global_step`.
  """
  rng = np.random.RandomState(seed)
  tensors = {"global_step": np.int64(1000)}
  for i, (name, v) in enumerate(tf1_variables(model, scope).items()):
    value = keras.ops.convert_to_numpy(v)
    if "moving_" in name:
      tensors[name] = value
      continue
    tensors[name] = value + rng.normal(0, 1, value.shape).astype(value.dtype)
    tensors[name + EMA] = value
    if i % 3 == 0:
      tensors[name + "/RMSProp"] = np.ones_like(value)
      tensors[name + "/RMSProp_1"] = np.zeros_like(value)
  return tensors


def write_checkpoint(prefix: str, tensors: dict) -> str:
  """Writes `tensors` under exactly their names (TF1 name-based format); returns prefix."""
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tensors[n] for n in names])
  return prefix


def images(n: int = 2, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def logits(model, x) -> np.ndarray:
  return keras.ops.convert_to_numpy(model(x, training=False))
