"""Sharded teacher inference: pseudo labels for unlabeled images (paper Algorithm 1, step 2).

The un-noised teacher (`training=False`; the exported model holds the EMA weights) sees
the clean eval preprocessing of `data.input.pipeline.eval_dataset` at its own resolution and
stores its plain distribution `p = softmax(logits)` (T = 1). As in the official code
(predict_label.py stores the teacher's distribution, filter_unlabel.py filters on its
confidence, main.py sharpens once while training), selection filters on the T = 1
confidence and the one temperature is the trainer's `--teacher_temperature`. Each job
handles `shard_files(files, i, N)` of the input files:

  output_dir/<input basename>            one TFRecord per input file: every readable
                                         record's original serialized Example (image
                                         bytes, id and all other fields untouched) plus
                                         the pseudo keys of data/records/schema.py
  output_dir/_files/<input basename>.json  that file's stats; written after the TFRecord,
                                         so its presence means "done": a rerun skips it
  output_dir/stats-{i:05d}-of-{N:05d}.json  the shard's stats for noisy_student.select
  output_dir/label-settings.json         written by the first job: teacher (a hash of
                                         its weights), storage, shard count, input
                                         basenames...; a job with other settings is
                                         refused (stats of two runs would be summed by
                                         noisy_student.select). No paths, so a rerun
                                         from another directory or mount matches.

The stats files' format is noisy_student/labeling/label_stats.py (shared with the selector).

Corrupt records (not a tf.train.Example, or an image that does not decode) get no
prediction and are not written; each one is counted and listed (file, index, id) in the
stats. A file whose TFRecord framing breaks (truncated / bad checksum) is labelled up to
the break and the rest is listed as one corrupt entry.

Jobs may be retried while an earlier attempt still runs: each writes under its own
temporary names (noisy_student/common/job_io.py) and removes only temporaries of dead jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import queue
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from data import fileio
from data.input import pipeline
from data.input.preprocessing import PreprocessConfig
from data.records import schema
from data.records import shards
from noisy_student.common import job_io
from noisy_student.common import model_io
from noisy_student.common import strategy as strategy_lib
from noisy_student.labeling import label_stats
from noisy_student.training import losses

STORAGES = ("float32", "float16")
_PSEUDO_KEYS = (schema.PSEUDO_PROBS, schema.PSEUDO_PROBS_F16, schema.PSEUDO_TOPK_INDICES,
                schema.PSEUDO_TOPK_VALUES, schema.PSEUDO_LABEL, schema.PSEUDO_CONFIDENCE)


@dataclasses.dataclass(frozen=True)
class LabelConfig:
  """One labelling job.

  Attributes:
    teacher: model_dir or .keras file (model_io.load_model).
    input_pattern: glob (or comma-separated globs) of unlabeled TFRecords.
    output_dir: where predictions and stats go.
    shard_index / num_shards: this job's share of the input files.
    batch_size: global batch (divided among the strategy's replicas).
    soft_label_top_k: store only the k largest probabilities (0: the full vector).
    storage: "float32" or "float16" for the full vector.
    num_classes: expected class count; a teacher with another one is an error.
    label_offset: 1 for ImageNet TPU TFRecords (only checked, labels are kept as stored).
    noised: ablation: dropout and stochastic depth on (BN stays in inference mode).
  """
  teacher: str
  input_pattern: str
  output_dir: str
  shard_index: int = 0
  num_shards: int = 1
  batch_size: int = 64
  soft_label_top_k: int = 0
  storage: str = "float32"
  num_classes: int | None = None
  label_offset: int = 0
  noised: bool = False

  def __post_init__(self):
    shards.check_shard(self.shard_index, self.num_shards)
    if self.storage not in STORAGES:
      raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
    if self.soft_label_top_k < 0 or self.batch_size < 1:
      raise ValueError("soft_label_top_k must be >= 0 and batch_size >= 1")

  def settings(self, teacher_config: dict, teacher_weights: str) -> dict:
    """What each output file depends on (a rerun with other settings is refused).

    The teacher is identified by its weights (`weights_fingerprint`), not its path: the
    same teacher read from another directory, mount or bucket is the same teacher.
    "temperature" is always 1 (the stored distribution is the teacher's own); it stays
    so that selection can refuse predictions sharpened by older versions.
    """
    return {"teacher_weights": teacher_weights, "temperature": label_stats.TEMPERATURE,
            "soft_label_top_k": self.soft_label_top_k, "storage": self.storage,
            "num_classes": int(teacher_config["num_classes"]),
            "image_size": int(teacher_config["image_size"]),
            "small_image": bool(teacher_config["small_image"]),
            "label_offset": self.label_offset, "noised": self.noised}


# --------------------------------------------------------------------------- records


def with_pseudo_label(serialized: bytes, probs: np.ndarray, *, storage: str,
                      top_k: int) -> bytes:
  """The record with (replaced) pseudo keys; every other field is kept as it was.

  Args:
    serialized: a serialized tf.train.Example.
    probs: [num_classes] float32 soft label.
  """
  example = tf.train.Example.FromString(serialized)
  feature = example.features.feature
  for key in _PSEUDO_KEYS:
    if key in feature:
      del feature[key]
  for key, value in schema.pseudo_features(probs, storage=storage, top_k=top_k).items():
    feature[key].CopyFrom(value)
  # Deterministic: map fields in key order, so a rerun writes identical bytes.
  return example.SerializeToString(deterministic=True)


def _record_id(serialized: bytes) -> str:
  try:
    feature = tf.train.Example.FromString(serialized).features.feature
    for key in (schema.ID, schema.FILENAME):
      if key in feature and feature[key].bytes_list.value:
        return feature[key].bytes_list.value[0].decode("utf-8", "replace")
  except Exception:  # noqa: BLE001  Not an Example at all: no id to report.
    pass
  return ""


@dataclasses.dataclass
class FileJob:
  """One input file of this shard.

  Attributes:
    source: the input file (as reported in stats).
    read: the file actually read: `source`, or a copy of its readable prefix when its
      TFRecord framing is broken.
    out: the output TFRecord; done: its `_files/*.json` (written last).
    tail_error: for a broken file, the corrupt entry covering the unreadable rest.
  """
  source: str
  read: str
  out: str
  done: str
  tail_error: dict | None = None


class _Sink:
  """Writes labelled records file by file and fills each file's stats.

  Consumes (probs, ok, [(job index, serialized)]) batches in stream order, in a
  background thread so that serialising overlaps the next forward pass. A file is
  finished (renamed into place, then its `_files/*.json` written) as soon as a record of
  a later file arrives, or at `close()`.
  """

  def __init__(self, jobs: list[FileJob], num_classes: int, cfg: "LabelConfig",
               settings: dict, after_file=None):
    self._jobs, self._num_classes, self._cfg = jobs, num_classes, cfg
    self._settings, self._after_file = settings, after_file
    self._current = -1
    self._atomic = self._writer = None

  def _open(self, k: int) -> None:
    self._current = k
    self._atomic = job_io.atomic_path(self._jobs[k].out)
    self._writer = tf.io.TFRecordWriter(self._atomic.__enter__())
    self._hist = label_stats.new_histogram(self._num_classes)
    self._index, self._corrupt = 0, []
    self._start = time.time()

  def _finish(self) -> None:
    job = self._jobs[self._current]
    self._writer.close()
    self._atomic.__exit__(None, None, None)      # Renames the output into place.
    self._atomic = None
    if job.tail_error:
      self._corrupt.append(job.tail_error)
    label_stats.write_file_stats(job.done, label_stats.make_file_stats(
        input_path=job.source, output=os.path.basename(job.out), settings=self._settings,
        histogram=self._hist, corrupt=self._corrupt, seconds=time.time() - self._start))
    if self._corrupt:
      job_io.say(f"{job.source}: {len(self._corrupt)} corrupt record(s), listed in "
                 f"{job.done}")
    if self._after_file is not None:
      self._after_file(job.out)

  def _advance(self, k: int) -> None:
    while self._current < k:
      if self._current >= 0:
        self._finish()
      self._open(self._current + 1)

  def consume(self, probs: np.ndarray, ok: np.ndarray, rows: list) -> int:
    """probs: [n, C] float32; ok: [n]; rows: n (job index, serialized record)."""
    cfg = self._cfg
    finite = np.isfinite(probs).all(axis=1)
    for (k, serialized), p, good, fine in zip(rows, probs, ok, finite):
      self._advance(k)
      if good > 0 and not fine:
        # A diverged teacher: its NaN would bin as confidence 1.00, argmax as class 0.
        raise ValueError(f"{self._jobs[k].source}: record {self._index} "
                         f"(id {_record_id(serialized)!r}): the teacher {cfg.teacher} "
                         f"predicts non-finite probabilities {p.tolist()}")
      if good > 0:
        self._writer.write(with_pseudo_label(serialized, p, storage=cfg.storage,
                                             top_k=cfg.soft_label_top_k))
        label_stats.accumulate(self._hist, [p.argmax()], [p.max()])
      else:
        self._corrupt.append({
            "file": self._jobs[k].source, "index": self._index,
            "id": _record_id(serialized),
            "error": "not a tf.train.Example, or its image does not decode"})
      self._index += 1
    return len(rows)

  def close(self) -> None:
    """Finishes the current file and every remaining (record-less) one."""
    self._advance(len(self._jobs) - 1)
    if self._current >= 0:
      self._finish()

  def abort(self) -> None:
    """Drops the unfinished output (finished files stay)."""
    if self._atomic is not None:
      self._writer.close()
      self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
      self._atomic = None


# --------------------------------------------------------------------------- teacher


class Teacher:
  """The teacher under a strategy, and its batched soft-label step."""

  def __init__(self, path: str, strategy: tf.distribute.Strategy, *, noised: bool = False):
    self.strategy = strategy
    with strategy.scope():
      self.model, self.config = model_io.load_model(path)
    input_size = self.model.input_shape[1]
    if input_size is not None and input_size != self.config["image_size"]:
      raise ValueError(f"{path}: model input {input_size} != model_config image_size "
                       f"{self.config['image_size']}")
    if noised:
      for layer in self.model._flatten_layers():  # noqa: SLF001
        if isinstance(layer, keras.layers.BatchNormalization):
          layer.trainable = False  # Keras 3: BN in inference mode even when training.
    self._training = bool(noised)
    self._seed_states = (strategy_lib.seed_states(self.model)
                         if noised and strategy.num_replicas_in_sync > 1 else [])
    self._step = tf.function(self._distributed_step)

  @property
  def num_classes(self) -> int:
    return int(self.config["num_classes"])

  def weights_fingerprint(self) -> str:
    """sha256 of the weights' shapes, dtypes and values, in the model's order."""
    digest = hashlib.sha256()
    for weight in self.model.weights:
      value = np.asarray(keras.ops.convert_to_numpy(weight))
      digest.update(f"{value.dtype.str}{value.shape};".encode())
      digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()

  def preprocess(self) -> PreprocessConfig:
    return model_io.eval_preprocess(self.config)

  def soft_labels(self, images: tf.Tensor) -> tf.Tensor:
    """images: [b, S, S, 3] float32 in [0, 255] -> [b, C] float32 p = softmax(logits)."""
    with strategy_lib.distinct_replica_noise(self._seed_states):
      out = tf.cast(self.model(images, training=self._training), tf.float32)
    # From log-probabilities, softmax(log_softmax(z) / 1): the same bits as the labels
    # of earlier versions.
    return losses.apply_temperature(tf.nn.log_softmax(out, axis=-1),
                                    label_stats.TEMPERATURE, from_logits=True)

  def _distributed_step(self, batch):
    return self.strategy.run(self.soft_labels, args=(batch["image"],))

  def __call__(self, distributed_batch) -> np.ndarray:
    """[global b, C] numpy soft labels, rows in the batch's order."""
    per_replica = self.strategy.experimental_local_results(self._step(distributed_batch))
    return np.concatenate([t.numpy() for t in per_replica], axis=0)


def _local(strategy, value) -> np.ndarray:
  return np.concatenate([t.numpy() for t in strategy.experimental_local_results(value)])


# --------------------------------------------------------------------------- streaming


def _numeric_batches(files: list[str], teacher: Teacher, cfg: "LabelConfig"):
  """Eval batches of `files` in order, without strings (TPU-friendly), distributed."""
  ds = pipeline.eval_dataset(files[0], files=files, global_batch_size=cfg.batch_size,
                             preprocess=teacher.preprocess(),
                             num_classes=teacher.num_classes, label_offset=cfg.label_offset)
  ds = ds.map(lambda b: {"image": b["image"], "mask": b["mask"], "ok": b["ok"]})
  return teacher.strategy.experimental_distribute_dataset(ds)


def _raw_records(jobs: list[FileJob]):
  """(job index, serialized record) of every record, in the pipeline's order."""
  for k, job in enumerate(jobs):
    for chunk in tf.data.TFRecordDataset(job.read).batch(1024).as_numpy_iterator():
      for record in chunk:
        yield k, record


def label_files(jobs: list[FileJob], teacher: Teacher, cfg: "LabelConfig", settings: dict,
                progress, after_file=None) -> None:
  """Labels `jobs` through ONE eval pipeline (built once: it is slow to build).

  The pipeline's rows are matched to the raw records read alongside, in order, so each
  output keeps the exact source record. Raises tf.errors.DataLossError on broken TFRecord
  framing; files finished before that stay finished.
  """
  if not jobs:
    return
  sink = _Sink(jobs, teacher.num_classes, cfg, settings, after_file)
  raw = _raw_records(jobs)
  work: queue.Queue = queue.Queue(maxsize=4)
  errors = []

  def drain():
    while (item := work.get()) is not None:
      if not errors:
        try:
          progress(sink.consume(*item))
        except BaseException as e:  # noqa: BLE001  Re-raised in the main thread.
          errors.append(e)
    if not errors:
      try:
        sink.close()
      except BaseException as e:  # noqa: BLE001
        errors.append(e)

  thread = threading.Thread(target=drain, daemon=True)
  thread.start()
  try:
    for batch in _numeric_batches([j.read for j in jobs], teacher, cfg):
      probs = teacher(batch)
      real = _local(teacher.strategy, batch["mask"]) > 0
      rows = list(itertools.islice(raw, int(real.sum())))
      if len(rows) != real.sum():
        raise RuntimeError("the eval pipeline yielded more rows than the files hold")
      work.put((probs[real], _local(teacher.strategy, batch["ok"])[real], rows))
      if errors:
        break
    else:
      if next(raw, None) is not None:
        raise RuntimeError("the eval pipeline yielded fewer rows than the files hold")
  except BaseException:
    errors.append(None)  # Stop the sink without finishing the current file.
    raise
  finally:
    work.put(None)
    thread.join()
    if errors:
      sink.abort()
  if errors:
    raise errors[0]


def _readable_prefix(path: str) -> tuple[int, str]:
  """(records before the first framing error, the error message; "" if none)."""
  n = 0
  try:
    for _ in tf.data.TFRecordDataset(path):
      n += 1
  except tf.errors.DataLossError as e:
    return n, e.message.splitlines()[0]
  return n, ""


def _use_readable_prefix(job: FileJob) -> FileJob:
  """`job`, reading a copy of its readable prefix if its framing is broken."""
  n, message = _readable_prefix(job.source)
  if not message:
    return job
  prefix = job_io.temporary_path(os.path.join(os.path.dirname(job.out),
                                              f"prefix-{os.path.basename(job.out)}"))
  with tf.io.TFRecordWriter(prefix) as w:
    for record in tf.data.TFRecordDataset(job.source).take(n):
      w.write(record.numpy())
  return dataclasses.replace(job, read=prefix, tail_error={
      "file": job.source, "index": n, "id": "",
      "error": f"unreadable from here to the end of the file: {message}"})


def label_files_resilient(jobs, teacher, cfg, settings, progress, after_file=None):
  """`label_files`; on broken framing, relabels the unfinished files, each broken one
  up to its break (the rest is listed as one corrupt entry)."""
  try:
    return label_files(jobs, teacher, cfg, settings, progress, after_file)
  except tf.errors.DataLossError:
    pass
  remaining = [_use_readable_prefix(j) for j in jobs if not tf.io.gfile.exists(j.done)]
  try:
    label_files(remaining, teacher, cfg, settings, progress, after_file)
  finally:
    for job in remaining:
      if job.read != job.source:
        tf.io.gfile.remove(job.read)


# --------------------------------------------------------------------------- a shard


def check_inputs(files: list[str]) -> None:
  """One output per input basename: two inputs with one basename would collide."""
  seen = {}
  for f in files:
    name = os.path.basename(f)
    if name in seen:
      raise ValueError(f"input files {seen[name]} and {f} share the basename {name!r}; "
                       "outputs are named after it")
    seen[name] = f


def _pin_run(cfg: "LabelConfig", settings: dict, files: list[str]) -> tuple[str, dict]:
  """Pins the output directory to this labelling run (label-settings.json).

  A directory from before that file may hold stats of another run: refused too.
  Returns the settings file's path and its expected content.
  """
  # Basenames (unique, check_inputs) identify the inputs.
  run = label_stats.run_settings(settings, cfg.num_shards,
                                 [os.path.basename(f) for f in files])
  path = os.path.join(cfg.output_dir, label_stats.LABEL_SETTINGS)
  if not tf.io.gfile.exists(path):
    label_stats.check_earlier_stats(cfg.output_dir, cfg.num_shards, settings)
  return path, job_io.pin_settings(path, run, "predictions")


def run_labeling(cfg: LabelConfig, strategy: tf.distribute.Strategy | None = None,
                 *, after_file=None) -> dict:
  """Labels this shard's input files; returns the shard stats (also written to disk).

  Args:
    strategy: default: the current (default) strategy.
    after_file: test hook, called with each finished output path.
  """
  files = fileio.list_files(cfg.input_pattern)  # Empty pattern: ValueError naming it.
  check_inputs(files)
  strategy = strategy or tf.distribute.get_strategy()
  strategy_lib.require_one_host(
      strategy, "noisy_student.label",
      "use --strategy=mirrored, tpu or one_device, and --num_shards to spread the work "
      "over hosts")
  if cfg.batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas")
  teacher = Teacher(cfg.teacher, strategy, noised=cfg.noised)
  if cfg.num_classes is not None and cfg.num_classes != teacher.num_classes:
    raise ValueError(f"teacher {cfg.teacher} predicts {teacher.num_classes} classes, "
                     f"--num_classes says {cfg.num_classes}")
  if cfg.soft_label_top_k >= teacher.num_classes:
    raise ValueError(f"soft_label_top_k {cfg.soft_label_top_k} >= num_classes "
                     f"{teacher.num_classes}: use 0 for the full vector")
  settings = cfg.settings(teacher.config, teacher.weights_fingerprint())
  tf.io.gfile.makedirs(os.path.join(cfg.output_dir, label_stats.FILES_DIR))
  pinned_path, pinned = _pin_run(cfg, settings, files)
  mine = pipeline.shard_files(files, cfg.shard_index, cfg.num_shards)
  names = [os.path.basename(f) for f in mine]
  done_paths = [label_stats.file_stats_path(cfg.output_dir, n) for n in names]
  todo = [(f, n, d) for f, n, d in zip(mine, names, done_paths)
          if label_stats.read_file_stats(d, settings) is None]
  for directory in (cfg.output_dir, os.path.join(cfg.output_dir, label_stats.FILES_DIR)):
    job_io.remove_stale_temporaries(directory)  # Never a live job's (job_io.is_stale).
  job_io.say(f"shard {cfg.shard_index}/{cfg.num_shards}: {len(mine)} of {len(files)} "
             f"input files, {len(mine) - len(todo)} already done; teacher "
             f"{teacher.num_classes} classes at {settings['image_size']}px, "
             f"{strategy.num_replicas_in_sync} replica(s)")
  _label_files(todo, teacher, cfg, settings, after_file)
  # Two first jobs racing with different settings both pass _pin_run's read-back only
  # if they read before the other wrote: the loser is caught here, before its stats.
  if fileio.read_json(pinned_path) != pinned:
    raise ValueError(f"{pinned_path} changed while this job ran: another job with "
                     "other settings shares --output_dir")
  return _write_shard_stats(cfg, settings, teacher.num_classes, mine, done_paths)


def _label_files(todo, teacher, cfg, settings, after_file) -> None:
  jobs = [FileJob(source=path, read=path, out=os.path.join(cfg.output_dir, name),
                  done=done_path) for path, name, done_path in todo]
  # Progress that cannot stop the job: an orphaned job's stderr may be a closed pipe.
  with job_io.progress(unit="img", unit_scale=True, mininterval=2.0, smoothing=0.05,
                       desc=f"label {cfg.shard_index}/{cfg.num_shards}") as bar:
    label_files_resilient(jobs, teacher, cfg, settings, bar.update, after_file)


def _write_shard_stats(cfg, settings, num_classes, mine, done_paths) -> dict:
  stats = label_stats.merge_file_stats(
      shard_index=cfg.shard_index, num_shards=cfg.num_shards, settings=settings,
      num_classes=num_classes, inputs=mine,
      file_stats=[fileio.read_json(p) for p in done_paths])
  stats["teacher"] = cfg.teacher  # Provenance only, as given: settings pin its weights.
  path = os.path.join(cfg.output_dir,
                      label_stats.label_stats_name(cfg.shard_index, cfg.num_shards))
  label_stats.write_label_stats(path, stats)
  job_io.say(f"shard {cfg.shard_index}: {stats['num_images']:,} images, "
             f"{stats['num_corrupt']} corrupt; stats in {path}")
  return stats
