"""Sharded teacher inference on tiny TFRecords with a tiny Keras teacher: coverage,
byte-for-byte records, resumption after a crash, corrupt records and bad inputs."""
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import fileio
from data import schema
from noisy_student import labeling
from noisy_student import model_io
from noisy_student import selection

C = 5
SIZE = 32
PER_FILE = (6, 9, 4)


def _image(rng):
  return tf.io.encode_png(rng.integers(0, 256, [SIZE, SIZE, 3], dtype=np.uint8)).numpy()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """3 input files (one with 2 corrupt records) and a saved tiny teacher."""
  root = tmp_path_factory.mktemp("label")
  rng = np.random.default_rng(0)
  records = {}  # id -> serialized source record
  for f, n in enumerate(PER_FILE):
    with tf.io.TFRecordWriter(str(root / f"unlabeled-{f:05d}.tfrecord")) as w:
      for i in range(n):
        image_id = f"img-{f}-{i}"
        s = schema.make_example(schema.image_features(
            _image(rng), image_id, height=SIZE, width=SIZE, filename=f"{image_id}.png",
            hidden_label=int(rng.integers(C)))).SerializeToString()
        records[image_id] = s
        w.write(s)
        if f == 1 and i == 3:  # Corrupt: an undecodable image, then not an Example.
          w.write(schema.make_example(schema.image_features(b"not a png", "bad-image"))
                  .SerializeToString())
          w.write(b"\x01\x02garbage")
  inputs = keras.Input([SIZE, SIZE, 3])
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(4, 3, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(C)(x))
  teacher = str(root / "teacher")
  model_io.save_model(model, teacher, {"num_classes": C, "image_size": SIZE,
                                       "small_image": True})
  return root, teacher, records, model


def _config(world, out, **kw):
  root, teacher, _, _ = world
  return labeling.LabelConfig(teacher=kw.pop("teacher", teacher),
                              input_pattern=kw.pop("pattern", str(root / "unlabeled-*")),
                              output_dir=str(out), batch_size=kw.pop("batch_size", 4), **kw)


def _outputs(out):
  """{input basename: [serialized records]}"""
  return {os.path.basename(p): [r.numpy() for r in tf.data.TFRecordDataset(p)]
          for p in sorted(glob.glob(os.path.join(out, "unlabeled-*")))}


def _features(serialized):
  return tf.train.Example.FromString(serialized).features.feature


def test_shards_cover_every_record_once_with_source_bytes(world, tmp_path):
  _, _, records, model = world
  stats = [labeling.run_labeling(_config(world, tmp_path, shard_index=i, num_shards=2))
           for i in range(2)]
  outputs = _outputs(tmp_path)
  assert sorted(outputs) == [f"unlabeled-{f:05d}.tfrecord" for f in range(3)]
  ids = [_features(s)[schema.ID].bytes_list.value[0].decode()
         for recs in outputs.values() for s in recs]
  assert sorted(ids) == sorted(records)                       # each exactly once
  assert sum(s["num_images"] for s in stats) == len(records)
  assert sorted(f["output"] for s in stats for f in s["files"]) == sorted(outputs)
  hist = selection.new_histogram(C)
  for recs in outputs.values():
    for s in recs:
      out = _features(s)
      src = _features(records[out[schema.ID].bytes_list.value[0].decode()])
      # Every source field untouched (encoded bytes, id, hidden label, filename, ...).
      assert set(src).issubset(out) and all(out[k] == src[k] for k in src)
      image = tf.io.decode_png(src[schema.ENCODED].bytes_list.value[0], channels=3)
      probs = tf.nn.softmax(model(tf.cast(image, tf.float32)[None])[0]).numpy()
      np.testing.assert_allclose(out[schema.PSEUDO_PROBS].float_list.value, probs,
                                 atol=1e-5)
      assert out[schema.PSEUDO_LABEL].int64_list.value[0] == probs.argmax()
      selection.accumulate(hist, [out[schema.PSEUDO_LABEL].int64_list.value[0]],
                           [out[schema.PSEUDO_CONFIDENCE].float_list.value[0]])
  np.testing.assert_array_equal(np.sum([s["histogram"] for s in stats], axis=0), hist)
  corrupt = [c for s in stats for c in s["corrupt_records"]]
  assert sum(s["num_corrupt"] for s in stats) == 2
  assert [(os.path.basename(c["file"]), c["index"], c["id"]) for c in corrupt] == [
      ("unlabeled-00001.tfrecord", 4, "bad-image"), ("unlabeled-00001.tfrecord", 5, "")]
  # The selection step reads these stats as they are.
  assert selection.read_label_stats(str(tmp_path)).histogram.sum() == len(records)


def test_more_shards_than_files(world, tmp_path):
  _, _, records, _ = world
  total = sum(labeling.run_labeling(_config(world, tmp_path, shard_index=i, num_shards=4))
              ["num_images"] for i in range(4))
  assert total == len(records)
  assert len(glob.glob(str(tmp_path / "stats-*-of-00004.json"))) == 4


def test_rerun_after_crash_is_byte_identical(world, tmp_path):
  clean = tmp_path / "clean"
  labeling.run_labeling(_config(world, clean))
  crashed = tmp_path / "crashed"
  calls = []

  def crash_after_first(path):
    calls.append(path)
    raise KeyboardInterrupt("preempted")

  with pytest.raises(KeyboardInterrupt):
    labeling.run_labeling(_config(world, crashed), after_file=crash_after_first)
  assert len(_outputs(crashed)) == 1
  # A half-written file of a killed job, as atomic_path would leave it after SIGKILL.
  stale = crashed / f"{fileio.TMP_MARK}deadbeef-unlabeled-00001.tfrecord"
  stale.write_bytes(b"half")
  first = open(calls[0], "rb").read()
  done = []
  stats = labeling.run_labeling(_config(world, crashed), after_file=done.append)
  assert len(done) == 2                                        # the first file skipped
  assert open(calls[0], "rb").read() == first
  assert not stale.exists()
  for name in _outputs(clean):
    assert (clean / name).read_bytes() == (crashed / name).read_bytes(), name
  assert stats["num_images"] == len(world[2])


def test_temperature_top_k_and_half_precision(world, tmp_path):
  _, _, records, model = world
  pattern = str(world[0] / "unlabeled-00000.tfrecord")
  labeling.run_labeling(_config(world, tmp_path / "t", pattern=pattern, temperature=2.0,
                                storage="float16"))
  labeling.run_labeling(_config(world, tmp_path / "k", pattern=pattern,
                                soft_label_top_k=2))
  half = _outputs(tmp_path / "t")["unlabeled-00000.tfrecord"]
  top = _outputs(tmp_path / "k")["unlabeled-00000.tfrecord"]
  for h, k in zip(half, top):
    image = tf.io.decode_png(_features(h)[schema.ENCODED].bytes_list.value[0], channels=3)
    p = tf.nn.softmax(model(tf.cast(image, tf.float32)[None])[0]).numpy().astype(np.float64)
    q = np.sqrt(p) / np.sqrt(p).sum()                          # q ∝ p^(1/T), T = 2
    parsed = schema.parse_example(tf.constant(h), with_pseudo=True, num_classes=C)
    np.testing.assert_allclose(parsed["pseudo_probs"].numpy(), q, atol=2e-3)
    assert schema.PSEUDO_PROBS not in _features(h)
    kf = _features(k)
    assert list(kf[schema.PSEUDO_TOPK_INDICES].int64_list.value) == list(np.argsort(-p)[:2])
    np.testing.assert_allclose(kf[schema.PSEUDO_TOPK_VALUES].float_list.value,
                               np.sort(p)[::-1][:2], atol=1e-5)


def test_truncated_file_is_labelled_up_to_the_break(world, tmp_path):
  root, _, records, _ = world
  src = (root / "unlabeled-00002.tfrecord").read_bytes()
  broken = tmp_path / "in"
  broken.mkdir()
  (broken / "cut.tfrecord").write_bytes(src[:-20])              # last record truncated
  stats = labeling.run_labeling(_config(world, tmp_path / "out",
                                        pattern=str(broken / "*.tfrecord")))
  assert stats["num_images"] == PER_FILE[2] - 1
  assert stats["num_corrupt"] == 1
  entry = stats["corrupt_records"][0]
  assert entry["index"] == PER_FILE[2] - 1 and "unreadable" in entry["error"]
  assert len(_outputs(tmp_path / "out")) == 0                   # named cut.tfrecord
  assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "out" / "cut.tfrecord"))) == 3
  assert sorted(os.listdir(tmp_path / "out")) == [
      "_files", "cut.tfrecord", "stats-00000-of-00001.json"]


def test_bad_inputs_fail_before_work(world, tmp_path):
  root, _, _, _ = world
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="no files match"):
    labeling.run_labeling(_config(world, out, pattern=str(root / "nothing-*")))
  with pytest.raises(ValueError, match="predicts 5 classes, --num_classes says 10"):
    labeling.run_labeling(_config(world, out, num_classes=10))
  with pytest.raises(ValueError, match="out of range"):
    _config(world, out, shard_index=2, num_shards=2)
  with pytest.raises(ValueError, match="out of range"):
    _config(world, out, shard_index=-1, num_shards=2)
  with pytest.raises(ValueError, match="storage"):
    _config(world, out, storage="int8")
  assert not out.exists()
  pattern = str(root / "unlabeled-00000.tfrecord")
  labeling.run_labeling(_config(world, out, pattern=pattern))
  with pytest.raises(ValueError, match="other settings"):
    labeling.run_labeling(_config(world, out, pattern=pattern, temperature=0.5))


def test_record_helper_replaces_old_pseudo_keys():
  src = schema.image_features(b"bytes", "x")
  src.update(schema.pseudo_features([0.1, 0.9], storage="float32"))
  out = labeling.with_pseudo_label(schema.make_example(src).SerializeToString(),
                                   np.array([0.7, 0.3], np.float32), storage="float16",
                                   top_k=0)
  feats = _features(out)
  assert schema.PSEUDO_PROBS not in feats and feats[schema.PSEUDO_LABEL].int64_list.value == [0]
  assert feats[schema.ENCODED].bytes_list.value == [b"bytes"]
  assert set(feats.keys()) == set(src) - {schema.PSEUDO_PROBS} | {schema.PSEUDO_PROBS_F16}


_MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from noisy_student import labeling
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
labeling.run_labeling(labeling.LabelConfig(teacher=sys.argv[1], input_pattern=sys.argv[2],
                                           output_dir=sys.argv[3], batch_size=6), strategy)
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_default(world, tmp_path):
  """Two replicas (logical CPUs, a fresh process): same records, same soft labels."""
  import subprocess
  import sys
  root, teacher, _, _ = world
  labeling.run_labeling(_config(world, tmp_path / "one"))
  subprocess.run([sys.executable, "-c", _MIRRORED, teacher, str(root / "unlabeled-*"),
                  str(tmp_path / "two")], check=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
  assert one.keys() == two.keys()
  for name in one:
    assert len(one[name]) == len(two[name])
    for a, b in zip(one[name], two[name]):
      fa, fb = _features(a), _features(b)
      assert fa[schema.ID] == fb[schema.ID]
      np.testing.assert_allclose(fa[schema.PSEUDO_PROBS].float_list.value,
                                 fb[schema.PSEUDO_PROBS].float_list.value, atol=1e-6)
