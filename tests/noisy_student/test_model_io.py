"""model_io: save/load round trip and the evaluation preprocessing a stored model asks for."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student import evaluate as ev
from noisy_student.common import model_io


def _tiny(size=16):
  inputs = keras.Input((size, size, 3))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  return keras.Model(inputs, keras.layers.Dense(3)(x))


@pytest.mark.parametrize("config, mode", [
    ({"image_size": 32, "small_image": True, "preprocess_mode": "imagenet"}, "imagenet"),
    ({"image_size": 224, "small_image": False, "preprocess_mode": "small"}, "small"),
    ({"image_size": 32, "small_image": True}, "small"),          # An older model_dir.
    ({"image_size": 224, "small_image": False}, "imagenet"),
])
def test_eval_preprocess_reads_the_stored_mode(config, mode):
  p = model_io.eval_preprocess(config)
  assert (p.mode, p.image_size, p.augment) == (mode, config["image_size"], "none")


def test_evaluate_uses_the_stored_mode(tmp_path):
  # A small-image network trained on the imagenet path: evaluation must crop like training.
  model_io.save_model(_tiny(), str(tmp_path), {
      "num_classes": 3, "image_size": 16, "small_image": True, "preprocess_mode": "imagenet"})
  evaluator = ev.Evaluator(ev.EvalConfig(model=str(tmp_path), suite="clean",
                                         output_dir=str(tmp_path / "out"), eval_pattern="x"))
  assert evaluator.preprocess.mode == "imagenet"
  forced = ev.Evaluator(ev.EvalConfig(model=str(tmp_path), suite="clean",
                                      output_dir=str(tmp_path / "out"), eval_pattern="x",
                                      preprocess_mode="small"))
  assert forced.preprocess.mode == "small"


def test_round_trip(tmp_path):
  model = _tiny()
  model_io.save_model(model, str(tmp_path), {"num_classes": 3, "image_size": 16,
                                             "small_image": True})
  loaded, config = model_io.load_model(str(tmp_path))
  x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
  np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
  assert config["num_classes"] == 3


def test_model_files_of_each_layout(tmp_path):
  d = str(tmp_path)
  assert model_io.model_files(d) == (f"{d}/model.keras", f"{d}/model_config.json")
  assert model_io.model_files(f"{d}/model.keras") == (f"{d}/model.keras",
                                                      f"{d}/model_config.json")
  assert model_io.model_files(f"{d}/other.keras") == (f"{d}/other.keras", None)
  with pytest.raises(FileNotFoundError, match="no model at"):
    model_io.read_config(d)


def test_read_config_is_load_models_config(tmp_path):
  model = _tiny()
  model_io.save_model(model, str(tmp_path / "dir"), {"num_classes": 3, "image_size": 16})
  for path in (tmp_path / "dir", tmp_path / "dir" / "model.keras"):
    assert model_io.read_config(str(path)) == model_io.load_model(str(path))[1] == {
        "num_classes": 3, "image_size": 16, "small_image": True}
  model.save(str(tmp_path / "bare.keras"))  # No stored config: the model's shapes.
  assert model_io.read_config(str(tmp_path / "bare.keras")) == {
      "num_classes": 3, "image_size": 16, "small_image": True}


def test_find_checkpoint(tmp_path):
  assert model_io.find_checkpoint(str(tmp_path)) is None
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                       str(tmp_path / model_io.CHECKPOINT_DIR), 2,
                                       checkpoint_name="ckpt")
  prefix = manager.save(3)
  assert prefix.endswith("ckpt/ckpt-3")
  assert model_io.find_checkpoint(str(tmp_path)) == prefix       # a model_dir
  assert model_io.find_checkpoint(str(tmp_path / "ckpt")) == prefix
  assert model_io.find_checkpoint(prefix) == prefix
  assert model_io.find_checkpoint(str(tmp_path / "missing")) is None
