"""Sharded teacher inference on tiny TFRecords with a tiny Keras teacher: coverage,
byte-for-byte records, resumption after a crash, corrupt records and bad inputs."""
import dataclasses
import glob
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import fileio
from data.records import schema
from noisy_student.common import job_io
from noisy_student.common import model_io
from noisy_student.labeling import label_stats
from noisy_student.labeling import labeller

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
  return labeller.LabelConfig(teacher=kw.pop("teacher", teacher),
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
  stats = [labeller.run_labeling(_config(world, tmp_path, shard_index=i, num_shards=2))
           for i in range(2)]
  outputs = _outputs(tmp_path)
  assert sorted(outputs) == [f"unlabeled-{f:05d}.tfrecord" for f in range(3)]
  ids = [_features(s)[schema.ID].bytes_list.value[0].decode()
         for recs in outputs.values() for s in recs]
  assert sorted(ids) == sorted(records)                       # each exactly once
  assert sum(s["num_images"] for s in stats) == len(records)
  assert sorted(f["output"] for s in stats for f in s["files"]) == sorted(outputs)
  hist = label_stats.new_histogram(C)
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
      label_stats.accumulate(hist, [out[schema.PSEUDO_LABEL].int64_list.value[0]],
                             [out[schema.PSEUDO_CONFIDENCE].float_list.value[0]])
  np.testing.assert_array_equal(np.sum([s["histogram"] for s in stats], axis=0), hist)
  corrupt = [c for s in stats for c in s["corrupt_records"]]
  assert sum(s["num_corrupt"] for s in stats) == 2
  assert [(os.path.basename(c["file"]), c["index"], c["id"]) for c in corrupt] == [
      ("unlabeled-00001.tfrecord", 4, "bad-image"), ("unlabeled-00001.tfrecord", 5, "")]
  # The selection step reads these stats as they are.
  assert label_stats.read_label_stats(str(tmp_path)).histogram.sum() == len(records)


def test_more_shards_than_files(world, tmp_path):
  _, _, records, _ = world
  total = sum(labeller.run_labeling(_config(world, tmp_path, shard_index=i, num_shards=4))
              ["num_images"] for i in range(4))
  assert total == len(records)
  assert len(glob.glob(str(tmp_path / "stats-*-of-00004.json"))) == 4


def test_rerun_after_crash_is_byte_identical(world, tmp_path):
  clean = tmp_path / "clean"
  labeller.run_labeling(_config(world, clean))
  crashed = tmp_path / "crashed"
  calls = []

  def crash_after_first(path):
    calls.append(path)
    raise KeyboardInterrupt("preempted")

  with pytest.raises(KeyboardInterrupt):
    labeller.run_labeling(_config(world, crashed), after_file=crash_after_first)
  assert len(_outputs(crashed)) == 1
  # A half-written file of a killed job, as atomic_path would leave it after SIGKILL.
  stale = crashed / f"{fileio.TMP_MARK}deadbeef-unlabeled-00001.tfrecord"
  stale.write_bytes(b"half")
  long_ago = time.time() - 2 * job_io.STALE_AFTER_SECONDS
  os.utime(stale, (long_ago, long_ago))
  # Another host's job may be writing this one right now: left alone.
  live = crashed / f"{fileio.TMP_MARK}00000000.1.0a1b2c3d-unlabeled-00002.tfrecord"
  live.write_bytes(b"in progress")
  first = open(calls[0], "rb").read()
  done = []
  stats = labeller.run_labeling(_config(world, crashed), after_file=done.append)
  assert len(done) == 2                                        # the first file skipped
  assert open(calls[0], "rb").read() == first
  assert not stale.exists() and live.exists()
  for name in _outputs(clean):
    assert (clean / name).read_bytes() == (crashed / name).read_bytes(), name
  assert stats["num_images"] == len(world[2])


def test_t1_distribution_top_k_and_half_precision(world, tmp_path):
  """The stored soft label is the teacher's T = 1 distribution: the one temperature is
  the trainer's --teacher_temperature (selection filters on T = 1 confidence)."""
  _, _, records, model = world
  pattern = str(world[0] / "unlabeled-00000.tfrecord")
  assert "temperature" not in {f.name for f in dataclasses.fields(labeller.LabelConfig)}
  stats = labeller.run_labeling(_config(world, tmp_path / "t", pattern=pattern,
                                        storage="float16"))
  assert stats["settings"]["temperature"] == 1.0
  labeller.run_labeling(_config(world, tmp_path / "k", pattern=pattern,
                                soft_label_top_k=2))
  half = _outputs(tmp_path / "t")["unlabeled-00000.tfrecord"]
  top = _outputs(tmp_path / "k")["unlabeled-00000.tfrecord"]
  for h, k in zip(half, top):
    image = tf.io.decode_png(_features(h)[schema.ENCODED].bytes_list.value[0], channels=3)
    p = tf.nn.softmax(model(tf.cast(image, tf.float32)[None])[0]).numpy().astype(np.float64)
    parsed = schema.parse_example(tf.constant(h), with_pseudo=True, num_classes=C)
    np.testing.assert_allclose(parsed["pseudo_probs"].numpy(), p, atol=2e-3)
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
  stats = labeller.run_labeling(_config(world, tmp_path / "out",
                                        pattern=str(broken / "*.tfrecord")))
  assert stats["num_images"] == PER_FILE[2] - 1
  assert stats["num_corrupt"] == 1
  entry = stats["corrupt_records"][0]
  assert entry["index"] == PER_FILE[2] - 1 and "unreadable" in entry["error"]
  assert len(_outputs(tmp_path / "out")) == 0                   # named cut.tfrecord
  assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "out" / "cut.tfrecord"))) == 3
  assert sorted(os.listdir(tmp_path / "out")) == [
      "_files", "cut.tfrecord", label_stats.LABEL_SETTINGS, "stats-00000-of-00001.json"]


def test_bad_inputs_fail_before_work(world, tmp_path):
  root, _, _, _ = world
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="no files match"):
    labeller.run_labeling(_config(world, out, pattern=str(root / "nothing-*")))
  with pytest.raises(ValueError, match="predicts 5 classes, --num_classes says 10"):
    labeller.run_labeling(_config(world, out, num_classes=10))
  with pytest.raises(ValueError, match="out of range"):
    _config(world, out, shard_index=2, num_shards=2)
  with pytest.raises(ValueError, match="out of range"):
    _config(world, out, shard_index=-1, num_shards=2)
  with pytest.raises(ValueError, match="storage"):
    _config(world, out, storage="int8")
  assert not out.exists()
  pattern = str(root / "unlabeled-00000.tfrecord")
  labeller.run_labeling(_config(world, out, pattern=pattern))
  with pytest.raises(ValueError, match="other settings"):
    labeller.run_labeling(_config(world, out, pattern=pattern, storage="float16"))


def test_multi_worker_strategy_is_refused(world, tmp_path):
  """Each worker would read part of the distributed rows but all of every file's records."""
  strategy = object.__new__(tf.distribute.MultiWorkerMirroredStrategy)
  with pytest.raises(ValueError, match="runs on one host.*--num_shards"):
    labeller.run_labeling(_config(world, tmp_path / "out"), strategy)
  assert not (tmp_path / "out").exists()


def test_non_finite_teacher_output_names_the_record(world, tmp_path):
  """A diverged teacher's NaN would otherwise bin as confidence 1.00 and class 0."""
  inputs = keras.Input([SIZE, SIZE, 3])
  x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
  head = keras.layers.Dense(C)
  model = keras.Model(inputs, head(x))
  head.kernel.assign(np.full([3, C], np.nan, np.float32))
  teacher = str(tmp_path / "nan_teacher")
  model_io.save_model(model, teacher, {"num_classes": C, "image_size": SIZE,
                                       "small_image": True})
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=r"unlabeled-00000\.tfrecord: record 0 \(id "
                     r"'img-0-0'\): the teacher .* non-finite"):
    labeller.run_labeling(_config(world, out, teacher=teacher,
                                  pattern=str(world[0] / "unlabeled-00000.tfrecord")))
  assert _outputs(out) == {}  # Nothing half-written under the output name.
  with pytest.raises(ValueError, match="non-finite confidence"):
    label_stats.confidence_bins([0.5, np.nan])


def test_record_helper_replaces_old_pseudo_keys():
  src = schema.image_features(b"bytes", "x")
  src.update(schema.pseudo_features([0.1, 0.9], storage="float32"))
  out = labeller.with_pseudo_label(schema.make_example(src).SerializeToString(),
                                   np.array([0.7, 0.3], np.float32), storage="float16",
                                   top_k=0)
  feats = _features(out)
  assert schema.PSEUDO_PROBS not in feats and feats[schema.PSEUDO_LABEL].int64_list.value == [0]
  assert feats[schema.ENCODED].bytes_list.value == [b"bytes"]
  assert set(feats.keys()) == set(src) - {schema.PSEUDO_PROBS} | {schema.PSEUDO_PROBS_F16}


# --------------------------------------------------------------------------- reruns


def test_rerun_with_other_shard_count_or_teacher_is_refused(world, tmp_path):
  """The output directory is pinned to its settings (label-settings.json): stats of
  another shard count would be summed with this run's by noisy_student.select."""
  root, _, _, _ = world
  out = tmp_path / "out"
  labeller.run_labeling(_config(world, out, shard_index=0, num_shards=2))
  with pytest.raises(ValueError, match=r"other settings.*num_shards: 2 .*4"):
    labeller.run_labeling(_config(world, out, shard_index=3, num_shards=4))
  other = _save_teacher(tmp_path / "other", dropout=0.5)
  with pytest.raises(ValueError, match=r"other settings.*teacher"):
    labeller.run_labeling(_config(world, out, shard_index=1, num_shards=2, teacher=other))
  with pytest.raises(ValueError, match=r"other settings.*input_files"):
    labeller.run_labeling(_config(world, out, shard_index=1, num_shards=2,
                                  pattern=str(root / "unlabeled-0000[01].tfrecord")))
  assert sorted(glob.glob(str(out / "stats-*"))) == [str(out / "stats-00000-of-00002.json")]
  labeller.run_labeling(_config(world, out, shard_index=1, num_shards=2))  # same: fine
  # A directory labelled before the settings file existed: its stats name the run.
  os.remove(out / label_stats.LABEL_SETTINGS)
  with pytest.raises(ValueError, match=r"stats-00000-of-00002\.json"):
    labeller.run_labeling(_config(world, out, shard_index=0, num_shards=4))


def test_second_job_on_the_same_shard_keeps_the_first_ones_temporary(world, tmp_path,
                                                                      monkeypatch):
  """Two jobs on one shard (a retried task while the first still runs): both finish,
  and the outputs are those of a single job (the last rename wins, same bytes)."""
  clean = tmp_path / "clean"
  labeller.run_labeling(_config(world, clean))
  out = tmp_path / "out"
  original, second = labeller._Sink._open, []  # noqa: SLF001

  def open_then_run_a_second_job(self, k):
    original(self, k)                  # the first job now writes file k's temporary
    if k == 1 and not second:
      second.append(labeller.run_labeling(_config(world, out)))

  monkeypatch.setattr(labeller._Sink, "_open", open_then_run_a_second_job)  # noqa: SLF001
  first = labeller.run_labeling(_config(world, out))
  assert second and first["num_images"] == second[0]["num_images"] == len(world[2])
  for name in _outputs(clean):
    assert (clean / name).read_bytes() == (out / name).read_bytes(), name
  assert not [f for f in os.listdir(out) if fileio.is_temporary(f)]


# --------------------------------------------------------------------------- the teacher


def _save_teacher(path, *, dropout=0.0, batch_norm=False):
  inputs = keras.Input([SIZE, SIZE, 3])
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(8, 3, activation="relu")(x)
  if batch_norm:
    bn = keras.layers.BatchNormalization()
    x = bn(x)
    # Moving statistics far from any batch's: training-mode BN would change the output.
    bn.moving_mean.assign(np.full([8], 0.5, np.float32))
    bn.moving_variance.assign(np.full([8], 4.0, np.float32))
  x = keras.layers.GlobalAveragePooling2D()(x)
  if dropout:
    x = keras.layers.Dropout(dropout)(x)
  model = keras.Model(inputs, keras.layers.Dense(C)(x))
  model_io.save_model(model, str(path), {"num_classes": C, "image_size": SIZE,
                                         "small_image": True})
  return str(path)


def _probs(out, name="unlabeled-00000.tfrecord"):
  return np.array([_features(s)[schema.PSEUDO_PROBS].float_list.value
                   for s in _outputs(out)[name]])


def _images(world, name="unlabeled-00000.tfrecord"):
  return tf.stack([tf.cast(tf.io.decode_png(_features(r.numpy())[schema.ENCODED]
                                            .bytes_list.value[0], channels=3), tf.float32)
                   for r in tf.data.TFRecordDataset(str(world[0] / name))])


def test_teacher_labels_in_inference_mode_and_noised_adds_dropout(world, tmp_path):
  teacher = _save_teacher(tmp_path / "dropout", dropout=0.9, batch_norm=True)
  pattern = str(world[0] / "unlabeled-00000.tfrecord")
  runs = {name: labeller.run_labeling(_config(world, tmp_path / name, teacher=teacher,
                                              pattern=pattern, noised=noised))
          for name, noised in (("clean", False), ("noised1", True), ("noised2", True))}
  assert [s["num_images"] for s in runs.values()] == [PER_FILE[0]] * 3
  model, _ = model_io.load_model(teacher)
  images = _images(world)
  inference = tf.nn.softmax(model(images, training=False)).numpy()
  training = tf.nn.softmax(model(images, training=True)).numpy()
  assert np.abs(training - inference).max() > 1e-2          # the check can tell them apart
  np.testing.assert_allclose(_probs(tmp_path / "clean"), inference, atol=1e-5)
  # --noised: dropout on, so labels differ from the clean ones and from run to run.
  assert np.abs(_probs(tmp_path / "noised1") - inference).max() > 1e-2
  assert np.abs(_probs(tmp_path / "noised1") - _probs(tmp_path / "noised2")).max() > 1e-2


def test_noised_keeps_batch_norm_in_inference_mode(world, tmp_path):
  teacher = _save_teacher(tmp_path / "bn", batch_norm=True)
  pattern = str(world[0] / "unlabeled-00000.tfrecord")
  labeller.run_labeling(_config(world, tmp_path / "noised", teacher=teacher,
                                pattern=pattern, noised=True))
  model, _ = model_io.load_model(teacher)
  images = _images(world)
  inference = tf.nn.softmax(model(images, training=False)).numpy()
  assert np.abs(tf.nn.softmax(model(images, training=True)).numpy()
                - inference).max() > 1e-2
  np.testing.assert_allclose(_probs(tmp_path / "noised"), inference, atol=1e-5)


# --------------------------------------------------------------------------- the command

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(world, out, *flags):
  root, teacher, _, _ = world
  return [sys.executable, "-m", "noisy_student.label", f"--teacher={teacher}",
          f"--input_pattern={root / 'unlabeled-*'}", f"--output_dir={out}",
          "--batch_size=4", *flags]


def _one_line_error(result):
  lines = result.stderr.strip().splitlines()
  assert result.returncode != 0 and lines, result
  assert "Traceback" not in result.stderr, result.stderr
  return lines[-1]


def test_command_errors_are_one_line(world, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(_command(world, tmp_path / "t", "--temperature=2"), cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
  line = _one_line_error(result)
  assert "--teacher_temperature" in line and "noisy_student.train" in line, line
  # --temperature=1.0 (what older drivers pass) is accepted; an empty pattern is not.
  root = world[0]
  result = subprocess.run(
      _command(world, tmp_path / "e", "--temperature=1.0")[:-2]
      + [f"--input_pattern={root / 'nothing-*'}", "--batch_size=4"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert "no files match" in _one_line_error(result)
  assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()


def test_shard_index_auto_without_a_scheduler_is_one_line(world, tmp_path):
  from data.records import shards
  env = {k: v for k, v in os.environ.items() if k not in shards.INDEX_VARIABLES}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  result = subprocess.run(_command(world, tmp_path / "a", "--shard_index=auto",
                                   "--num_shards=2"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  line = _one_line_error(result)
  assert line.startswith("noisy_student.label: error: --shard_index=auto: none of "
                         "JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID"), line
  assert not (tmp_path / "a").exists()


def test_closed_stdout_does_not_stop_the_job(world, tmp_path):
  """An orphaned job whose reader went away: its progress and messages fail to write
  (EPIPE); the labelling goes on and finishes."""
  out = tmp_path / "out"
  proc = subprocess.Popen(_command(world, out), cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  proc.stdout.close()                                  # the reader is gone
  try:
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  if rc != 0:  # Its output went nowhere: rerun it with the output kept, to show why.
    again = subprocess.run(_command(world, tmp_path / "again"), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    pytest.fail(f"exit {rc} with its output pipe closed; with the output kept: exit "
                f"{again.returncode}, {again.stdout[-1500:]}{again.stderr[-1500:]}")
  assert len(_outputs(out)) == len(PER_FILE)
  assert fileio.read_json(str(out / "stats-00000-of-00001.json"))["num_images"] == \
      len(world[2])


_MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from noisy_student.labeling import labeller
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
labeller.run_labeling(labeller.LabelConfig(teacher=sys.argv[1], input_pattern=sys.argv[2],
                                           output_dir=sys.argv[3], batch_size=6), strategy)
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_default(world, tmp_path):
  """Two replicas (logical CPUs, a fresh process): same records, same soft labels."""
  import subprocess
  import sys
  root, teacher, _, _ = world
  labeller.run_labeling(_config(world, tmp_path / "one"))
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
