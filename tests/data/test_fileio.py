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
