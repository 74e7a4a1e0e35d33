"""Filter + balance (paper Sec. 3.1): pass-1 math on synthetic histograms, pass-2
streaming on tiny synthetic prediction files, and the command's errors."""
import collections
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from data import fileio
from data.input import pipeline

from data.records import schema
from noisy_student.common import job_io
from noisy_student.labeling import label_stats
from noisy_student.selection import samples
from noisy_student.selection import selector

NUM_CLASSES = 4


def _hist(rows):
  """rows: {class: {bin: count}} -> [NUM_CLASSES, 101]."""
  h = label_stats.new_histogram(NUM_CLASSES)
  for c, bins in rows.items():
    for b, n in bins.items():
      h[c, b] = n
  return h


# --------------------------------------------------------------------------- pass 1


def test_confidence_bins_follow_float32_values():
  conf = np.array([0.0, 0.005, 0.29, 0.3, 0.999, 1.0], np.float32)
  # Compared in float32: a confidence stored as 0.29 passes the threshold 0.29.
  np.testing.assert_array_equal(label_stats.confidence_bins(conf), [0, 0, 29, 30, 99, 100])
  below = np.nextafter(np.float32(0.29), np.float32(0))
  assert label_stats.confidence_bins([below, 1.5, -0.1]).tolist() == [28, 100, 0]


def test_thresholds_walk_down_from_one():
  h = _hist({0: {95: 50, 80: 100, 50: 200},   # count(>=0.80) = 150 >= K first
             1: {90: 10, 40: 20, 10: 500},    # never reaches K above 0.3: min_threshold
             2: {20: 30},                     # nothing above min_threshold
             3: {100: 120, 70: 5}})           # exactly K at 1.00
  plan = selector.plan_selection(h, selector.SelectionConfig(
      min_threshold=0.3, images_per_class=120))
  np.testing.assert_array_equal(plan.threshold_bin, [80, 30, 30, 100])
  np.testing.assert_array_equal(plan.count_before, [350, 530, 30, 125])
  np.testing.assert_array_equal(plan.count_kept, [150, 30, 0, 120])
  np.testing.assert_allclose(plan.copy_factor, [0.8, 4.0, 0.0, 1.0])
  np.testing.assert_allclose(plan.expected_after, [120, 120, 0, 120])


def test_threshold_is_highest_t_reaching_k_not_the_bin_with_k():
  # Counts spread over many bins: t* is where the cumulative count first reaches K.
  h = _hist({0: {b: 10 for b in range(101)}, 1: {}, 2: {}, 3: {}})
  plan = selector.plan_selection(h, selector.SelectionConfig(images_per_class=55))
  assert plan.threshold_bin[0] == 95  # bins 95..100 hold 60 >= 55; 96..100 hold 50.
  assert plan.count_kept[0] == 60
  assert plan.copy_factor[0] == pytest.approx(55 / 60)


def test_no_upsample_caps_factor_and_no_balance_is_plain_filter():
  h = _hist({0: {95: 50, 80: 100, 50: 200}, 1: {90: 10, 40: 20, 10: 500}, 2: {20: 30}})
  up = selector.plan_selection(h, selector.SelectionConfig(images_per_class=120,
                                                             upsample=False))
  np.testing.assert_allclose(up.copy_factor, [0.8, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(up.expected_after, [120, 30, 0, 0])
  flat = selector.plan_selection(h, selector.SelectionConfig(min_threshold=0.45,
                                                               balance=False))
  np.testing.assert_array_equal(flat.threshold_bin, [45] * NUM_CLASSES)
  np.testing.assert_array_equal(flat.count_kept, [350, 10, 0, 0])
  np.testing.assert_allclose(flat.copy_factor, [1, 1, 0, 0])


def test_config_errors():
  with pytest.raises(ValueError, match="images_per_class"):
    selector.SelectionConfig()
  with pytest.raises(ValueError, match="multiple of 0.01"):
    selector.SelectionConfig(min_threshold=0.305, balance=False)


def test_stochastic_rounding_is_unbiased_and_keyed_on_id():
  plan = selector.plan_selection(_hist({0: {90: 10}, 1: {90: 10}}),
                                  selector.SelectionConfig(images_per_class=25))
  ids = tf.constant([f"img{i}" for i in range(20000)])
  u = selector.record_uniforms(ids, seed=3).numpy()
  assert ((u >= 0) & (u < 1)).all()
  np.testing.assert_array_equal(u[:7], selector.record_uniforms(ids[:7], seed=3).numpy())
  assert not np.array_equal(u, selector.record_uniforms(ids, seed=4).numpy())
  copies = selector.num_copies(plan, np.zeros(20000), np.full(20000, 0.95, np.float32), u)
  assert set(np.unique(copies)) == {2, 3}                    # x = 2.5
  assert copies.mean() == pytest.approx(2.5, abs=0.02)
  assert plan.threshold_bin[0] == 30                         # K never reached
  below = selector.num_copies(plan, np.zeros(3), np.full(3, 0.29, np.float32), u[:3])
  np.testing.assert_array_equal(below, 0)


# --------------------------------------------------------------------------- pass 2


def _write_predictions(directory, per_file, seed=0, num_shards=1):
  """Prediction TFRecords + label stats; returns {serialized: (label, conf)}."""
  rng = np.random.default_rng(seed)
  records, files, hist = {}, [], label_stats.new_histogram(NUM_CLASSES)
  for f, n in enumerate(per_file):
    name = f"pred-{f:03d}.tfrecord"
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as w:
      for i in range(n):
        label = int(rng.integers(NUM_CLASSES))
        conf = float(rng.choice([0.2, 0.5, 0.75, 0.97]))
        probs = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
        probs[label] = conf
        feats = schema.image_features(rng.bytes(8), f"id-{f}-{i}")
        feats.update(schema.pseudo_features(probs, top_k=2))
        s = schema.make_example(feats).SerializeToString()
        w.write(s)
        records[s] = (label, np.float32(probs.max()))
        label_stats.accumulate(hist, [label], [np.float32(probs.max())])
    files.append({"input": f"in-{f}", "output": name, "num_images": n, "num_corrupt": 0})
  # Split files over `num_shards` label stats files, the histogram on shard 0.
  for i in range(num_shards):
    part = hist if i == 0 else np.zeros_like(hist)
    stats = label_stats.make_label_stats(shard_index=i, num_shards=num_shards,
                                         histogram=part, files=files[i::num_shards],
                                         corrupt=[], settings={})
    label_stats.write_label_stats(
        os.path.join(directory, label_stats.label_stats_name(i, num_shards)), stats)
  return records


def _read_outputs(directory):
  out = []
  for path in fileio.list_files(os.path.join(directory, "selected-*")):
    out.extend(r.numpy() for r in tf.data.TFRecordDataset(path))
  return out


def _run(pred, out, shard_index=0, num_shards=1, **kw):
  config = selector.SelectionConfig(
      images_per_class=kw.pop("k", 60), balance=kw.pop("balance", True),
      upsample=kw.pop("upsample", True), seed=kw.pop("seed", 7), min_threshold=0.3)
  job = selector.SelectJob(str(pred), str(out), shard_index, num_shards, **kw)
  return selector.run_selection(job, config, shard_files=pipeline.shard_files)


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
  d = tmp_path_factory.mktemp("pred")
  return d, _write_predictions(str(d), [90, 70, 80, 60])


def test_pass2_writes_source_bytes_with_planned_copies(predictions, tmp_path):
  pred, records = predictions
  summary = _run(pred, tmp_path / "sel", files_per_shard=2, shuffle_buffer=50)
  assert summary["complete"]
  outputs = _read_outputs(tmp_path / "sel")
  counts = collections.Counter(outputs)
  assert set(counts) <= set(records)                 # byte-for-byte source records
  plan = summary
  written = np.zeros(NUM_CLASSES, np.int64)
  for s, n in counts.items():
    label, conf = records[s]
    assert round(float(conf) * 100) >= plan["threshold"][label] * 100 - 1e-6
    written[label] += n
  assert written.tolist() == summary["actual_written"]
  # Pass 2 applies exactly the filter pass 1 counted (same confidence bins).
  assert summary["actual_above_threshold"] == plan["count_kept"]
  # The exact count, record by record: test_exact_written_count_from_per_record_draws.
  assert sum(summary["actual_read"]) == len(records)
  # Shuffled: not in input order.
  sources = [s for s in records if s in counts]
  assert [s for s in dict.fromkeys(outputs)] != sources
  assert os.path.getsize(tmp_path / "sel" / "selection.png") > 10000


def test_sharded_pass2_equals_single_job_and_reruns_identically(predictions, tmp_path):
  pred, _ = predictions
  _run(pred, tmp_path / "one")
  for i in range(3):
    _run(pred, tmp_path / "three", shard_index=i, num_shards=3)
  one = collections.Counter(_read_outputs(tmp_path / "one"))
  three = collections.Counter(_read_outputs(tmp_path / "three"))
  assert one == three                                  # same records, same copies
  before = {p: open(p, "rb").read() for p in fileio.list_files(str(tmp_path / "three/*"))}
  os.remove(tmp_path / "three" / selector.select_stats_name(1, 3))  # "crashed" shard 1
  _run(pred, tmp_path / "three", shard_index=1, num_shards=3)
  after = {p: open(p, "rb").read() for p in fileio.list_files(str(tmp_path / "three/*"))}
  assert {p for p in before} == {p for p in after}
  for p in before:
    if p.endswith(".tfrecord") or p.endswith(".png"):
      assert before[p] == after[p], p


def test_unfinished_selection_is_refused_and_plan_only_keeps_actual_counts(predictions,
                                                                           tmp_path):
  """A student must not read the files of shards that finished while others run, and a
  --plan_only look at a finished selection must not drop its actual counts."""
  pred, _ = predictions
  out = tmp_path / "sel"
  _run(pred, out, shard_index=0, num_shards=2)
  files = fileio.list_files(str(out / "selected-*"))
  assert files and not fileio.read_json(str(out / selector.SUMMARY))["complete"]
  with pytest.raises(ValueError, match=r"selection.json: the selection .* not complete"):
    selector.check_complete(files)
  _run(pred, out, shard_index=1, num_shards=2)
  files = fileio.list_files(str(out / "selected-*"))
  selector.check_complete(files)
  selector.check_complete([str(tmp_path / "elsewhere" / "x.tfrecord")])  # no summary: fine
  finished = fileio.read_json(str(out / selector.SUMMARY))
  assert finished["complete"] and "actual_written" in finished
  summary = _run(pred, out, shard_index=0, num_shards=2, plan_only=True)
  assert summary["actual_written"] == finished["actual_written"]
  assert fileio.read_json(str(out / selector.SUMMARY))["actual_written"] == (
      finished["actual_written"])


def test_no_balance_keeps_each_confident_record_once(predictions, tmp_path):
  pred, records = predictions
  summary = _run(pred, tmp_path / "flat", balance=False)
  outputs = _read_outputs(tmp_path / "flat")
  expected = {s for s, (_, conf) in records.items() if conf >= 0.3}
  assert collections.Counter(outputs) == collections.Counter(expected)
  assert summary["total_written"] == len(expected)


def test_no_upsample_never_duplicates(predictions, tmp_path):
  pred, _ = predictions
  _run(pred, tmp_path / "noup", k=70, upsample=False)
  outputs = _read_outputs(tmp_path / "noup")
  assert max(collections.Counter(outputs).values()) == 1


def test_errors(predictions, tmp_path):
  pred, _ = predictions
  with pytest.raises(ValueError, match="out of range"):
    _run(pred, tmp_path / "e", shard_index=2, num_shards=2)
  with pytest.raises(ValueError, match="no label stats"):
    _run(tmp_path, tmp_path / "e")
  with pytest.raises(ValueError, match="no files match"):
    _run(str(tmp_path / "nothing-*.tfrecord"), tmp_path / "e")
  partial = tmp_path / "partial"
  partial.mkdir()
  _write_predictions(str(partial), [5, 5], num_shards=2)
  os.remove(partial / label_stats.label_stats_name(1, 2))
  with pytest.raises(ValueError, match=r"shards \[1\] of 2 are missing"):
    _run(partial, tmp_path / "e")
  _run(pred, tmp_path / "s")
  with pytest.raises(ValueError, match="other settings"):
    _run(pred, tmp_path / "s", seed=8)


def test_pattern_must_match_stats_files(predictions, tmp_path):
  pred, _ = predictions
  summary = _run(str(pred / "pred-*.tfrecord"), tmp_path / "p", plan_only=True)
  assert summary["total_before"] == 300
  assert not os.path.exists(tmp_path / "p" / selector.select_stats_name(0, 1))
  with pytest.raises(ValueError, match="does not match the files the stats describe"):
    _run(str(pred / "pred-000.tfrecord"), tmp_path / "p")


# --------------------------------------------------------------------------- draws


def _draw(key, seed=7):
  """The documented per-record uniform: FarmHash64("<seed>:<key>") / 2^53."""
  bucket = tf.strings.to_hash_bucket_fast(f"{seed}:{key}", 2**53)
  return int(bucket) / 2.0**53


def _expected_copies(plan, label, conf, key, seed=7):
  """Copies of one record from the plan and its own draw, computed here."""
  if np.float32(conf) < np.float32(plan["threshold"][label]):
    return 0
  x = plan["copy_factor"][label]
  return int(np.floor(x)) + int(_draw(key, seed) < x - np.floor(x))


def _write_records(path, rows):
  """rows: (label, confidence, id or None, filename or None) -> a prediction file."""
  with tf.io.TFRecordWriter(str(path)) as w:
    for label, conf, image_id, filename in rows:
      feats = schema.image_features(b"x", image_id or "", filename=filename or "")
      if image_id is None:
        del feats[schema.ID]          # ImageNet TPU TFRecords carry no image/id at all
      if filename is None:
        del feats[schema.FILENAME]
      probs = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
      probs[label] = conf
      feats.update(schema.pseudo_features(probs, top_k=1))
      w.write(schema.make_example(feats).SerializeToString())


def _write_stats(directory, files, num_shards=1, settings=None):
  """Label stats for prediction files {name: rows}, all on shard 0's histogram."""
  hist = label_stats.new_histogram(NUM_CLASSES)
  entries = []
  for name, rows in files.items():
    _write_records(os.path.join(directory, name), rows)
    for label, conf, _, _ in rows:
      probs = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
      probs[label] = conf
      label_stats.accumulate(hist, [label], [np.float32(probs.max())])
    entries.append({"input": name, "output": name, "num_images": len(rows),
                    "num_corrupt": 0})
  for i in range(num_shards):
    stats = label_stats.make_label_stats(
        shard_index=i, num_shards=num_shards, histogram=hist if i == 0 else hist * 0,
        files=entries[i::num_shards], corrupt=[], settings=settings or {})
    label_stats.write_label_stats(
        os.path.join(directory, label_stats.label_stats_name(i, num_shards)), stats)


def test_exact_written_count_from_per_record_draws(predictions, tmp_path):
  pred, records = predictions
  summary = _run(pred, tmp_path / "sel", shuffle_buffer=50)
  expected = collections.Counter()
  per_class = np.zeros(NUM_CLASSES, np.int64)
  for s, (label, conf) in records.items():
    image_id = _features(s)[schema.ID].bytes_list.value[0].decode()
    n = _expected_copies(summary, label, conf, image_id)
    expected[s] = n
    per_class[label] += n
  assert collections.Counter(_read_outputs(tmp_path / "sel")) == +expected
  assert summary["actual_written"] == per_class.tolist()
  assert summary["total_written"] == sum(expected.values())


def _features(serialized):
  return tf.train.Example.FromString(serialized).features.feature


def test_records_without_id_get_their_own_draw(tmp_path):
  """Without image/id the draw is keyed on image/filename, else (file, index): a
  down-sampled class keeps about K images, not all or none of them."""
  pred = tmp_path / "pred"
  pred.mkdir()
  files = {"pred-000.tfrecord": [(0, 0.97, None, None)] * 300,
           "pred-001.tfrecord": [(0, 0.97, None, None)] * 230,
           "pred-002.tfrecord": [(1, 0.97, None, f"n{i}.JPEG") for i in range(200)]}
  _write_stats(str(pred), files)
  summary = _run(pred, tmp_path / "sel", k=40)
  expected = np.zeros(NUM_CLASSES, np.int64)
  for name, rows in files.items():
    for index, (label, conf, _, filename) in enumerate(rows):
      key = f"filename:{filename}" if filename else f"record:{name}:{index}"
      expected[label] += _expected_copies(summary, label, conf, key)
  assert summary["actual_written"] == expected.tolist()
  assert 20 <= expected[0] <= 60 and 20 <= expected[1] <= 60
  # Sharded pass 2 makes the same decisions (the key does not depend on the shard).
  for i in range(2):
    sharded = _run(pred, tmp_path / "two", shard_index=i, num_shards=2, k=40)
  assert sharded["actual_written"] == expected.tolist()


def test_duplicate_ids_are_rejected_naming_id_and_files(tmp_path):
  pred = tmp_path / "pred"
  pred.mkdir()
  rows = [(0, 0.97, f"id-{i}", None) for i in range(20)]
  _write_stats(str(pred), {"a.tfrecord": rows, "b.tfrecord": rows[5:6]})
  with pytest.raises(ValueError, match=r"'id-5'.*a\.tfrecord.*b\.tfrecord"):
    _run(pred, tmp_path / "one", k=5)
  assert not [f for f in os.listdir(tmp_path / "one") if f.endswith(".tfrecord")]
  # In different pass-2 shards: found once both shards are done.
  _run(pred, tmp_path / "two", shard_index=0, num_shards=2, k=5)
  with pytest.raises(ValueError, match=r"'id-5'.*a\.tfrecord.*b\.tfrecord"):
    _run(pred, tmp_path / "two", shard_index=1, num_shards=2, k=5)
  # Two records of one file keyed by the same filename are duplicates too.
  same = tmp_path / "same"
  same.mkdir()
  _write_stats(str(same), {"c.tfrecord": [(0, 0.97, None, "x.JPEG")] * 2})
  with pytest.raises(ValueError, match=r"filename 'x\.JPEG'.*c\.tfrecord"):
    _run(same, tmp_path / "s", k=1)


# --------------------------------------------------------------------------- reruns


def test_stale_label_stats_of_another_shard_count_are_refused(tmp_path):
  pred = tmp_path / "pred"
  pred.mkdir()
  rows = [(0, 0.97, f"id-{i}", None) for i in range(10)]
  _write_stats(str(pred), {"a.tfrecord": rows, "b.tfrecord": rows[:0]}, num_shards=1)
  _write_stats(str(pred), {"a.tfrecord": rows, "b.tfrecord": rows[:0]}, num_shards=2)
  with pytest.raises(ValueError, match=r"two labelling runs.*1 and 2 shards"):
    _run(pred, tmp_path / "sel", k=5)
  # With the labelling run's settings file, the stats that do not belong to it are named.
  fileio.write_json_atomic(str(pred / label_stats.LABEL_SETTINGS),
                           {"format": label_stats.LABEL_SETTINGS_FORMAT,
                            "settings": {}, "num_shards": 2})
  with pytest.raises(ValueError, match=r"stats-00000-of-00001\.json.*1 shards.*2"):
    _run(pred, tmp_path / "sel", k=5)


def test_sharpened_predictions_are_refused(tmp_path):
  pred = tmp_path / "pred"
  pred.mkdir()
  _write_stats(str(pred), {"a.tfrecord": [(0, 0.97, "x", None)]},
               settings={"temperature": 0.5})
  with pytest.raises(ValueError, match=r"temperature 0\.5.*teacher_temperature"):
    _run(pred, tmp_path / "sel", k=5)


def test_rerun_with_other_shard_counts_is_refused(predictions, tmp_path):
  pred, _ = predictions
  out = tmp_path / "sel"
  _run(pred, out)
  before = sorted(os.listdir(out))
  for kw in (dict(num_shards=2), dict(files_per_shard=2), dict(shuffle_buffer=3),
             dict(k=61)):
    with pytest.raises(ValueError, match="other settings"):
      _run(pred, out, **kw)
  assert sorted(os.listdir(out)) == before
  # A directory from before the settings file: stale outputs of other shard counts.
  os.remove(out / selector.SELECT_SETTINGS)
  with pytest.raises(ValueError, match=r"selected-00000-of-00001\.tfrecord"):
    _run(pred, out, num_shards=2)


def test_empty_selection_is_an_error(tmp_path):
  pred = tmp_path / "pred"
  pred.mkdir()
  _write_stats(str(pred), {"a.tfrecord": [(0, 0.2, f"id-{i}", None) for i in range(9)]})
  with pytest.raises(selector.EmptySelectionError, match="0 of 9 predictions"):
    _run(pred, tmp_path / "sel", k=5)
  with pytest.raises(selector.EmptySelectionError):
    _run(pred, tmp_path / "plan", k=5, plan_only=True)
  assert os.path.exists(tmp_path / "plan" / "selection.json")   # to look at why
  # Kept records whose stochastic rounding writes no copy at all: also an error.
  ids = [f"id-{i}" for i in range(100) if _draw(f"id-{i}") >= 0.1][:10]
  none = tmp_path / "none"
  none.mkdir()
  _write_stats(str(none), {"a.tfrecord": [(0, 0.97, i, None) for i in ids]})
  with pytest.raises(selector.EmptySelectionError, match="wrote 0 records"):
    _run(none, tmp_path / "s", k=1)                     # x = 0.1 for each of the 10


def test_same_host_name_in_another_pid_namespace_is_judged_by_age(tmp_path):
  """A container sharing this host name has pids of its own: its live job's temporary
  must not be taken for a dead one here (the owner tag hashes the PID namespace and the
  boot too), so it goes only once it is older than STALE_AFTER_SECONDS."""
  import hashlib
  import socket
  assert os.readlink("/proc/self/ns/pid") in job_io._process_space()  # noqa: SLF001
  name_only = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
  assert job_io.owner_tag().split(".")[0] != name_only
  other = tmp_path / f"{fileio.TMP_MARK}{name_only}.{_dead_pid()}.0a1b2c3d-selection.json"
  other.write_text("{}")
  assert not job_io.is_stale(str(other))
  assert job_io.is_stale(str(other), now=time.time() + job_io.STALE_AFTER_SECONDS + 1)


def test_killed_runs_temporaries_are_removed_and_live_ones_kept(predictions, tmp_path):
  pred, _ = predictions
  out = tmp_path / "sel"
  out.mkdir()
  dead = out / f"{fileio.TMP_MARK}{job_io.owner_tag(pid=_dead_pid())}.0a1b2c3d-" \
               "selected-00000-of-00001.tfrecord"
  old = out / f"{fileio.TMP_MARK}deadbeef-selected-00000-of-00001.tfrecord"
  live = out / f"{fileio.TMP_MARK}{job_io.owner_tag()}.0a1b2c3d-selection.json"
  foreign = out / f"{fileio.TMP_MARK}00000000.1.0a1b2c3d-selected-00000-of-00001.tfrecord"
  for p in (dead, old, live, foreign):
    p.write_bytes(b"")
  long_ago = time.time() - 2 * job_io.STALE_AFTER_SECONDS
  os.utime(old, (long_ago, long_ago))
  _run(pred, out)
  left = sorted(os.listdir(out))
  assert dead.name not in left and old.name not in left
  assert live.name in left and foreign.name in left      # may belong to a live job
  assert [f for f in fileio.list_files(str(out / "selected-*"))] == [
      str(out / "selected-00000-of-00001.tfrecord")]


def _dead_pid():
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(proc.stdout)


# --------------------------------------------------------------------------- samples.png


def _write_images(path, rows):
  """rows: (pseudo label, confidence, hidden label) -> prediction records with PNGs."""
  rng = np.random.default_rng(3)
  with tf.io.TFRecordWriter(str(path)) as w:
    for i, (label, conf, hidden) in enumerate(rows):
      image = rng.integers(0, 256, [12, 20, 3], dtype=np.uint8)
      feats = schema.image_features(tf.io.encode_png(image).numpy(), f"img-{i}",
                                    hidden_label=hidden)
      probs = np.full(NUM_CLASSES, (1 - conf) / (NUM_CLASSES - 1))
      probs[label] = conf
      feats.update(schema.pseudo_features(probs, top_k=1))
      w.write(schema.make_example(feats).SerializeToString())


def test_shown_classes_cap_rows_and_keep_both_ends():
  assert samples.shown_classes(4) == [0, 1, 2, 3]
  rows = samples.shown_classes(1000)
  assert len(rows) == samples.MAX_ROWS and rows[0] == 0 and rows[-1] == 999


def test_samples_png_has_one_row_per_class_of_distinct_selected_images(tmp_path):
  """Written by the shard that completes the selector, from the selected records: up
  to 8 distinct images per class (upsampled copies count once)."""
  pred = tmp_path / "pred"
  pred.mkdir()
  # Class 0: 12 images, class 1: 3 (upsampled to K), class 2: 1, class 3: none.
  rows = [(0, 0.9, 0)] * 12 + [(1, 0.8, 0)] * 3 + [(2, 0.7, 2)]
  _write_images(pred / "p.tfrecord", rows)
  hist = label_stats.new_histogram(NUM_CLASSES)
  for label, conf, _ in rows:
    label_stats.accumulate(hist, [label], [np.float32(conf)])
  label_stats.write_label_stats(str(pred / label_stats.label_stats_name(0, 1)),
                                label_stats.make_label_stats(
                                    shard_index=0, num_shards=1, histogram=hist,
                                    files=[{"input": "p", "output": "p.tfrecord",
                                            "num_images": len(rows), "num_corrupt": 0}],
                                    corrupt=[], settings={}))
  summary = _run(pred, tmp_path / "sel", k=10, upsample=True)
  assert summary["samples_png"] == {"classes": [0, 1, 2, 3], "images": [8, 3, 1, 0]}
  png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "sel" / "samples.png"))).numpy()
  cell = samples.THUMB + samples._PAD  # noqa: SLF001
  assert png.shape[0] == NUM_CLASSES * cell + 70          # one row per class + title
  # Not written by --plan_only (nothing selected yet).
  _run(pred, tmp_path / "plan", k=10, plan_only=True)
  assert not (tmp_path / "plan" / "samples.png").exists()


def test_samples_stop_reading_once_every_class_is_full(tmp_path):
  _write_images(tmp_path / "a.tfrecord", [(c % 2, 0.9, -1) for c in range(20)])
  rows = samples.read_samples(
      [str(tmp_path / "a.tfrecord"), str(tmp_path / "never-read.tfrecord")], [0, 1],
      per_class=8)
  assert [len(r) for r in rows.values()] == [8, 8]
  assert all(s["image"].shape == (38, 64, 3) for r in rows.values() for s in r)
  # A class that never fills: reading goes on to the (missing) second file.
  with pytest.raises(tf.errors.NotFoundError):
    samples.read_samples(
        [str(tmp_path / "a.tfrecord"), str(tmp_path / "never-read.tfrecord")], [0, 2])


def test_samples_hidden_labels_are_made_zero_based_by_the_label_offset(tmp_path):
  """Hidden labels keep the stored labels' base; samples.png frames an image green when
  its pseudo label equals the 0-based hidden label, so 1-based files need the offset."""
  _write_images(tmp_path / "a.tfrecord", [(0, 0.9, 1), (1, 0.9, 1), (0, 0.9, -1)])
  rows = samples.read_samples([str(tmp_path / "a.tfrecord")], [0, 1], label_offset=1)
  assert [s["hidden_label"] for s in rows[0]] == [0, -1]  # -1 (none) stays -1
  assert [s["hidden_label"] for s in rows[1]] == [0]
  plain = samples.read_samples([str(tmp_path / "a.tfrecord")], [0, 1])
  assert [s["hidden_label"] for s in plain[0]] == [1, -1]


# --------------------------------------------------------------------------- the command


def _select_command(pred, out, env_index, *flags):
  import subprocess
  import sys
  from data.records import shards
  env = {k: v for k, v in os.environ.items() if k not in shards.INDEX_VARIABLES}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", **env_index)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return subprocess.run(
      [sys.executable, "-m", "noisy_student.select", f"--predictions={pred}",
       f"--output_dir={out}", "--images_per_class=60", *flags], cwd=repo, env=env,
      capture_output=True, text=True, timeout=600)


def test_shard_index_auto_takes_the_schedulers_index(predictions, tmp_path):
  """A Kubernetes Indexed Job's pod 1 of 2 selects shard 1; an index beyond the shard
  count, or none at all, is a one-line error."""
  pred, _ = predictions
  out = tmp_path / "sel"
  result = _select_command(pred, out, {"JOB_COMPLETION_INDEX": "1"}, "--shard_index=auto",
                           "--num_shards=2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in out.glob("select-stats-*")) == [
      selector.select_stats_name(1, 2)]
  result = _select_command(pred, out, {"SLURM_ARRAY_TASK_ID": "2"}, "--shard_index=auto",
                           "--num_shards=2")
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert last == ("noisy_student.select: error: --shard_index=auto (SLURM_ARRAY_TASK_ID): "
                  "shard index 2 out of range for num_shards 2"), last
