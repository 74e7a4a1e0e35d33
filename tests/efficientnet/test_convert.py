"""`python -m efficientnet.convert`, then `noisy_student.label` with the converted teacher:
the "convert, label, evaluate" path of docs/pretrained_checkpoints.md, on a random B0 checkpoint."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data.input import preprocessing  # noqa: E402
from data.records import schema  # noqa: E402
from efficientnet import convert  # noqa: E402
from noisy_student.labeling import labeller  # noqa: E402
from noisy_student.common import model_io  # noqa: E402
from tests.efficientnet import tf1_fixtures as fx  # noqa: E402
from tests.noisy_student.records import write_records  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = 5


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A random keras.applications B0 and its checkpoint, laid out like an extracted
  archive (a directory holding model.ckpt.*)."""
  theirs = fx.keras_model("efficientnet-b0", classes=CLASSES, seed=7)
  directory = tmp_path_factory.mktemp("noisy-student-efficientnet-b0")
  fx.write_checkpoint(str(directory / "model.ckpt"),
                      fx.official_tensors(theirs, "efficientnet-b0", seed=7))
  return theirs, str(directory)


def test_command_then_label(released, tmp_path):
  theirs, checkpoint = released
  teacher = str(tmp_path / "teacher")
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run(
      [sys.executable, "-m", "efficientnet.convert", f"--checkpoint={checkpoint}",
       "--model_name=efficientnet-b0", f"--output={teacher}", f"--image_size={fx.SIZE}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(teacher)) == ["model.keras", "model_config.json"]

  pattern = str(tmp_path / "unlabeled" / "part-*")
  for i in range(2):
    write_records(str(tmp_path / "unlabeled" / f"part-{i}"), 3, size=48, seed=i,
                  labeled=False)
  out = tmp_path / "predictions"
  stats = labeller.run_labeling(labeller.LabelConfig(
      teacher=teacher, input_pattern=pattern, output_dir=str(out), batch_size=4))
  assert stats["num_images"] == 6

  # The stored soft labels are keras.applications' softmax on the same eval pixels.
  _, config = model_io.load_model(teacher)
  assert (config["image_size"], config["small_image"]) == (fx.SIZE, False)
  eval_config = preprocessing.PreprocessConfig(fx.SIZE, mode="imagenet", augment="none")
  for i in range(2):
    for record in tf.data.TFRecordDataset(str(out / f"part-{i}")):
      feature = tf.train.Example.FromString(record.numpy()).features.feature
      encoded = feature[schema.ENCODED].bytes_list.value[0]
      pixels = preprocessing.preprocess_image(tf.constant(encoded), eval_config)[None]
      expected = keras.ops.convert_to_numpy(keras.ops.softmax(fx.logits(theirs, pixels)))[0]
      probs = np.array(feature[schema.PSEUDO_PROBS].float_list.value)
      np.testing.assert_allclose(probs, expected, atol=1e-3)


def test_keras_file_output_and_fresh_head(released, tmp_path):
  theirs, checkpoint = released
  path = convert.convert(checkpoint, "b0", str(tmp_path / "b0.keras"), image_size=fx.SIZE)
  assert sorted(os.listdir(tmp_path)) == ["b0.keras"]  # No temporary left behind.
  model, config = model_io.load_model(path)
  assert config["num_classes"] == CLASSES
  x = fx.images()
  assert np.abs(fx.logits(model, x) - fx.logits(theirs, x)).max() < 1e-3

  headless = convert.convert(checkpoint, "b0", str(tmp_path / "ten"), image_size=fx.SIZE,
                             include_head=False, num_classes=10)
  model, config = model_io.load_model(os.path.dirname(headless))
  assert config["num_classes"] == 10 and config["include_head"] is False
  np.testing.assert_allclose(model.get_layer("top_conv").get_weights()[0],
                             theirs.get_layer("top_conv").get_weights()[0])
  with pytest.raises(ValueError, match="has 5 classes, not 10"):
    convert.convert(checkpoint, "b0", str(tmp_path / "x.keras"), num_classes=10)
