"""`tfds:NAME/SPLIT` sources, on a tiny data set built here (no network, no mock).

`tfds.testing.mock_data` is not enough: its builders have no split metadata, which the
streamed source needs to cut the split into ranges.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data import make_tfrecords
from data.records import schema
from data.records import sources

NAME = "noisy_student_tiny_images"
NUM_TRAIN = 7


class NoisyStudentTinyImages(tfds.core.GeneratorBasedBuilder):
  """7 train and 3 test 4x5 PNGs of 3 classes; image i is filled with grey level i."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["cat", "dog", "emu"]),
        "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(100, 3)}

  def _generate_examples(self, first, n):
    for i in range(first, first + n):
      yield i, {"image": np.full((4, 5, 3), i, np.uint8), "label": i % 3,
                "file_name": f"img{i}.png"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder(NAME, data_dir=directory).download_and_prepare()
  return directory


def _stored(data_dir, split="train"):
  """(file_name, label, encoded bytes) of every example, in TFDS's order."""
  ds = tfds.builder(NAME, data_dir=data_dir).as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  return [(e["file_name"].decode(), int(e["label"]), e["image"])
          for e in ds.as_numpy_iterator()]


def _records(directory, names):
  out = []
  for name in names:
    for r in tf.data.TFRecordDataset(os.path.join(directory, name)).as_numpy_iterator():
      f = tf.train.Example.FromString(r).features.feature
      out.append({k: (f[k].bytes_list.value or f[k].int64_list.value)[0] for k in
                  (schema.ID, schema.LABEL, schema.FILENAME, schema.ENCODED, schema.FORMAT)})
  return out


def test_streams_stored_bytes_and_zero_based_labels(data_dir, tmp_path):
  source = sources.make_source(f"tfds:{NAME}/train", tfds_data_dir=data_dir)
  assert not hasattr(source, "items")  # Streamed: no list of the split's examples.
  assert source.num_examples == NUM_TRAIN and source.class_names == ["cat", "dog", "emu"]
  summary = make_tfrecords.make_tfrecords(source, str(tmp_path), num_shards=3, seed=0,
                                          show_progress=False)
  assert summary["assignment"] == "contiguous" and summary["records_per_shard"] == [3, 2, 2]
  assert summary["counts_per_class"] == {"0": 3, "1": 2, "2": 2}  # Labels 0, 1, 2, 0, ...
  stored = _stored(data_dir)
  records = _records(str(tmp_path), summary["files"])
  # Contiguous runs in TFDS's order: record i is example i, its bytes and label as stored.
  assert [r[schema.ID].decode() for r in records] == [
      f"{NAME}/train/{i:06d}" for i in range(NUM_TRAIN)]
  for r, (file_name, label, encoded) in zip(records, stored):
    assert r[schema.FILENAME].decode() == file_name
    assert r[schema.LABEL] == label == int(file_name[3:-4]) % 3  # ClassLabel: no offset.
    assert r[schema.ENCODED] == encoded and r[schema.FORMAT] == b"png"
    assert np.all(tf.io.decode_png(encoded).numpy() == int(file_name[3:-4]))


def test_jobs_write_the_same_files_as_one_process(data_dir, tmp_path):
  one = make_tfrecords.make_tfrecords(
      sources.make_source(f"tfds:{NAME}/train", tfds_data_dir=data_dir),
      str(tmp_path / "one"), num_shards=2, num_output_shards=2, seed=0, show_progress=False)
  # Jobs refuse to prepare the data set (N preparations at once); here it is prepared.
  jobs = sources.make_source(f"tfds:{NAME}/train", tfds_data_dir=data_dir,
                             tfds_prepare=False)
  for k in (0, 1):
    summary = make_tfrecords.make_tfrecords(
        jobs, str(tmp_path / "jobs"), num_shards=2, num_output_shards=2, shard_index=k,
        seed=0, show_progress=False, num_workers=2)
  merged = summary["merged"]
  assert merged["files"] == one["files"] and merged["num_records"] == NUM_TRAIN
  for name in one["files"]:
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "jobs" / name).read_bytes()
  assert json.loads((tmp_path / "jobs" / "train_summary.json").read_text()) == merged


def test_max_examples_sliced_splits_and_unprepared_data(data_dir, tmp_path):
  source = sources.make_source(f"tfds:{NAME}/train", tfds_data_dir=data_dir)
  summary = make_tfrecords.make_tfrecords(source, str(tmp_path / "a"), num_shards=4,
                                          seed=0, max_examples=3, show_progress=False)
  assert summary["records_per_shard"] == [1, 1, 1, 0]  # More files than examples.
  ids = [r[schema.ID].decode() for r in _records(str(tmp_path / "a"), summary["files"])]
  assert ids == [f"{NAME}/train/{i:06d}" for i in range(3)]  # The first 3 of TFDS's order.
  sliced = sources.make_source(f"tfds:{NAME}/train[2:]", tfds_data_dir=data_dir)
  assert sliced.split == "train_2__" and sliced.num_examples == NUM_TRAIN - 2
  summary = make_tfrecords.make_tfrecords(sliced, str(tmp_path / "b"), num_shards=4,
                                          seed=0, show_progress=False)
  records = _records(str(tmp_path / "b"), summary["files"])
  assert [r[schema.ENCODED] for r in records] == [e for *_, e in _stored(data_dir)[2:]]
  with pytest.raises(ValueError, match=r"train\[:3\]"):
    sliced.file_ranges(2, max_examples=3)
  with pytest.raises(ValueError, match="not prepared"):
    sources.make_source(f"tfds:{NAME}/train", tfds_data_dir=str(tmp_path / "empty"),
                        tfds_prepare=False)
  with pytest.raises(ValueError, match="NAME/SPLIT"):
    sources.make_source(f"tfds:{NAME}")
