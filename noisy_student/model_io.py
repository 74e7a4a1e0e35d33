"""Trained models on disk: `model_dir/model.keras` plus `model_dir/model_config.json`.

The trainer exports the final EMA weights this way; labelling and evaluation accept either
the directory or a bare `.keras` file (whose config is then read from the model itself).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

import efficientnet  # noqa: F401  Registers the custom layers with Keras' loader.
from data import fileio
from data.preprocessing import PreprocessConfig

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"


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


def load_model(path: str) -> tuple[keras.Model, dict]:
  """Loads a model from a model_dir or a `.keras` file.

  Returns:
    (model, config) where config has `num_classes` and `image_size` (from
    model_config.json when present, else from the model's input/output shapes).
  """
  model_path, config_path = path, None
  if tf.io.gfile.isdir(path):
    model_path = os.path.join(path, MODEL_FILE)
    config_path = os.path.join(path, CONFIG_FILE)
  elif os.path.basename(path) == MODEL_FILE:
    config_path = os.path.join(os.path.dirname(path), CONFIG_FILE)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(f"no model at {model_path}")
  model = keras.models.load_model(model_path, compile=False)
  config = {}
  if config_path and tf.io.gfile.exists(config_path):
    config = fileio.read_json(config_path)
  config.setdefault("num_classes", int(model.output_shape[-1]))
  config.setdefault("image_size", int(model.input_shape[1]))
  config.setdefault("small_image", config["image_size"] <= 64)
  return model, config


def eval_preprocess(config: dict) -> PreprocessConfig:
  """The clean (evaluation) preprocessing of a model, from its stored config.

  The one place that decides how a trained model sees images at test time: labelling,
  evaluation and the online teacher all call it. `preprocess_mode` is the training
  path the trainer stored; model dirs written before it was stored fall back to
  `small_image` (small-image networks were trained on the small path).
  """
  mode = config.get("preprocess_mode") or ("small" if config["small_image"] else "imagenet")
  return PreprocessConfig(image_size=int(config["image_size"]), mode=mode, augment="none")
