"""Atomic writes leave either the old file or the complete new one."""
import os

import pytest

from data import fileio


def test_atomic_path_renames_on_success(tmp_path):
  target = str(tmp_path / "sub" / "out.txt")
  with fileio.atomic_path(target) as tmp:
    assert fileio.is_temporary(tmp)
    with open(tmp, "w") as f:
      f.write("done")
  assert open(target).read() == "done"
  assert os.listdir(tmp_path / "sub") == ["out.txt"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
  target = tmp_path / "out.txt"
  target.write_text("old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_path(str(target)) as tmp:
      open(tmp, "w").write("half")
      raise RuntimeError("crash")
  assert target.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.txt"]


def test_list_files_skips_temporaries_and_rejects_empty(tmp_path):
  (tmp_path / "a.tfrecord").write_text("")
  (tmp_path / f"{fileio.TMP_MARK}x-b.tfrecord").write_text("")
  assert fileio.list_files(str(tmp_path / "*.tfrecord")) == [str(tmp_path / "a.tfrecord")]
  with pytest.raises(ValueError, match="no files match"):
    fileio.list_files(str(tmp_path / "*.nothing"))


def _records(path, n=2):
  import tensorflow as tf
  with tf.io.TFRecordWriter(str(path)) as w:
    for i in range(n):
      w.write(f"record {i}".encode())


def test_list_record_files_skips_what_is_not_a_tfrecord(tmp_path, caplog):
  """A glob over a `selected/` directory also matches its JSON and PNG: skip them, warn."""
  for name in ("selected-00000-of-00002.tfrecord", "selected-00001-of-00002.tfrecord",
               "train-00000-of-01024", "records_without_a_suffix"):
    _records(tmp_path / name)
  (tmp_path / "selection.json").write_text('{"total_kept": 3}\n')
  (tmp_path / "selection.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
  (tmp_path / "select-stats-00000-of-00001.json").write_text("{}\n")
  with caplog.at_level("WARNING"):
    files = fileio.list_record_files(str(tmp_path / "*"))
  assert [os.path.basename(f) for f in files] == [
      "records_without_a_suffix", "selected-00000-of-00002.tfrecord",
      "selected-00001-of-00002.tfrecord", "train-00000-of-01024"]
  warned = " ".join(r.getMessage() for r in caplog.records)
  for name in ("selection.json", "selection.png", "select-stats-00000-of-00001.json"):
    assert name in warned
  with pytest.raises(ValueError, match="no TFRecord files among"):
    fileio.list_record_files(str(tmp_path / "*.json"))
