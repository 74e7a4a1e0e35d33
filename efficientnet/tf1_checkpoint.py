"""Weight import from the official TF1 EfficientNet / Noisy Student checkpoints.

The Noisy Student paper's models (Xie et al., 2020, Table 2: L2 at 88.4% top-1; Table 9:
B0..B7 taught by that L2) were released as TF1 checkpoints
(github.com/google-research/noisystudent, github.com/tensorflow/tpu
models/official/efficientnet), as were the supervised EfficientNets. This module reads
them with `tf.train.load_checkpoint` (local or `gs://`; no TF1 graph is built) into a
model of `efficientnet.build_model`. TensorFlow is imported only when a checkpoint is
read, so the package still runs without it.

Variable names in those checkpoints, under the model's scope (`efficientnet-b0`, ...):

  stem/conv2d/kernel                         [3, 3, 3, stem]
  stem/tpu_batch_normalization/{gamma, beta, moving_mean, moving_variance}
  blocks_<i>/conv2d/kernel                   expansion 1x1 (projection if no expansion)
  blocks_<i>/tpu_batch_normalization         after the expansion ...
  blocks_<i>/depthwise_conv2d/depthwise_kernel  [k, k, channels, 1]
  blocks_<i>/tpu_batch_normalization_1       ... after the depthwise conv ...
  blocks_<i>/se/conv2d/{kernel, bias}        squeeze-excite reduce, [1, 1, in, out]
  blocks_<i>/se/conv2d_1/{kernel, bias}      squeeze-excite expand
  blocks_<i>/conv2d_1/kernel                 projection 1x1
  blocks_<i>/tpu_batch_normalization_2       ... after the projection
  head/conv2d/kernel, head/tpu_batch_normalization/..., head/dense/{kernel, bias}

Batch norms are numbered in order of use within a block, so a block without expansion
(the first group) has `conv2d` as its projection and batch norms `_` and `_1` only.
Blocks are numbered from 0 over the whole network after depth rounding, i.e. in the
order of our `block1a`, `block2a`, `block2b`, ... Models trained off-TPU name their batch
norms `batch_normalization`; both spellings are accepted.

Each variable may have a shadow `<name>/ExponentialMovingAverage` (the weights the
official code evaluates, batch-norm statistics included) and optimizer slots
(`<name>/RMSProp`, ...), which are ignored. The official code normalises images outside
the graph with the ImageNet mean / std on [0, 255]; the import puts exactly that into the
model's `input_normalization`, so the model takes the project's [0, 255] pixels.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from efficientnet import config
from efficientnet.layers import InputNormalization

EMA_SUFFIX = "/ExponentialMovingAverage"
BN_NAMES = ("tpu_batch_normalization", "batch_normalization")
_STEM_KERNEL = "/stem/conv2d/kernel"
_HEAD_DENSE = "head/dense"
_BLOCK_LAYER = re.compile(r"^(block\d+[a-z]+)_(.+)$")
_SHOWN = 5  # Names listed per kind of problem in an error.


def load_tf1_checkpoint(model: keras.Model, path: str, use_ema: bool = True,
                        include_head: bool = True) -> keras.Model:
  """Reads an official TF1 EfficientNet checkpoint into `model`.

  Args:
    model: a model from `efficientnet.build_model` of the checkpoint's variant
      (B0..B8, L2), at any input size.
    path: a checkpoint prefix (`.../model.ckpt`) or a directory holding one (local or
      `gs://`).
    use_ema: read the `/ExponentialMovingAverage` shadow of each variable where the
      checkpoint has one (the official evaluation weights), the raw variable otherwise.
      False reads the raw variables only.
    include_head: False leaves the classifier (`predictions`) as it is, e.g. to
      fine-tune on another number of classes.

  Returns:
    `model`, modified in place; its `input_normalization` (if any) is set to the
    official ImageNet mean / std on [0, 255].

  Raises:
    ValueError: a model weight has no checkpoint variable of its name and shape, or a
      model variable of the checkpoint is left unused (a different variant); the
      message names them. Nothing is assigned in that case.
  """
  reader = _open(path)
  plan = match_checkpoint(model, reader.get_variable_to_shape_map(), use_ema=use_ema,
                          include_head=include_head)
  for variable, name in plan:
    value = np.asarray(reader.get_tensor(name))
    variable.assign(value.reshape(variable.shape).astype(variable.dtype))
  for layer in model.layers:
    if isinstance(layer, InputNormalization):
      layer.mean.assign(np.asarray(config.IMAGENET_MEAN_RGB, "float32"))
      layer.std.assign(np.asarray(config.IMAGENET_STDDEV_RGB, "float32"))
  return model


def match_checkpoint(model: keras.Model, shapes: dict, *, use_ema: bool = True,
                     include_head: bool = True) -> list:
  """Pairs every weight of `model` with the checkpoint tensor it is read from.

  Only names and shapes are used, so a model built in a `keras.StatelessScope` (no
  memory even for L2) can be checked against a checkpoint's shape map.

  Args:
    model: a model from `efficientnet.build_model`.
    shapes: {tensor name: shape} of the checkpoint
      (`tf.train.load_checkpoint(path).get_variable_to_shape_map()`).
    use_ema, include_head: as in `load_tf1_checkpoint`.

  Returns:
    [(model variable, checkpoint tensor name)] for every weight except the input
    normalisation's (and the classifier's when `include_head` is False).

  Raises:
    ValueError: naming the missing, mis-shaped and unused variables.
  """
  shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
  scope = _model_scope(shapes)
  bn = next((b for b in BN_NAMES if f"{scope}/stem/{b}/gamma" in _bases(shapes)),
            BN_NAMES[0])
  wanted = _checkpoint_names(model, f"{scope}/", bn, include_head)
  plan, missing, misshaped = [], [], []
  for base, variable in wanted.items():
    name = _pick(shapes, base, use_ema)
    if name is None:
      hint = " (only its EMA copy exists: use_ema=True)" if base + EMA_SUFFIX in shapes else ""
      missing.append(f"{base} for {variable.path}{hint}")
      continue
    shape = tuple(variable.shape)
    if shapes[name] not in (shape, (1, 1) + shape):  # SE: 1x1 conv kernel -> Dense.
      misshaped.append(f"{name} {list(shapes[name])} for {variable.path} {list(shape)}")
      continue
    plan.append((variable, name))
  unused = _unused(shapes, scope, set(wanted), include_head)
  if missing or misshaped or unused:
    raise ValueError(_mismatch_message(model, shapes, scope, missing, misshaped, unused))
  return plan


def num_classes_in_checkpoint(path: str) -> int | None:
  """Classes of the checkpoint's classifier (`head/dense/bias`); None if it has none."""
  shapes = _open(path).get_variable_to_shape_map()
  scope = _model_scope(shapes)
  name = _pick(shapes, f"{scope}/{_HEAD_DENSE}/bias", use_ema=True)
  return int(shapes[name][0]) if name else None


# --------------------------------------------------------------------------- names


def _layer_scopes(model: keras.Model, bn: str) -> dict:
  """{our layer name: its scope in the checkpoint, relative to the model scope}."""
  names = [layer.name for layer in model.layers]
  present = set(names)
  scopes = {"stem_conv": "stem/conv2d", "stem_bn": f"stem/{bn}",
            "top_conv": "head/conv2d", "top_bn": f"head/{bn}", "predictions": _HEAD_DENSE}
  # Block prefixes ("block2b") in network order: blocks_<i> is blocks[i].
  blocks = list(dict.fromkeys(m.group(1) for m in map(_BLOCK_LAYER.match, names) if m))
  for i, block in enumerate(blocks):
    if f"{block}_expand_conv" in present:  # The expansion takes the unsuffixed names.
      in_block = {"expand_conv": "conv2d", "expand_bn": bn, "bn": f"{bn}_1",
                  "project_conv": "conv2d_1", "project_bn": f"{bn}_2"}
    else:
      in_block = {"bn": bn, "project_conv": "conv2d", "project_bn": f"{bn}_1"}
    in_block.update(dwconv="depthwise_conv2d", se_reduce="se/conv2d", se_expand="se/conv2d_1")
    scopes.update({f"{block}_{k}": f"blocks_{i}/{v}" for k, v in in_block.items()})
  return scopes


def _checkpoint_names(model: keras.Model, prefix: str, bn: str, include_head: bool) -> dict:
  """{checkpoint base name: model variable} for every weight we import."""
  scopes = _layer_scopes(model, bn)
  wanted = {}
  for layer in model.layers:
    if not layer.weights or isinstance(layer, InputNormalization):
      continue
    if layer.name == "predictions" and not include_head:
      continue
    scope = scopes.get(layer.name, f"<no checkpoint name for layer {layer.name}>")
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    for variable in layer.weights:
      leaf = "depthwise_kernel" if depthwise and variable.name == "kernel" else variable.name
      wanted[f"{prefix}{scope}/{leaf}"] = variable
  return wanted


def _bases(shapes: dict) -> set:
  """Variable names with the EMA suffix removed."""
  return {n[:-len(EMA_SUFFIX)] if n.endswith(EMA_SUFFIX) else n for n in shapes}


def _pick(shapes: dict, base: str, use_ema: bool) -> str | None:
  if use_ema and base + EMA_SUFFIX in shapes:
    return base + EMA_SUFFIX
  return base if base in shapes else None


def _model_scope(shapes: dict) -> str:
  """The variable scope holding the network, found from its stem convolution."""
  scopes = sorted({n[:-len(_STEM_KERNEL)] for n in _bases(shapes) if n.endswith(_STEM_KERNEL)})
  if len(scopes) != 1:
    found = f"several ({scopes})" if scopes else "none"
    raise ValueError(f"expected one EfficientNet in the checkpoint, i.e. one variable "
                     f"'<model>{_STEM_KERNEL}'; found {found}")
  return scopes[0]


def _unused(shapes: dict, scope: str, wanted: set, include_head: bool) -> list:
  """Model variables of the checkpoint that no weight reads (optimizer slots aside)."""
  bases = _bases(shapes)

  def is_slot(name):  # "<variable>/RMSProp", "<variable>/Momentum", ...
    parts = name.split("/")
    return any("/".join(parts[:k]) in bases for k in range(1, len(parts)))

  skipped = f"{scope}/{_HEAD_DENSE}/"
  return sorted(b for b in bases
                if b.startswith(scope + "/") and b not in wanted and not is_slot(b)
                and (include_head or not b.startswith(skipped)))


def _mismatch_message(model, shapes, scope, missing, misshaped, unused) -> str:
  blocks = {m.group(1) for m in map(re.compile(r"/blocks_(\d+)/").search, shapes) if m}
  ours = sum(1 for layer in model.layers if layer.name.endswith("_project_conv"))
  lines = [f"checkpoint model {scope!r} ({len(blocks)} blocks) does not fit model "
           f"{model.name!r} ({ours} blocks):"]
  for what, names in (("missing from the checkpoint", missing),
                      ("of another shape (checkpoint vs model)", misshaped),
                      ("in the checkpoint but unused", unused)):
    if names:
      more = f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
      lines.append(f"  {len(names)} {what}: {'; '.join(names[:_SHOWN])}{more}")
  return "\n".join(lines)


def _open(path: str):
  """A checkpoint reader for a prefix, or for the one checkpoint of a directory."""
  import tensorflow as tf  # Only here: the package itself runs without TensorFlow.
  if tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:  # No `checkpoint` state file: a directory with one *.index.
      indexes = tf.io.gfile.glob(f"{path.rstrip('/')}/*.index")
      if len(indexes) != 1:
        raise ValueError(f"{path}: expected one checkpoint (*.index), found {len(indexes)}")
      prefix = indexes[0][:-len(".index")]
    path = prefix
  return tf.train.load_checkpoint(path)
