"""Input pipelines: exactly-once eval with padding, sharding, determinism, batch layout."""
import math

import numpy as np
import pytest
import tensorflow as tf

from data.input import pipeline
from data.input.preprocessing import PreprocessConfig
from data.records import schema

C = 4
TRAIN = PreprocessConfig(8, mode="small", augment="standard", pad_crop=2)
EVAL = PreprocessConfig(8, mode="small", augment="none")


def _png(value_seed):
  rng = np.random.default_rng(value_seed)
  return tf.io.encode_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).numpy()


def _write(path, rows):
  with tf.io.TFRecordWriter(str(path)) as w:
    for row in rows:
      w.write(schema.make_example(row).SerializeToString())


def _probs(i):
  p = np.full(C, 0.1, np.float32)
  p[(i + 1) % C] = 0.7
  return p


@pytest.fixture
def data_dir(tmp_path):
  """20 labeled images over 3 files (7, 7, 6), label i % 4; 12 pseudo-labelled and 12
  plain unlabeled images over 2 files each."""
  ids = [f"img/{i:03d}" for i in range(20)]
  for f, chunk in enumerate((range(0, 7), range(7, 14), range(14, 20))):
    _write(tmp_path / f"train-{f:05d}-of-00003.tfrecord",
           [schema.image_features(_png(i), ids[i], i % C) for i in chunk])
  for f, chunk in enumerate((range(100, 106), range(106, 112))):
    pseudo, plain = [], []
    for i in chunk:
      features = schema.image_features(_png(i), f"u/{i}", hidden_label=i % C)
      plain.append(dict(features))
      features.update(schema.pseudo_features(_probs(i)))
      pseudo.append(features)
    _write(tmp_path / f"pseudo-{f:05d}-of-00002.tfrecord", pseudo)
    _write(tmp_path / f"unlabeled-{f:05d}-of-00002.tfrecord", plain)
  return tmp_path


def _context(pipelines, index, replicas=None):
  return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=index,
                                    num_replicas_in_sync=replicas or pipelines)


def _real_ids(ds):
  out = []
  for batch in ds:
    out += [i.decode() for i, m in zip(batch["id"].numpy(), batch["mask"].numpy()) if m]
  return out


# ------------------------------------------------------------------------------ files


def test_shard_files_covers_every_file_once():
  files = [f"f{i}" for i in range(7)]
  shards = [pipeline.shard_files(files[::-1], i, 3) for i in range(3)]
  assert shards == [["f0", "f3", "f6"], ["f1", "f4"], ["f2", "f5"]]
  assert pipeline.shard_files(files, 8, 10) == []
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.shard_files(files, 3, 3)


def test_empty_pattern_is_an_error_naming_it(data_dir):
  pattern = str(data_dir / "nothing-*")
  for make in (
      lambda: pipeline.eval_dataset(pattern, global_batch_size=4, preprocess=EVAL,
                                    num_classes=C),
      lambda: pipeline.train_dataset(pattern, global_batch_size=4, preprocess=TRAIN,
                                     num_classes=C),
      lambda: pipeline.labeled_unlabeled_dataset(
          str(data_dir / "train-*"), pattern, labeled_batch_size=4, unlabeled_ratio=1,
          preprocess=TRAIN, num_classes=C)):
    with pytest.raises(ValueError, match="nothing-"):
      make()


# ------------------------------------------------------------------------------- eval


def test_eval_visits_every_example_once_with_padding_and_mask(data_dir):
  ds = pipeline.eval_dataset(str(data_dir / "train-*"), global_batch_size=6,
                             preprocess=TRAIN, num_classes=C, keep_encoded=True)
  batches = list(ds)
  assert len(batches) == 4
  assert [b["mask"].numpy().tolist() for b in batches][-1] == [1, 1, 0, 0, 0, 0]
  assert _real_ids(batches) == [f"img/{i:03d}" for i in range(20)]  # File order.
  last = batches[-1]
  assert last["image"].shape == (6, 8, 8, 3) and last["image"].dtype == tf.float32
  assert last["label"].numpy().tolist() == [2, 3, -1, -1, -1, -1]
  assert last["ok"].numpy().tolist() == [1, 1, 0, 0, 0, 0]
  assert last["encoded"].numpy()[0] == _png(18)  # The untouched bytes.
  assert last["encoded"].numpy()[2] == b""
  decoded = tf.io.decode_png(_png(18)).numpy().astype(np.float32)
  np.testing.assert_array_equal(last["image"].numpy()[0], decoded)  # Eval path.


def test_eval_sharded_by_input_context_is_exactly_once(data_dir):
  pattern = str(data_dir / "train-*")
  steps = pipeline.num_eval_batches(pattern, global_batch_size=8,
                                    input_context=_context(2, 0))
  assert steps == 4  # Pipeline 0 reads files 0 and 2: 13 records, 4 per batch.
  ids = []
  for k in range(2):
    ds = pipeline.eval_dataset(pattern, global_batch_size=8, preprocess=EVAL,
                               num_classes=C, input_context=_context(2, k),
                               num_batches=4)
    batches = list(ds)
    assert len(batches) == 4 and all(b["image"].shape[0] == 4 for b in batches)
    ids.append(_real_ids(batches))
  assert ids[0] == [f"img/{i:03d}" for i in list(range(7)) + list(range(14, 20))]
  assert sorted(ids[0] + ids[1]) == [f"img/{i:03d}" for i in range(20)]


def test_num_eval_batches_rounds_to_replicas_and_too_few_is_an_error(data_dir):
  pattern = str(data_dir / "train-*")
  # One pipeline, 2 replicas: per-replica batch 3 -> 7 batches -> 8 (2 per step).
  assert pipeline.num_eval_batches(pattern, global_batch_size=6,
                                   input_context=_context(1, 0, replicas=2)) == 8
  ds = pipeline.eval_dataset(pattern, global_batch_size=6, preprocess=EVAL,
                             num_classes=C, num_batches=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="more than num_batches=2"):
    list(ds)


def test_corrupt_records_are_flagged_not_dropped(data_dir):
  good = schema.image_features(_png(1), "ok/1", 1)
  truncated = schema.image_features(_png(2)[:30], "bad/2", 2)
  not_an_image = schema.image_features(b"hello", "bad/3", 3)
  path = data_dir / "mixed-00000.tfrecord"
  _write(path, [good, truncated, not_an_image, good])
  with tf.io.TFRecordWriter(str(data_dir / "mixed-00001.tfrecord")) as w:
    w.write(b"not a tf.train.Example")
  ds = pipeline.eval_dataset(str(data_dir / "mixed-*"), global_batch_size=8,
                             preprocess=EVAL, num_classes=C, keep_encoded=True)
  (batch,) = list(ds)
  assert batch["mask"].numpy().tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
  assert batch["ok"].numpy().tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
  assert [i.decode() for i in batch["id"].numpy()[:5]] == ["ok/1", "bad/2", "bad/3",
                                                          "ok/1", ""]
  assert batch["label"].numpy()[:5].tolist() == [1, 2, 3, 1, -1]
  assert batch["encoded"].numpy()[1] == _png(2)[:30]
  assert not batch["image"].numpy()[1].any()


def test_eval_with_pseudo_and_hidden_labels(data_dir):
  ds = pipeline.eval_dataset(str(data_dir / "pseudo-*"), global_batch_size=12,
                             preprocess=EVAL, num_classes=C, with_pseudo=True)
  (batch,) = list(ds)
  assert batch["label"].numpy().tolist() == [-1] * 12
  assert batch["hidden_label"].numpy().tolist() == [i % C for i in range(100, 112)]
  np.testing.assert_allclose(batch["pseudo_probs"].numpy(),
                             np.stack([_probs(i) for i in range(100, 112)]))
  assert batch["pseudo_label"].numpy().tolist() == [(i + 1) % C for i in range(100, 112)]


@pytest.mark.parametrize("label,offset,message", [
    (4, 0, "num_classes=4"),
    (0, 1, "label_offset"),
])
def test_label_out_of_range_is_an_error(tmp_path, label, offset, message):
  _write(tmp_path / "x-0.tfrecord", [schema.image_features(_png(0), "a", label)])
  ds = pipeline.eval_dataset(str(tmp_path / "x-*"), global_batch_size=2, preprocess=EVAL,
                             num_classes=C, label_offset=offset)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    list(ds)
  ds = pipeline.train_dataset(str(tmp_path / "x-*"), global_batch_size=2,
                              preprocess=TRAIN, num_classes=C, label_offset=offset,
                              max_bad_records=0)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"64 with a label outside \\[0, 4\\) after label_offset={offset}"):
    next(iter(ds))


def test_label_offset_reads_one_based_labels(tmp_path):
  _write(tmp_path / "x-0.tfrecord", [schema.image_features(_png(0), "a", 4)])
  ds = pipeline.eval_dataset(str(tmp_path / "x-*"), global_batch_size=1, preprocess=EVAL,
                             num_classes=C, label_offset=1)
  assert next(iter(ds))["label"].numpy().tolist() == [3]


# ------------------------------------------------------------------------------ train


def _take(ds, n):
  return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def test_train_batches_and_deterministic_mode(data_dir):
  def make(seed):
    return pipeline.train_dataset(str(data_dir / "train-*"), global_batch_size=5,
                                  preprocess=TRAIN, num_classes=C, seed=seed,
                                  deterministic=True)
  a, b, c = _take(make(1), 8), _take(make(1), 8), _take(make(2), 8)
  first = a[0]
  assert first["image"].shape == (5, 8, 8, 3) and first["image"].dtype == np.float32
  assert first["label"].dtype == np.int32
  np.testing.assert_array_equal(first["target"], np.eye(C, dtype=np.float32)[first["label"]])
  assert first["is_unlabeled"].tolist() == [0.0] * 5
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  # 8 batches of 5 = two epochs of 20: each epoch holds every label 5 times.
  labels = np.concatenate([x["label"] for x in a])
  assert np.bincount(labels[:20]).tolist() == [5] * 4
  assert np.bincount(labels[20:]).tolist() == [5] * 4
  assert labels[:20].tolist() != labels[20:].tolist()  # Reshuffled every epoch.


def test_noise_is_per_example_not_per_order(data_dir):
  """Same seed: the same augmented images, whatever the order records arrive in.

  Each example's noise is drawn from (seed, epoch, file, record), so a different shuffle
  gives the same first-epoch images. Without determinism, parallel decoding may hand
  over a later chunk of records first (a chunk of 64 spans several 20-record epochs):
  its images must still be ones the deterministic stream produces in some epoch.
  """
  def images(deterministic, cycle, batches=1):
    ds = pipeline.train_dataset(str(data_dir / "train-*"), global_batch_size=20,
                                preprocess=TRAIN, num_classes=C, seed=4,
                                deterministic=deterministic, shuffle_buffer=cycle)
    return [im.tobytes() for b in _take(ds, batches) for im in b["image"]]

  first_epoch = sorted(images(True, 20))
  assert first_epoch == sorted(images(True, 3))
  assert len(set(first_epoch)) == 20
  assert set(images(False, 1, batches=2)) <= set(images(True, 20, batches=16))


def test_train_input_context_shards_files_and_splits_the_batch(data_dir):
  ds = pipeline.train_dataset(str(data_dir / "train-*"), global_batch_size=8,
                              preprocess=EVAL, num_classes=C,
                              input_context=_context(2, 1), deterministic=True)
  batches = _take(ds, 4)
  assert batches[0]["image"].shape == (4, 8, 8, 3)
  # Pipeline 1 reads only file 1 (images 7..13): compare against their eval images.
  own = {tf.io.decode_png(_png(i)).numpy().astype(np.float32).tobytes()
         for i in range(7, 14)}
  assert all(im.tobytes() in own for b in batches for im in b["image"])
  with pytest.raises(ValueError, match="fewer files than pipelines"):
    pipeline.train_dataset(str(data_dir / "train-*"), global_batch_size=8,
                           preprocess=EVAL, num_classes=C, input_context=_context(4, 3))


def test_unlabeled_records_in_labeled_data_are_an_error(data_dir):
  ds = pipeline.train_dataset(str(data_dir / "unlabeled-*"), global_batch_size=2,
                              preprocess=TRAIN, num_classes=C, max_bad_records=3)
  with pytest.raises(tf.errors.InvalidArgumentError, match="64 unlabeled \\(label -1\\)"):
    next(iter(ds))


# -------------------------------------------------------------------- labeled+unlabeled


@pytest.mark.parametrize("label_type", ["soft", "hard"])
def test_labeled_unlabeled_batch_composition(data_dir, label_type):
  ds = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "pseudo-*"), labeled_batch_size=4,
      unlabeled_ratio=1.5, preprocess=TRAIN, num_classes=C, label_type=label_type,
      deterministic=True)
  (batch,) = _take(ds, 1)
  b, u = 4, math.ceil(1.5 * 4)
  assert batch["image"].shape == (b + u, 8, 8, 3)
  assert batch["is_unlabeled"].tolist() == [0.0] * b + [1.0] * u
  assert batch["label"][b:].tolist() == [-1] * u
  np.testing.assert_array_equal(batch["target"][:b],
                                np.eye(C, dtype=np.float32)[batch["label"][:b]])
  targets = batch["target"][b:]
  assert {tuple(np.round(t, 5)) for t in targets} <= {
      tuple(np.round(_probs(i) if label_type == "soft" else np.eye(C)[(i + 1) % C], 5))
      for i in range(100, 112)}
  assert np.allclose(targets.sum(1), 1.0)
  assert (targets.max(1) == (0.7 if label_type == "soft" else 1.0)).all()
  assert "clean_image" not in batch


def test_resumed_epoch_starts_a_fresh_unlabeled_pass(data_dir, monkeypatch):
  """Resuming at labeled epoch 1 replays labeled epoch 1 but not unlabeled pass 1, which
  the run already took (12 unlabeled records, 6 a batch: a pass every 2 batches, a
  labeled epoch of 20 every 5)."""
  def batches(initial_epoch, n):
    ds = pipeline.labeled_unlabeled_dataset(
        str(data_dir / "train-*"), str(data_dir / "pseudo-*"), labeled_batch_size=4,
        unlabeled_ratio=1.5, preprocess=TRAIN, num_classes=C, deterministic=True,
        initial_epoch=initial_epoch)
    return [(b["image"][:4], b["image"][4:]) for b in _take(ds, n)]

  start = batches(0, 7)
  resumed = batches(1, 2)
  np.testing.assert_array_equal(resumed[0][0], start[5][0])   # labeled epoch 1
  np.testing.assert_array_equal(resumed[1][0], start[6][0])
  assert not np.array_equal(resumed[0][1], start[2][1])       # not unlabeled pass 1
  monkeypatch.setattr(pipeline, "UNLABELED_PASSES_PER_EPOCH", 1)
  replayed = batches(1, 2)                                    # what it used to do
  np.testing.assert_array_equal(replayed[0][1], start[2][1])
  np.testing.assert_array_equal(replayed[1][1], start[3][1])


def test_online_mode_zero_targets_and_clean_copies(data_dir):
  ds = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "unlabeled-*"), labeled_batch_size=2,
      unlabeled_ratio=2, preprocess=TRAIN, num_classes=C, pseudo_labels=False,
      with_clean_unlabeled=True, deterministic=True)
  (batch,) = _take(ds, 1)
  assert batch["image"].shape == (6, 8, 8, 3) and batch["clean_image"].shape == (4, 8, 8, 3)
  assert not batch["target"][2:].any()
  clean = {tf.io.decode_png(_png(i)).numpy().astype(np.float32).tobytes()
           for i in range(100, 112)}
  assert all(im.tobytes() in clean for im in batch["clean_image"])


def test_labeled_unlabeled_per_replica_and_errors(data_dir):
  kwargs = dict(labeled_batch_size=4, unlabeled_ratio=3, preprocess=TRAIN, num_classes=C)
  ds = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "pseudo-*"), input_context=_context(2, 0),
      **kwargs)
  (batch,) = _take(ds, 1)
  assert batch["image"].shape == (2 + 6, 8, 8, 3)
  offline_without_pseudo = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "unlabeled-*"), max_bad_records=5, **kwargs)
  with pytest.raises(tf.errors.InvalidArgumentError, match="without a pseudo label"):
    _take(offline_without_pseudo, 1)
  with pytest.raises(ValueError, match="needs unlabeled data"):
    pipeline.labeled_unlabeled_dataset(str(data_dir / "train-*"), None, **kwargs)
  only_labeled = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), None, **dict(kwargs, unlabeled_ratio=0))
  assert _take(only_labeled, 1)[0]["image"].shape == (4, 8, 8, 3)


def test_eval_of_an_explicit_empty_file_list_gives_only_padding():
  kwargs = dict(files=[], global_batch_size=4, preprocess=EVAL, num_classes=C)
  assert list(pipeline.eval_dataset("unused", **kwargs)) == []
  batches = list(pipeline.eval_dataset("unused", num_batches=2, **kwargs))
  assert len(batches) == 2 and not any(b["mask"].numpy().any() for b in batches)
  assert batches[0]["label"].numpy().tolist() == [-1] * 4


def test_training_pattern_may_match_json_and_png_beside_the_records(data_dir):
  (data_dir / "selection.json").write_text("{}\n")
  (data_dir / "selection.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
  ds = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "*"), labeled_batch_size=2,
      unlabeled_ratio=1, preprocess=TRAIN, num_classes=C, pseudo_labels=False)
  assert _take(ds, 1)[0]["image"].shape == (4, 8, 8, 3)


# ------------------------------------------------------------------------ bad records


def _with_bad_records(path):
  """9 records in this order: 2 good, undecodable, good, not an Example, label 9,
  3 good. Good ones are labels 0..3 and ids good/i."""
  rows = [schema.image_features(_png(i), f"good/{i}", i % C) for i in range(6)]
  bad_image = schema.image_features(_png(7)[:30], "bad/truncated-png", 1)
  bad_label = schema.image_features(_png(8), "bad/label", 9)
  with tf.io.TFRecordWriter(str(path)) as w:
    for row in rows[:2] + [bad_image, rows[2], None, bad_label] + rows[3:]:
      w.write(b"not an Example" if row is None else
              schema.make_example(row).SerializeToString())


def test_training_skips_and_counts_bad_records(tmp_path):
  _with_bad_records(tmp_path / "x-00000.tfrecord")
  ds = pipeline.train_dataset(str(tmp_path / "x-*"), global_batch_size=3, preprocess=EVAL,
                              num_classes=C, deterministic=True, shuffle_buffer=1)
  batches = _take(ds, 4)  # Two epochs of the 6 good records.
  ids = {tf.io.decode_png(_png(i)).numpy().astype(np.float32).tobytes(): i for i in range(6)}
  seen = [ids[im.tobytes()] for b in batches for im in b["image"]]
  assert sorted(seen[:6]) == sorted(seen[6:]) == list(range(6))
  assert [b["skipped"].sum() for b in batches] == [1, 2, 1, 2]  # Skipped before each.
  assert [int(x) for b in batches for x in b["label"]] == [s % C for s in seen]


def test_too_many_bad_records_is_an_error_naming_the_reasons(tmp_path):
  _with_bad_records(tmp_path / "x-00000.tfrecord")
  ds = pipeline.train_dataset(str(tmp_path / "x-*"), global_batch_size=3, preprocess=EVAL,
                              num_classes=C, max_bad_records=4, deterministic=True,
                              shuffle_buffer=1)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _take(ds, 10)
  message = pipeline.bad_records_message(error.value)
  # Counted per chunk of 64 records: 7 passes over the file (3 bad each) and one record.
  assert message.startswith("labeled input: 21 bad records skipped, more than "
                            "max_bad_records=4")
  assert "14 that do not decode" in message and "7 with a label outside" in message
  assert "\n" not in message
  assert pipeline.bad_records_message(tf.errors.InvalidArgumentError(None, None, "x")) is None


def test_student_batches_skip_unlabeled_records_without_pseudo_labels(data_dir):
  _write(data_dir / "mixed-00000.tfrecord", [
      schema.image_features(_png(1), "u/no-pseudo"),
      dict(schema.image_features(_png(2), "u/ok"), **schema.pseudo_features(_probs(2)))])
  ds = pipeline.labeled_unlabeled_dataset(
      str(data_dir / "train-*"), str(data_dir / "mixed-*"), labeled_batch_size=2,
      unlabeled_ratio=1, preprocess=TRAIN, num_classes=C, deterministic=True)
  batches = _take(ds, 3)
  for b in batches:
    np.testing.assert_allclose(b["target"][2:], np.stack([_probs(2)] * 2))
  assert sum(b["skipped"][2:].sum() for b in batches) >= 2


def test_eval_can_flag_labels_out_of_range_instead_of_failing(tmp_path):
  _write(tmp_path / "x-0.tfrecord", [schema.image_features(_png(0), "a", 9),
                                     schema.image_features(_png(1), "b", 2)])
  (batch,) = list(pipeline.eval_dataset(str(tmp_path / "x-*"), global_batch_size=2,
                                        preprocess=EVAL, num_classes=C,
                                        flag_bad_labels=True))
  assert batch["ok"].numpy().tolist() == [0, 1]
  assert batch["label"].numpy().tolist() == [-1, 2]
