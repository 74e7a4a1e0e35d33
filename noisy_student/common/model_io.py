"""Trained models on disk: `model_dir/model.keras` plus `model_dir/model_config.json`.

The one place that decides what a model path names, what config a model has and how
it sees images at test time; labelling, evaluation, the online teacher and the warm
start all come here. A path is one of:

  * a model_dir: `model.keras` + `model_config.json` (what the trainer exports, the EMA
    weights), and maybe `ckpt/ckpt-<step>.*` (the trainer's checkpoints);
  * a `model.keras` file: its config is the `model_config.json` beside it;
  * any other `.keras` file: no stored config; it is read from the model's shapes;
  * a trainer checkpoint prefix (`.../ckpt/ckpt-8`): only for warm starts
    (`find_checkpoint`).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

import efficientnet  # noqa: F401  Registers the custom layers with Keras' loader.
from data import fileio
from data.input.preprocessing import PreprocessConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "ckpt"  # The trainer's checkpoints inside a model_dir.


def save_model(model: keras.Model, model_dir: str, config: dict) -> str:
  """Atomically writes `model.keras` and `model_config.json`; returns the model path.

  `config` holds at least `num_classes`, `image_size` and `small_image`.
  """
  path = os.path.join(model_dir, MODEL_FILE)
  with fileio.atomic_path(path) as tmp:
    # Keras insists on the .keras suffix; the temporary name keeps it.
    tmp_keras = tmp + ".keras"
    model.save(tmp_keras)
    tf.io.gfile.rename(tmp_keras, tmp, overwrite=True)
  fileio.write_json_atomic(os.path.join(model_dir, CONFIG_FILE), config)
  return path


def model_files(path: str) -> tuple[str, str | None]:
  """(the .keras file, its model_config.json or None) that a model path names.

  Nothing is checked for existence (see the module docstring for the layouts).
  """
  if tf.io.gfile.isdir(path):
    return os.path.join(path, MODEL_FILE), os.path.join(path, CONFIG_FILE)
  if os.path.basename(path) == MODEL_FILE:
    return path, os.path.join(os.path.dirname(path), CONFIG_FILE)
  return path, None


def _existing_model_files(path: str) -> tuple[str, str | None]:
  """`model_files`, the config None when absent; FileNotFoundError without a model."""
  model_path, config_path = model_files(path)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(f"no model at {model_path}")
  if config_path and not tf.io.gfile.exists(config_path):
    config_path = None
  return model_path, config_path


def _complete_config(config: dict, model: keras.Model | None) -> dict:
  """`config` with num_classes and image_size from the model where not stored, and
  small_image (older model dirs) from image_size."""
  if model is not None:
    config.setdefault("num_classes", int(model.output_shape[-1]))
    config.setdefault("image_size", int(model.input_shape[1]))
  config.setdefault("small_image", config["image_size"] <= 64)
  return config


def load_model(path: str) -> tuple[keras.Model, dict]:
  """Loads a model from a model_dir or a `.keras` file.

  Returns:
    (model, config) where config has `num_classes`, `image_size` and `small_image`
    (from model_config.json when present, else from the model's input/output shapes).
  Raises:
    FileNotFoundError: no model file where `path` points.
  """
  model_path, config_path = _existing_model_files(path)
  model = keras.models.load_model(model_path, compile=False)
  config = fileio.read_json(config_path) if config_path else {}
  return model, _complete_config(config, model)


def read_config(path: str) -> dict:
  """`load_model`'s config, without loading the model when a stored one is complete.

  Raises:
    FileNotFoundError: no model file where `path` points.
  """
  _, config_path = _existing_model_files(path)
  config = fileio.read_json(config_path) if config_path else {}
  if "num_classes" in config and "image_size" in config:
    return _complete_config(config, None)
  return load_model(path)[1]


def find_checkpoint(path: str) -> str | None:
  """The trainer checkpoint a path names: the prefix itself (`.../ckpt-8`), or the
  latest one in `path/ckpt/` or in the directory `path`; None if there is none."""
  ckpt = path
  if tf.io.gfile.isdir(path):
    ckpt = (tf.train.latest_checkpoint(os.path.join(path, CHECKPOINT_DIR))
            or tf.train.latest_checkpoint(path))
  if not ckpt or not tf.io.gfile.exists(ckpt + ".index"):
    return None
  return ckpt


def eval_preprocess(config: dict) -> PreprocessConfig:
  """The clean (evaluation) preprocessing of a model, from its stored config.

  The one place that decides how a trained model sees images at test time: labelling,
  evaluation, the online teacher and the trainer's own evaluation all call it. `preprocess_mode` is the training
  path the trainer stored; model dirs written before it was stored fall back to
  `small_image` (small-image networks were trained on the small path).
  """
  mode = config.get("preprocess_mode") or ("small" if config["small_image"] else "imagenet")
  return PreprocessConfig(image_size=int(config["image_size"]), mode=mode, augment="none")
