"""Labelling and selection with every path on TF's in-memory filesystem (`ram://`).

A stand-in for gs://: every read and write must go through tf.io.gfile. A local-only
call (open, os.path.abspath, glob, os.remove...) either fails on these paths or leaves
a `ram:` folder in the working directory, which the tests check is still empty.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import fileio
from data.input import pipeline
from data.records import schema
from noisy_student.common import model_io
from noisy_student.labeling import labeller
from noisy_student.selection import selector

C = 3
SIZE = 16
PER_FILE = (7, 5, 6)


def _copy_tree(src: str, dst: str) -> None:
  for directory, _, names in tf.io.gfile.walk(src):
    target = dst + directory[len(src):]
    tf.io.gfile.makedirs(target)
    for name in names:
      tf.io.gfile.copy(f"{directory}/{name}", f"{target}/{name}", overwrite=True)


def _world(root: str) -> tuple[str, str]:
  """3 unlabeled input files (real PNGs, hidden labels) and a tiny saved teacher."""
  rng = np.random.default_rng(0)
  tf.io.gfile.makedirs(f"{root}/unlabeled")
  for f, n in enumerate(PER_FILE):
    with tf.io.TFRecordWriter(f"{root}/unlabeled/part-{f:05d}.tfrecord") as w:
      for i in range(n):
        label = int(rng.integers(C))
        image = np.clip(rng.normal(40 + 80 * label, 20, [SIZE, SIZE, 3]), 0, 255)
        w.write(schema.make_example(schema.image_features(
            tf.io.encode_png(image.astype(np.uint8)).numpy(), f"img-{f}-{i}",
            height=SIZE, width=SIZE, hidden_label=label)).SerializeToString())
  inputs = keras.Input([SIZE, SIZE, 3])
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
  model = keras.Model(inputs, keras.layers.Dense(C)(x))
  teacher = f"{root}/teacher"
  model_io.save_model(model, teacher, {"num_classes": C, "image_size": SIZE,
                                       "small_image": True})
  return f"{root}/unlabeled/part-*", teacher


def _label(pattern, teacher, out, num_shards=2):
  return [labeller.run_labeling(labeller.LabelConfig(
      teacher=teacher, input_pattern=pattern, output_dir=out, shard_index=i,
      num_shards=num_shards, batch_size=4)) for i in range(num_shards)]


def _select(pred, out, num_shards=2):
  config = selector.SelectionConfig(images_per_class=6, min_threshold=0.0, seed=1)
  return [selector.run_selection(
      selector.SelectJob(pred, out, i, num_shards, shuffle_buffer=8), config,
      shard_files=pipeline.shard_files) for i in range(num_shards)]


def test_label_and_select_on_a_remote_filesystem(ram):
  pattern, teacher = _world(ram)
  stats = _label(pattern, teacher, f"{ram}/pred")
  assert sum(s["num_images"] for s in stats) == sum(PER_FILE)
  assert sorted(e.rstrip("/") for e in tf.io.gfile.listdir(f"{ram}/pred")) == sorted(
      [f"part-{f:05d}.tfrecord" for f in range(3)] + [
          "_files", "label-settings.json", "stats-00000-of-00002.json",
          "stats-00001-of-00002.json"])
  summary = _select(f"{ram}/pred", f"{ram}/sel")[-1]
  assert summary["complete"] and summary["total_written"] > 0
  written = sum(1 for f in fileio.list_files(f"{ram}/sel/selected-*")
                for _ in tf.data.TFRecordDataset(f))
  assert written == summary["total_written"]
  for name in ("selection.json", "selection.png", "samples.png", "select-settings.json"):
    assert tf.io.gfile.exists(f"{ram}/sel/{name}"), name
  assert summary["samples_png"]["classes"] == list(range(C))
  # The predictions as a glob, not a directory: the same selection.
  again = _select(f"{ram}/pred/part-*", f"{ram}/sel")[-1]
  assert again["total_written"] == summary["total_written"]


def test_rerun_from_another_prefix_is_the_same_run(ram):
  """The teacher and inputs copied under another prefix (another mount, bucket or
  working directory): the labelling directory accepts the rerun, since its settings pin
  the teacher's weights and the inputs' basenames, not their paths; a teacher with other
  weights is still refused."""
  pattern, teacher = _world(ram)
  out = f"{ram}/pred"
  first = _label(pattern, teacher, out, num_shards=1)[0]
  _copy_tree(f"{ram}/teacher", f"{ram}/moved/teacher")
  _copy_tree(f"{ram}/unlabeled", f"{ram}/moved/unlabeled")
  moved = _label(f"{ram}/moved/unlabeled/part-*", f"{ram}/moved/teacher", out,
                 num_shards=1)[0]
  assert moved["settings"] == first["settings"]
  assert moved["teacher"] == f"{ram}/moved/teacher"
  model, config = model_io.load_model(teacher)
  model.layers[-1].kernel.assign(model.layers[-1].kernel + 1.0)
  model_io.save_model(model, f"{ram}/other", config)
  with pytest.raises(ValueError, match=r"other settings.*teacher_weights"):
    _label(pattern, f"{ram}/other", out, num_shards=1)
  # Selection likewise: the predictions moved under another prefix are the same ones.
  _select(out, f"{ram}/sel", num_shards=1)
  _copy_tree(out, f"{ram}/moved/pred")
  assert _select(f"{ram}/moved/pred", f"{ram}/sel", num_shards=1)[0]["complete"]
