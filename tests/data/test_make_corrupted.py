"""data.make_corrupted: shapes, dtypes, ids and labels kept; deterministic; sharded."""
import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import config_flags
from data import fileio
from data import make_corrupted as mc
from data.records import schema

pytest.importorskip("imagecorruptions")


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def write_records(path, images, labels, prefix="img"):
  with tf.io.TFRecordWriter(path) as w:
    for i, (image, label) in enumerate(zip(images, labels)):
      feats = schema.image_features(_png(image), f"{prefix}-{i}", int(label),
                                    height=image.shape[0], width=image.shape[1],
                                    hidden_label=int(label) + 100)
      w.write(schema.make_example(feats).SerializeToString())


def read_records(pattern):
  out = []
  for path in fileio.list_files(pattern):
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw).features.feature
      image = np.asarray(Image.open(io.BytesIO(ex[schema.ENCODED].bytes_list.value[0])))
      out.append({"id": ex[schema.ID].bytes_list.value[0].decode(),
                  "label": ex[schema.LABEL].int64_list.value[0],
                  "hidden": ex[schema.HIDDEN_LABEL].int64_list.value[0],
                  "corruption": ex[mc.CORRUPTION_KEY].bytes_list.value[0].decode(),
                  "severity": ex[mc.SEVERITY_KEY].int64_list.value[0],
                  "height": ex[schema.HEIGHT].int64_list.value[0],
                  "image": image})
  return sorted(out, key=lambda r: r["id"])


@pytest.fixture
def grey_records(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)  # Fashion-MNIST-like
  path = str(tmp_path / "test-00000.tfrecord")
  write_records(path, images, [0, 1, 2, 3, 4])
  return path


def _run(input_pattern, out_dir, **kwargs):
  config = mc.CorruptConfig(input_pattern=input_pattern, output_dir=str(out_dir),
                            corruptions=("gaussian_noise", "glass_blur"), severities=(1, 5),
                            **kwargs)
  return mc.make_corrupted(config)


def test_keeps_ids_labels_and_pads_to_32(grey_records, tmp_path):
  manifest = _run(grey_records, tmp_path / "c")
  assert manifest["examples_in_shard"] == 5 and len(manifest["written"]) == 4
  records = read_records(str(tmp_path / "c/gaussian_noise/5/*.tfrecord"))
  assert [r["id"] for r in records] == [f"img-{i}" for i in range(5)]
  assert [r["label"] for r in records] == [0, 1, 2, 3, 4]
  assert [r["hidden"] for r in records] == [100, 101, 102, 103, 104]
  for r in records:
    assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
    assert r["height"] == 32 and r["corruption"] == "gaussian_noise" and r["severity"] == 5
  assert not [p for p in glob.glob(str(tmp_path / "c/**/*"), recursive=True)
              if fileio.is_temporary(p)]
  assert os.path.exists(tmp_path / "c/manifest-00000-of-00001.json")


def test_deterministic_and_independent_of_sharding(grey_records, tmp_path):
  _run(grey_records, tmp_path / "one")
  for k in range(2):
    _run(grey_records, tmp_path / "two", shard_index=k, num_shards=2)
  for variant in ("gaussian_noise/1", "glass_blur/5"):
    one = read_records(str(tmp_path / "one" / variant / "*.tfrecord"))
    two = read_records(str(tmp_path / "two" / variant / "*.tfrecord"))
    assert len(glob.glob(str(tmp_path / "two" / variant / "*.tfrecord"))) == 2
    assert [r["id"] for r in one] == [r["id"] for r in two]
    for a, b in zip(one, two):
      np.testing.assert_array_equal(a["image"], b["image"])
  # Severity 5 noise moves pixels further from the clean (padded) image than severity 1.
  clean = [mc.to_min_size(mc.decode_rgb(tf.train.Example.FromString(raw).features
                                        .feature[schema.ENCODED].bytes_list.value[0]))
           for raw in tf.data.TFRecordDataset(grey_records).as_numpy_iterator()]
  dist = lambda severity: np.mean([
      np.abs(r["image"].astype(float) - c).mean() for r, c in zip(
          read_records(str(tmp_path / f"one/gaussian_noise/{severity}/*.tfrecord")), clean)])
  assert dist(5) > 2 * dist(1) > 0


def test_seed_changes_output_and_rerun_skips(grey_records, tmp_path):
  _run(grey_records, tmp_path / "a", seed=0)
  _run(grey_records, tmp_path / "b", seed=1)
  a = read_records(str(tmp_path / "a/gaussian_noise/1/*.tfrecord"))
  b = read_records(str(tmp_path / "b/gaussian_noise/1/*.tfrecord"))
  assert any((x["image"] != y["image"]).any() for x, y in zip(a, b))
  again = _run(grey_records, tmp_path / "a", seed=0)
  assert again["written"] == [] and len(again["skipped_existing"]) == 4


def test_max_examples_and_large_rgb_images_keep_their_size(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 40, 36, 3), dtype=np.uint8)
  path = str(tmp_path / "rgb.tfrecord")
  write_records(path, images, [7, 8, 9])
  _run(path, tmp_path / "c", max_examples=2)
  records = read_records(str(tmp_path / "c/glass_blur/1/*.tfrecord"))
  assert [r["id"] for r in records] == ["img-0", "img-1"]
  assert all(r["image"].shape == (40, 36, 3) for r in records)


@pytest.mark.parametrize("policy, shape", [("pad", (32, 32, 3)), ("resize", (32, 32, 3))])
def test_to_min_size(policy, shape):
  image = np.full((28, 28, 3), 200, np.uint8)
  out = mc.to_min_size(image, 32, policy)
  assert out.shape == shape and out.dtype == np.uint8
  if policy == "pad":
    assert (out[:2] == 0).all() and (out[2:30, 2:30] == 200).all()


def test_every_common_corruption_keeps_shape_and_dtype():
  image = mc.to_min_size(np.random.default_rng(2).integers(0, 256, (28, 28, 3), np.uint8))
  for c in mc.COMMON:
    for s in (1, 5):
      out = mc.corrupt_image(image, c, s, seed=3)
      assert out.shape == (32, 32, 3) and out.dtype == np.uint8, (c, s)
      np.testing.assert_array_equal(out, mc.corrupt_image(image, c, s, seed=3))


def test_flag_parsing_and_validation():
  parse = lambda *args: config_flags.parse_args(
      mc.CorruptConfig, ["--input_pattern=x", "--output_dir=y", *args])
  assert parse() == parse("--corruptions=all") == mc.CorruptConfig("x", "y")
  assert parse().corruptions == mc.COMMON and len(mc.COMMON) == 15
  assert parse().severities == (1, 2, 3, 4, 5) and parse().small_images == "pad"
  assert parse("--corruptions=validation").corruptions == mc.VALIDATION
  assert parse("--corruptions=fog, snow").corruptions == ("fog", "snow")
  assert parse("--severities=1,3").severities == (1, 3)
  assert parse("--shard_index=1", "--num_shards=2").num_shards == 2
  with pytest.raises(ValueError, match="unknown corruptions"):
    mc.CorruptConfig("x", "y", corruptions=("rain",))
  with pytest.raises(ValueError, match="shard_index"):
    mc.CorruptConfig("x", "y", shard_index=2, num_shards=2)


def _with_bad_records(path):
  """Two good records around an undecodable image, a non-Example and a record
  without an image."""
  rng = np.random.default_rng(2)
  good = [schema.make_example(schema.image_features(
      _png(rng.integers(0, 256, (28, 28), dtype=np.uint8)), f"good-{i}", i,
      hidden_label=i)) for i in range(2)]
  no_image = tf.train.Example()
  no_image.features.feature[schema.ID].bytes_list.value[:] = [b"no-image"]
  with tf.io.TFRecordWriter(str(path)) as w:
    w.write(good[0].SerializeToString())
    w.write(schema.make_example(schema.image_features(b"\x89PNG broken", "bad-png", 1))
            .SerializeToString())
    w.write(b"not an Example")
    w.write(no_image.SerializeToString())
    w.write(good[1].SerializeToString())


def test_bad_records_are_skipped_listed_and_limited(tmp_path):
  path = tmp_path / "bad.tfrecord"
  _with_bad_records(path)
  manifest = _run(str(path), tmp_path / "c")
  assert manifest["examples_in_shard"] == 2 and manifest["num_bad_records"] == 3
  assert [(b["index"], b["id"]) for b in manifest["bad_records"]] == [
      (1, "bad-png"), (2, ""), (3, "no-image")]
  assert [r["id"] for r in read_records(str(tmp_path / "c/glass_blur/1/*.tfrecord"))] == [
      "good-0", "good-1"]
  with pytest.raises(ValueError, match="more than --max_bad_records=2"):
    _run(str(path), tmp_path / "limited", max_bad_records=2)
  assert not glob.glob(str(tmp_path / "limited/**/*.tfrecord"), recursive=True)


def test_truncated_input_is_named(grey_records, tmp_path):
  with open(grey_records, "rb") as f:
    data = f.read()
  with open(grey_records, "wb") as f:
    f.write(data[:-40])
  with pytest.raises(ValueError, match=f"{grey_records}: truncated record at"):
    _run(grey_records, tmp_path / "c")
