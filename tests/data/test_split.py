"""The semi-supervised split: counts per class, disjointness, hidden labels, determinism."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data import config_flags
from data import fileio
from data import split
from data.records import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def labeled_set(tmp_path):
  """3 classes x 10 records (+ 2 already unlabeled) over 2 files: {id: serialized}."""
  rng = np.random.default_rng(0)
  records = {}
  for i in range(32):
    label = i % 3 if i < 30 else schema.UNLABELED
    encoded = tf.io.encode_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).numpy()
    features = schema.image_features(encoded, f"toy/{i:03d}", label, height=4, width=4)
    records[f"toy/{i:03d}"] = schema.make_example(features).SerializeToString()
  ids = list(records)
  for f, chunk in enumerate((ids[:17], ids[17:])):
    with tf.io.TFRecordWriter(str(tmp_path / f"train-{f:05d}-of-00002.tfrecord")) as w:
      for image_id in chunk:
        w.write(records[image_id])
  return str(tmp_path / "train-*"), records


def _read(pattern):
  out = {}
  for path in fileio.list_files(pattern):
    for r in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ex = tf.train.Example.FromString(r)
      out[ex.features.feature[schema.ID].bytes_list.value[0].decode()] = (r, ex)
  return out


def _int(ex, key):
  values = ex.features.feature[key].int64_list.value
  return values[0] if values else None


def test_split_counts_disjoint_and_hidden_labels(labeled_set, tmp_path):
  pattern, records = labeled_set
  out = tmp_path / "ssl"
  summary = split.split(pattern, str(out), labeled_per_class=3, dev_per_class=2, seed=0,
                        num_output_shards=2)
  parts = {s: _read(str(out / f"{s}-*")) for s in split.SPLITS}
  assert {s: len(p) for s, p in parts.items()} == {"labeled": 9, "dev": 6, "unlabeled": 17}
  assert summary["labeled"]["counts_per_class"] == {"0": 3, "1": 3, "2": 3}
  assert summary["dev"]["counts_per_class"] == {"0": 2, "1": 2, "2": 2}
  assert summary["unlabeled"]["counts_per_class"] == {"-1": 2, "0": 5, "1": 5, "2": 5}
  ids = [set(p) for p in parts.values()]
  assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  assert set.union(*ids) == set(records)
  for name in ("labeled", "dev"):
    for image_id, (raw, _) in parts[name].items():
      assert raw == records[image_id]  # Copied byte for byte.
  for image_id, (_, ex) in parts["unlabeled"].items():
    original = tf.train.Example.FromString(records[image_id])
    assert _int(ex, schema.LABEL) == schema.UNLABELED
    true_label = _int(original, schema.LABEL)
    assert _int(ex, schema.HIDDEN_LABEL) == (None if true_label == -1 else true_label)
    assert (ex.features.feature[schema.ENCODED] ==
            original.features.feature[schema.ENCODED])
  parsed = schema.parse_example(tf.constant(next(iter(parts["unlabeled"].values()))[0]),
                                with_hidden_label=True)
  assert parsed["label"].numpy() == -1
  assert sorted(os.listdir(out)) == sorted(
      [f"{s}-0000{i}-of-00002.tfrecord" for s in split.SPLITS for i in range(2)] +
      ["split_summary.json"])


def test_split_is_deterministic_and_seeded(labeled_set, tmp_path):
  pattern, _ = labeled_set
  kwargs = dict(labeled_per_class=4, num_output_shards=3)
  split.split(pattern, str(tmp_path / "a"), seed=1, **kwargs)
  split.split(pattern, str(tmp_path / "b"), seed=1, **kwargs)
  split.split(pattern, str(tmp_path / "c"), seed=2, **kwargs)
  names = sorted(n for n in os.listdir(tmp_path / "a") if n.endswith(".tfrecord"))
  assert not any(n.startswith("dev") for n in names)  # dev_per_class=0: no dev files.
  for n in names:
    assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
  assert set(_read(str(tmp_path / "a" / "labeled-*"))) != set(
      _read(str(tmp_path / "c" / "labeled-*")))
  per_shard = [len(_read(str(tmp_path / "a" / f"unlabeled-0000{i}-of-00003.tfrecord")))
               for i in range(3)]
  assert sorted(per_shard) == [6, 7, 7]


def test_choose_per_class_is_independent_of_other_classes():
  labels = np.array([0, 1] * 10)
  a = split.choose(labels, 2, 1, seed=0)
  b = split.choose(np.concatenate([labels, [2] * 5]), 2, 1, seed=0)
  np.testing.assert_array_equal(a, b[:20])
  assert collections.Counter(a[labels == 0]) == {0: 2, 1: 1, 2: 7}


def test_split_errors(labeled_set, tmp_path):
  pattern, _ = labeled_set
  with pytest.raises(ValueError, match="class 0 has 10 records"):
    split.split(pattern, str(tmp_path / "x"), labeled_per_class=9, dev_per_class=2)
  with pytest.raises(ValueError, match="no files match"):
    split.split(str(tmp_path / "nothing-*"), str(tmp_path / "x"), labeled_per_class=1)


def test_command_line(labeled_set, tmp_path):
  pattern, _ = labeled_set
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "data.split", f"--input_pattern={pattern}",
       f"--output_dir={out}", "--labeled_per_class=2", "--dev_per_class=1", "--seed=0",
       "--num_output_shards=1"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "labeled: 6, dev: 3, unlabeled: 23" in result.stdout
  assert json.loads((out / "split_summary.json").read_text())["num_input_records"] == 32


def test_flags_are_made_from_the_settings():
  """The driver's recorded data.split command (old name --num_shards) still parses."""
  recorded = ["--input_pattern=W/data/records/train-*", "--output_dir=W/data/split",
              "--labeled_per_class=90", "--dev_per_class=10", "--num_shards=4", "--seed=0"]
  settings = config_flags.parse_args(split.SplitSettings, recorded)
  assert settings == split.SplitSettings(
      input_pattern="W/data/records/train-*", output_dir="W/data/split",
      labeled_per_class=90, dev_per_class=10, num_output_shards=4)
  assert config_flags.to_args(settings)[-1] == "--num_output_shards=4"
  defaults = split.SplitSettings(input_pattern="p", output_dir="o", labeled_per_class=1)
  assert (defaults.dev_per_class, defaults.num_output_shards, defaults.decode_images) == (
      0, 8, True)


def _add_bad_records(directory):
  """A third input file: two good records around three bad ones."""
  encoded = tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy()
  rows = [schema.make_example(schema.image_features(encoded, "extra/good-0", 0)),
          schema.make_example(schema.image_features(encoded[:20], "extra/png", 1)),
          None,
          schema.make_example(schema.image_features(encoded, "extra/label", -5)),
          schema.make_example(schema.image_features(encoded, "extra/good-1", 1))]
  with tf.io.TFRecordWriter(str(directory / "train-00002-of-00003.tfrecord")) as w:
    for row in rows:
      w.write(b"not an Example" if row is None else row.SerializeToString())


def test_bad_records_are_skipped_listed_and_limited(labeled_set, tmp_path):
  pattern, records = labeled_set
  _add_bad_records(tmp_path)
  summary = split.split(pattern, str(tmp_path / "out"), labeled_per_class=2,
                        num_output_shards=1)
  written = {s: _read(str(tmp_path / "out" / f"{s}-*")) for s in ("labeled", "unlabeled")}
  assert set(written["labeled"]) | set(written["unlabeled"]) == set(records) | {
      "extra/good-0", "extra/good-1"}
  assert summary["num_skipped"] == 3 and summary["num_input_records"] == 37
  third = str(tmp_path / "train-00002-of-00003.tfrecord")
  assert [(s["file"], s["index"]) for s in summary["skipped"]] == [
      (third, 1), (third, 2), (third, 3)]
  with pytest.raises(ValueError, match="3 bad records.*more than --max_bad_records=2"):
    split.split(pattern, str(tmp_path / "limited"), labeled_per_class=2, max_bad_records=2)


def test_truncated_input_is_named(labeled_set, tmp_path):
  pattern, _ = labeled_set
  path = tmp_path / "train-00001-of-00002.tfrecord"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(ValueError, match=f"{path}: truncated record at"):
    split.split(pattern, str(tmp_path / "out"), labeled_per_class=2)
