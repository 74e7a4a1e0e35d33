"""Tests for data/preview.py: the grid's panels, the PNG it writes, TFRecord input, CLI."""

import io
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from data import preview
from data.input import randaugment
from data.records import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = preview.PreviewConfig(magnitudes=(5, 27), samples=2, image_size=32,
                              translate_const=4, cutout_const=4, columns=6, dpi=20)


def gradient(height, width):
  y, x = np.mgrid[:height, :width]
  return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)


def test_panels_are_the_input_each_op_and_seeded_draws():
  image = preview.square(gradient(40, 48), 32)
  grid = preview.panels(image, SMALL)
  labels = [label for label, _ in grid]
  assert labels[0] == "input" and len(grid) % SMALL.columns == 0
  for name in randaugment.OP_NAMES:
    assert any(label.startswith(f"{name} M=27") for label in labels), name
  # One-op panels use sign +1: TranslateX at M=27, translate_const 4 moves 10.8 -> 11 px.
  translated = grid[labels.index("TranslateX M=27")][1]
  np.testing.assert_array_equal(translated[:, :21], image[:, 11:])
  assert np.all(translated[:, 21:] == 128)
  draws = [panel for label, panel in grid if label.startswith("RandAugment(2, 27)")]
  assert len(draws) == 2 and all(d.shape == (32, 32, 3) for d in draws)
  again = [panel for label, panel in preview.panels(image, SMALL)
           if label.startswith("RandAugment(2, 27)")]
  np.testing.assert_array_equal(np.stack(draws), np.stack(again))  # seeded


def test_render_writes_a_png_atomically(tmp_path):
  path = str(tmp_path / "out" / "grid.png")
  width, height = preview.render(gradient(30, 50), SMALL, path)
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size == (width, height)
  assert os.listdir(tmp_path / "out") == ["grid.png"]  # no temporary left behind


def test_reads_the_indexed_tfrecord_image(tmp_path):
  pattern = str(tmp_path / "images-*.tfrecord")
  images = [np.full((5, 7, 3), value, np.uint8) for value in (10, 20, 30)]
  for shard, chunk in enumerate([images[:2], images[2:]]):
    with tf.io.TFRecordWriter(str(tmp_path / f"images-{shard}.tfrecord")) as writer:
      for k, image in enumerate(chunk):
        encoded = tf.io.encode_png(image).numpy()
        example = schema.make_example(schema.image_features(encoded, f"{shard}-{k}"))
        writer.write(example.SerializeToString())
  np.testing.assert_array_equal(preview.read_tfrecord_image(pattern, 2), images[2])
  np.testing.assert_array_equal(preview.read_tfrecord_image(pattern, 1), images[1])


def test_command_line(tmp_path):
  photo = tmp_path / "photo.png"
  Image.fromarray(gradient(24, 24)).save(photo)
  output = tmp_path / "preview.png"
  result = subprocess.run(
      [sys.executable, "-m", "data.preview", f"--output={output}", f"--image={photo}",
       "--magnitudes=27", "--samples=1", "--image_size=24", "--translate_const=3",
       "--cutout_const=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote" in result.stdout
  with Image.open(io.BytesIO(output.read_bytes())) as png:
    assert png.format == "PNG"
