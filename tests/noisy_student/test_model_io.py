"""model_io: save/load round trip and the evaluation preprocessing a stored model asks for."""

import keras
import numpy as np
import pytest

from noisy_student import evaluate as ev
from noisy_student import model_io


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
                                         output_dir=str(tmp_path / "out"), data_pattern="x"))
  assert evaluator.preprocess.mode == "imagenet"
  forced = ev.Evaluator(ev.EvalConfig(model=str(tmp_path), suite="clean",
                                      output_dir=str(tmp_path / "out"), data_pattern="x",
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
