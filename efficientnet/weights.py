"""Weight import from `keras.applications.EfficientNetB0..B7`.

Keras publishes ImageNet checkpoints for B0..B7 (converted from the official TF1 ones).
Our layer names are those of `keras.applications`, so the import copies every
convolution, batch-normalisation and dense layer by name, after checking that both
models have exactly the same layers and shapes. The input normalisation is imported as
well: the source model's `Rescaling` / `Normalization` chain is folded into our
`InputNormalization` (a per-channel mean and std in pixel units), so the imported model
gives the same outputs as the source for the same [0, 255] pixels.

The published checkpoints store the ImageNet *standard deviation* as the `Normalization`
layer's variance (https://github.com/tensorflow/tensorflow/issues/49930);
`keras.applications` built with `weights="imagenet"` corrects it with an extra
`Rescaling` layer. When importing from a file whose normalisation variance is exactly that
standard deviation, we apply the same correction, so the result computes what
`weights="imagenet"` computes: (pixels / 255 - mean) / std.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings

import keras
import numpy as np

from efficientnet import config
from efficientnet.layers import InputNormalization

KERAS_APPLICATIONS = {
    "efficientnet-b0": "EfficientNetB0",
    "efficientnet-b1": "EfficientNetB1",
    "efficientnet-b2": "EfficientNetB2",
    "efficientnet-b3": "EfficientNetB3",
    "efficientnet-b4": "EfficientNetB4",
    "efficientnet-b5": "EfficientNetB5",
    "efficientnet-b6": "EfficientNetB6",
    "efficientnet-b7": "EfficientNetB7",
}
# What the published checkpoints hold as the Normalization layer's *variance*.
_PUBLISHED_VARIANCE = (0.229, 0.224, 0.225)
_WEIGHTED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
             keras.layers.BatchNormalization, keras.layers.Dense)
HEAD = "predictions"


def load_keras_applications_weights(model: keras.Model, source, *,
                                    include_head: bool = True) -> keras.Model:
  """Copies the weights of a `keras.applications` EfficientNet into `model`.

  Args:
    model: a model from `efficientnet.build_model` of the same variant (B0..B7).
    source: a `keras.applications.EfficientNetB*` model, or the path of its saved
      weights (`.weights.h5`, or the legacy `.h5` files Keras publishes); a file is
      loaded into a freshly built `keras.applications` model of `model`'s variant.
    include_head: False skips the classifier (`predictions`), e.g. to fine-tune
      ImageNet weights on another number of classes.

  Returns:
    `model`, modified in place. Its logits equal the source's pre-softmax outputs (build
    the source with `classifier_activation=None` to compare them directly). A model
    built with `normalize_inputs=False` receives only the network weights.

  Raises:
    ValueError: the two models differ in variant (layers) or in shapes.
  """
  fix_published = False
  if isinstance(source, (str, os.PathLike)):
    source = _keras_model_from_file(model, os.fspath(source), include_head)
    fix_published = True
  if not isinstance(source, keras.Model):
    raise TypeError(f"source must be a keras.Model or a weights path, got {type(source)}")

  ours, theirs = _weighted_layers(model), _weighted_layers(source)
  if not include_head:
    ours.pop(HEAD, None)
    theirs.pop(HEAD, None)
  _check_same_layers(model, source, ours, theirs)
  for name, layer in theirs.items():
    values = _fit_shapes(name, ours[name], layer.get_weights(), include_head)
    ours[name].set_weights(values)

  norm = [l for l in model.layers if isinstance(l, InputNormalization)]
  if norm:
    mean, std = _source_normalization(source, fix_published)
    norm[0].mean.assign(mean)
    norm[0].std.assign(std)
  return model


def _weighted_layers(model: keras.Model) -> dict:
  return {l.name: l for l in model.layers if isinstance(l, _WEIGHTED)}


def _describe(model: keras.Model, layers: dict) -> str:
  """"stem 32 filters, 16 blocks, head 1280, 1000 classes" (what tells variants apart)."""
  def filters(name):
    return layers[name].filters if name in layers else "?"
  blocks = sum(1 for n in layers if n.endswith("_project_conv"))
  classes = layers[HEAD].units if HEAD in layers else "no"
  return (f"{model.name!r}: stem {filters('stem_conv')} filters, {blocks} blocks, "
          f"head {filters('top_conv')}, {classes} classes")


def _check_same_layers(model, source, ours: dict, theirs: dict) -> None:
  missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
  if missing or extra:
    raise ValueError(
        "the source is not the same EfficientNet variant as the model: "
        f"model {_describe(model, ours)}; source {_describe(source, theirs)}. "
        f"Layers only in the model: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
        f"only in the source: {extra[:5]}{'...' if len(extra) > 5 else ''}.")


def _fit_shapes(name: str, layer, values: list, include_head: bool) -> list:
  """The source values in our layer's shapes, or a ValueError naming the layer.

  Our squeeze-excite layers are Dense, theirs 1x1 Conv2D on a 1x1 map: the kernels
  differ only by the two leading 1s, [1, 1, in, out] -> [in, out].
  """
  expected = [tuple(w.shape) for w in layer.weights]
  got = [tuple(v.shape) for v in values]
  fitted = []
  for value, shape, source_shape in zip(values, expected, got):
    if source_shape == (1, 1) + shape:
      value = value.reshape(shape)
    fitted.append(value)
  if [tuple(v.shape) for v in fitted] != expected:
    hint = (" (a different number of classes: pass include_head=False to skip the "
            "classifier)") if name == HEAD and include_head else ""
    raise ValueError(f"layer {name!r}: source shapes {got} != model shapes {expected}{hint}")
  return fitted


def _source_normalization(source: keras.Model, fix_published: bool):
  """Folds the source's layers before `stem_conv` into (mean, std) in pixel units.

  Every supported layer is per-channel affine, y = a * x + b; the composition is
  (x - mean) / std with std = 1 / a and mean = -b / a.
  """
  a, b = np.ones(3), np.zeros(3)
  seen_norm = saw_rescaling_after_norm = published_variance = False
  for layer in source.layers:
    if layer.name.startswith("stem_conv"):
      break
    if isinstance(layer, keras.layers.InputLayer):
      continue
    if isinstance(layer, keras.layers.Rescaling):
      scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (3,))
      offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (3,))
      a, b = a * scale, b * scale + offset
      saw_rescaling_after_norm = seen_norm
    elif isinstance(layer, keras.layers.Normalization):
      mean = keras.ops.convert_to_numpy(layer.mean).astype(np.float64).reshape(-1)
      variance = keras.ops.convert_to_numpy(layer.variance).astype(np.float64).reshape(-1)
      divisor = np.maximum(np.sqrt(variance), keras.config.epsilon())
      a, b = a / divisor, (b - mean) / divisor
      published_variance = bool(np.allclose(variance, _PUBLISHED_VARIANCE, atol=1e-6))
      seen_norm, saw_rescaling_after_norm = True, False
    else:
      raise ValueError(f"cannot fold source layer {layer.name!r} ({type(layer).__name__}) "
                       "into the input normalisation")
  if published_variance and not saw_rescaling_after_norm:
    if fix_published:
      # What keras.applications adds for weights="imagenet": divide by sqrt(std) again.
      a, b = a / np.sqrt(_PUBLISHED_VARIANCE), b / np.sqrt(_PUBLISHED_VARIANCE)
    else:
      warnings.warn(
          "the source model normalises with the published checkpoint's variance but "
          "lacks the correcting Rescaling layer of weights='imagenet'; importing its "
          "normalisation as is (std**0.5 instead of std). Import from the weights file "
          "instead to get the corrected normalisation.")
  return (-b / a).astype(np.float32), (1.0 / a).astype(np.float32)


def _keras_variant(model: keras.Model) -> str:
  """The B0..B7 variant whose stem width and block count match `model`."""
  layers = _weighted_layers(model)
  stem = layers["stem_conv"].filters if "stem_conv" in layers else None
  blocks = sum(1 for n in layers if n.endswith("_project_conv"))
  for name in KERAS_APPLICATIONS:
    v = config.get_variant(name)
    if (config.round_filters(config.STEM_FILTERS, v.width) == stem
        and len(config.expand_blocks(v.width, v.depth)) == blocks):
      return name
  raise ValueError(f"no keras.applications EfficientNet matches the model "
                   f"({_describe(model, layers)}); weights exist for B0..B7 only")


def _file_num_classes(path: str) -> int | None:
  """Classes of the classifier stored in a weights file; None for a headless file."""
  import h5py  # A Keras dependency; only needed for files.
  found = []

  def visit(name, obj):
    # Legacy files name the layer ("predictions/..."); Keras 3 files name its class
    # ("layers/dense/vars/1"); EfficientNet has a single dense layer either way.
    if isinstance(obj, h5py.Dataset) and len(obj.shape) == 1 and (
        "predictions" in name or "/dense/" in f"/{name}"):
      found.append(obj.shape[0])
  with h5py.File(path, "r") as f:
    f.visititems(visit)
  return found[0] if found else None


@contextlib.contextmanager
def _local_file(path: str):
  """`path` itself when local, else a local copy of it made through tf.io.gfile (gs://).

  h5py, and Keras' reader of the legacy `.h5` files it publishes, open() their file.
  Local paths need no TensorFlow: the model runs on any Keras backend.
  """
  if "://" not in path:
    if not os.path.exists(path):
      raise FileNotFoundError(f"no weights file at {path}")
    yield path
    return
  import tensorflow as tf  # Only here: the package itself runs without TensorFlow.
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"no weights file at {path}")
  with tempfile.TemporaryDirectory() as local:
    copy = os.path.join(local, os.path.basename(path))
    tf.io.gfile.copy(path, copy)
    yield copy


def _keras_model_from_file(model: keras.Model, path: str, include_head: bool):
  with _local_file(path) as local:
    variant = _keras_variant(model)
    classes = _file_num_classes(local)
    if classes is None and include_head:
      raise ValueError(f"{path} holds no classifier (include_top=False weights); "
                       "pass include_head=False")
    builder = getattr(keras.applications, KERAS_APPLICATIONS[variant])
    source = builder(weights=None, input_shape=(32, 32, 3), include_top=classes is not None,
                     classes=classes or 1000, classifier_activation=None)
    try:
      source.load_weights(local)
    except ValueError as e:
      raise ValueError(f"{path} does not hold keras.applications "
                       f"{KERAS_APPLICATIONS[variant]} weights (the model is {variant}): "
                       f"{e}") from e
  return source
