"""label_stats: the stats files the labeller writes and the selector reads."""
import subprocess
import sys

import numpy as np
import pytest

from noisy_student.labeling import label_stats
from noisy_student.selection import selector


def test_labeller_does_not_import_the_selector():
  code = ("import sys; import noisy_student.labeling.labeller; "
          "sys.exit('noisy_student.selection.selector' in sys.modules)")
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_sparse_dense_round_trip():
  h = label_stats.new_histogram(3)
  label_stats.accumulate(h, [0, 2, 2, 1], np.float32([0.29, 1.0, 1.0, 0.5]))
  assert label_stats.sparse(h) == [[0, 29, 1], [1, 50, 1], [2, 100, 2]]
  np.testing.assert_array_equal(label_stats.dense(label_stats.sparse(h), 3), h)


def test_shard_stats_are_the_sum_of_file_stats():
  settings = {"temperature": 1.0}
  parts = []
  for labels, conf in (([0, 1], [0.9, 0.4]), ([1], [0.95])):
    h = label_stats.new_histogram(2)
    label_stats.accumulate(h, labels, np.float32(conf))
    parts.append(label_stats.make_file_stats(
        input_path=f"in{len(parts)}", output=f"in{len(parts)}", settings=settings,
        histogram=h, corrupt=[], seconds=0.5))
  merged = label_stats.merge_file_stats(shard_index=0, num_shards=1, settings=settings,
                                        num_classes=2, inputs=["a/in0", "a/in1"],
                                        file_stats=parts)
  assert merged["num_images"] == 3 and merged["class_counts"] == [1, 2]
  assert [f["input"] for f in merged["files"]] == ["a/in0", "a/in1"]
  assert merged["seconds"] == 1.0
  assert list(merged)[:3] == ["format", "shard_index", "num_shards"]


def test_file_stats_of_other_settings_are_refused(tmp_path):
  path = str(tmp_path / "f.json")
  assert label_stats.read_file_stats(path, {}) is None
  label_stats.write_file_stats(path, label_stats.make_file_stats(
      input_path="x", output="x", settings={"storage": "float32"},
      histogram=label_stats.new_histogram(2), corrupt=[], seconds=0.0))
  assert label_stats.read_file_stats(path, {"storage": "float32"})["num_images"] == 0
  with pytest.raises(ValueError, match="other settings"):
    label_stats.read_file_stats(path, {"storage": "float16"})


def test_old_names_stay_importable_from_selection():
  for name in ("new_histogram", "confidence_bins", "make_label_stats", "write_label_stats",
               "label_stats_name", "read_label_stats", "NUM_BINS", "LABEL_SETTINGS"):
    assert getattr(selector, name) is getattr(label_stats, name)
