"""`data.records.classes.count_classes`: the number of classes, read from the data."""
import pytest
import tensorflow as tf

from data.records import classes
from data.records import schema


def _records(path, labels):
  with tf.io.TFRecordWriter(path) as w:
    for i, label in enumerate(labels):
      w.write(schema.make_example(schema.image_features(
          b"png", f"id-{i}", label)).SerializeToString())


def test_records_count_one_plus_the_largest_label(tmp_path):
  _records(str(tmp_path / "a-0.tfrecord"), [0, 3, -1])
  _records(str(tmp_path / "a-1.tfrecord"), [6, 2])
  assert classes.count_classes(f"records:{tmp_path}/a-*") == 7
  # 1-based records (the TPU conversion script's ImageNet): the offset applies first.
  assert classes.count_classes(f"records:{tmp_path}/a-*", label_offset=1) == 6


def test_records_on_a_remote_filesystem():
  root = "ram://classes-test"
  tf.io.gfile.makedirs(root)
  _records(f"{root}/l-0.tfrecord", [1, 4])
  assert classes.count_classes(f"records:{root}/l-*") == 5


def test_folders_fashion_mnist_and_errors(tmp_path):
  for name in ("cat", "dog", ".hidden"):
    (tmp_path / "pets" / name).mkdir(parents=True)
  (tmp_path / "pets" / "notes.txt").write_text("not a class")
  assert classes.count_classes(f"folder:{tmp_path}/pets") == 2
  assert classes.count_classes("fashion_mnist:train") == 10
  (tmp_path / "flat").mkdir()
  with pytest.raises(ValueError, match="has no classes"):
    classes.count_classes(f"folder:{tmp_path}/flat")
  _records(str(tmp_path / "u.tfrecord"), [-1, -1])
  with pytest.raises(ValueError, match="has no classes"):
    classes.count_classes(f"records:{tmp_path}/u.tfrecord")
  with pytest.raises(FileNotFoundError, match="missing"):
    classes.count_classes(f"folder:{tmp_path}/missing")
  with pytest.raises(ValueError, match="cannot count the classes of 'csv:x'"):
    classes.count_classes("csv:x")
