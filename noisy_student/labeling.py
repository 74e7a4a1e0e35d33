"""Sharded teacher inference: pseudo labels for unlabeled images (paper Algorithm 1, step 2).

The un-noised teacher (`training=False`; the exported model holds the EMA weights) sees
the clean eval preprocessing of `data.pipeline.eval_dataset` at its own resolution and
predicts soft labels `q = softmax(log_softmax(logits) / T)`, i.e. `q ∝ p^(1/T)` (NOTES.md
section 2). Each job handles `shard_files(files, i, N)` of the input files:

  output_dir/<input basename>            one TFRecord per input file: every readable
                                         record's original serialized Example (image
                                         bytes, id and all other fields untouched) plus
                                         the pseudo keys of data/schema.py
  output_dir/_files/<input basename>.json  that file's stats; written after the TFRecord,
                                         so its presence means "done": a rerun skips it
  output_dir/stats-{i:05d}-of-{N:05d}.json  the shard's stats for noisy_student.select

Corrupt records (not a tf.train.Example, or an image that does not decode) get no
prediction and are not written; each one is counted and listed (file, index, id) in the
stats. A file whose TFRecord framing breaks (truncated / bad checksum) is labelled up to
the break and the rest is listed as one corrupt entry.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from data import fileio
from data import pipeline
from data import schema
from data.preprocessing import PreprocessConfig
from noisy_student import model_io
from noisy_student import selection

STORAGES = ("float32", "float16")
FILES_DIR = "_files"
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
    temperature: T > 0 of q ∝ p^(1/T).
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
  temperature: float = 1.0
  soft_label_top_k: int = 0
  storage: str = "float32"
  num_classes: int | None = None
  label_offset: int = 0
  noised: bool = False

  def __post_init__(self):
    if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
      raise ValueError(f"shard_index {self.shard_index} out of range for num_shards "
                       f"{self.num_shards}")
    if self.storage not in STORAGES:
      raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if self.soft_label_top_k < 0 or self.batch_size < 1:
      raise ValueError("soft_label_top_k must be >= 0 and batch_size >= 1")

  def settings(self, teacher_config: dict) -> dict:
    """What the outputs depend on (a rerun with other settings is refused)."""
    return {"teacher": os.path.abspath(self.teacher), "temperature": self.temperature,
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
class FileResult:
  """What labelling one file produced (becomes its `_files/*.json`)."""
  histogram: np.ndarray
  num_images: int = 0
  corrupt: list = dataclasses.field(default_factory=list)


class _Sink:
  """Consumes (probs, mask, ok, raw records) batches: writes records, fills the stats.

  Runs in a background thread so that serialising overlaps the next forward pass.
  """

  def __init__(self, writer, source: str, num_classes: int, storage: str, top_k: int):
    self._writer, self._source = writer, source
    self._storage, self._top_k = storage, top_k
    self.result = FileResult(selection.new_histogram(num_classes))
    self._index = 0

  def consume(self, probs, mask, ok, raw) -> int:
    real = np.flatnonzero(mask > 0)
    if len(real) != len(raw):
      raise RuntimeError(f"{self._source}: {len(raw)} raw records but {len(real)} "
                         "pipeline rows: eval_dataset lost file order")
    good = real[ok[real] > 0]
    for row, serialized in zip(real, raw):
      if ok[row] > 0:
        self._writer.write(with_pseudo_label(serialized, probs[row], storage=self._storage,
                                             top_k=self._top_k))
      else:
        self.result.corrupt.append({
            "file": self._source, "index": self._index, "id": _record_id(serialized),
            "error": "not a tf.train.Example, or its image does not decode"})
      self._index += 1
    q = probs[good]
    selection.accumulate(self.result.histogram, q.argmax(axis=1), q.max(axis=1))
    self.result.num_images += len(good)
    return len(real)


# --------------------------------------------------------------------------- teacher


class Teacher:
  """The teacher under a strategy, and its batched soft-label step."""

  def __init__(self, path: str, strategy: tf.distribute.Strategy, *, temperature: float,
               noised: bool = False):
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
    self._temperature, self._training = float(temperature), bool(noised)
    self._step = tf.function(self._distributed_step)

  @property
  def num_classes(self) -> int:
    return int(self.config["num_classes"])

  def preprocess(self) -> PreprocessConfig:
    mode = "small" if self.config["small_image"] else "imagenet"
    return PreprocessConfig(image_size=int(self.config["image_size"]), mode=mode,
                            augment="none")

  def soft_labels(self, images: tf.Tensor) -> tf.Tensor:
    """images: [b, S, S, 3] float32 in [0, 255] -> [b, C] float32 q ∝ p^(1/T)."""
    out = tf.cast(self.model(images, training=self._training), tf.float32)
    log_p = tf.nn.log_softmax(out, axis=-1)
    return tf.nn.softmax(log_p / self._temperature, axis=-1)

  def _distributed_step(self, batch):
    return self.strategy.run(self.soft_labels, args=(batch["image"],))

  def __call__(self, distributed_batch) -> np.ndarray:
    """[global b, C] numpy soft labels, rows in the batch's order."""
    per_replica = self.strategy.experimental_local_results(self._step(distributed_batch))
    return np.concatenate([t.numpy() for t in per_replica], axis=0)


def _local(strategy, value) -> np.ndarray:
  return np.concatenate([t.numpy() for t in strategy.experimental_local_results(value)])


# --------------------------------------------------------------------------- one file


def _numeric_batches(path, teacher: Teacher, batch_size: int, label_offset: int):
  """The file's eval batches, without strings (TPU-friendly), distributed."""
  ds = pipeline.eval_dataset(path, files=[path], global_batch_size=batch_size,
                             preprocess=teacher.preprocess(),
                             num_classes=teacher.num_classes, label_offset=label_offset)
  ds = ds.map(lambda b: {"image": b["image"], "mask": b["mask"], "ok": b["ok"]})
  return teacher.strategy.experimental_distribute_dataset(ds)


def _run_file(path: str, out_tmp: str, teacher: Teacher, cfg: LabelConfig,
              progress) -> FileResult:
  """Labels every record of `path` into `out_tmp`; raises DataLossError on framing."""
  raw_batches = tf.data.TFRecordDataset(path).batch(cfg.batch_size).as_numpy_iterator()
  work: queue.Queue = queue.Queue(maxsize=4)
  with tf.io.TFRecordWriter(out_tmp) as writer:
    sink = _Sink(writer, path, teacher.num_classes, cfg.storage, cfg.soft_label_top_k)
    errors = []

    def drain():
      while (item := work.get()) is not None:
        if not errors:
          try:
            progress(sink.consume(*item))
          except BaseException as e:  # noqa: BLE001  Re-raised in the main thread.
            errors.append(e)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
      for batch in _numeric_batches(path, teacher, cfg.batch_size, cfg.label_offset):
        probs = teacher(batch)
        mask = _local(teacher.strategy, batch["mask"])
        ok = _local(teacher.strategy, batch["ok"])
        raw = next(raw_batches) if mask.sum() > 0 else []
        work.put((probs, mask, ok, list(raw)))
        if errors:
          break
    finally:
      work.put(None)
      thread.join()
    if errors:
      raise errors[0]
  return sink.result


def _readable_prefix(path: str) -> tuple[int, str]:
  """(records before the first framing error, the error message)."""
  n, message = 0, ""
  try:
    for _ in tf.data.TFRecordDataset(path):
      n += 1
  except tf.errors.DataLossError as e:
    message = e.message.splitlines()[0]
  return n, message


def label_file(path: str, out_path: str, teacher: Teacher, cfg: LabelConfig,
               progress) -> FileResult:
  """Labels one input file into `out_path` (atomically); returns its stats."""
  with fileio.atomic_path(out_path) as tmp:
    try:
      return _run_file(path, tmp, teacher, cfg, progress)
    except tf.errors.DataLossError:
      pass
  # Broken framing: label the readable prefix (copied aside), list the rest as corrupt.
  n, message = _readable_prefix(path)
  prefix = os.path.join(os.path.dirname(out_path),
                        f"{fileio.TMP_MARK}prefix-{os.path.basename(out_path)}")
  try:
    with tf.io.TFRecordWriter(prefix) as w:
      for record in tf.data.TFRecordDataset(path).take(n):
        w.write(record.numpy())
    with fileio.atomic_path(out_path) as tmp:
      result = _run_file(prefix, tmp, teacher, cfg, progress)
  finally:
    if tf.io.gfile.exists(prefix):
      tf.io.gfile.remove(prefix)
  for entry in result.corrupt:
    entry["file"] = path
  result.corrupt.append({"file": path, "index": n, "id": "",
                         "error": f"unreadable from here to the end of the file: {message}"})
  return result


# --------------------------------------------------------------------------- a shard


def _sparse(histogram: np.ndarray) -> list:
  c, b = np.nonzero(histogram)
  return [[int(i), int(j), int(histogram[i, j])] for i, j in zip(c, b)]


def _dense(triples: list, num_classes: int) -> np.ndarray:
  h = selection.new_histogram(num_classes)
  for c, b, n in triples:
    h[c, b] = n
  return h


def check_inputs(files: list[str]) -> None:
  """One output per input basename: two inputs with one basename would collide."""
  seen = {}
  for f in files:
    name = os.path.basename(f)
    if name in seen:
      raise ValueError(f"input files {seen[name]} and {f} share the basename {name!r}; "
                       "outputs are named after it")
    seen[name] = f


def _remove_stale_temporaries(output_dir: str, names: list[str]) -> None:
  """Leftovers of a killed run for this shard's outputs (other shards' are not touched)."""
  mine = set(names)
  for directory in (output_dir, os.path.join(output_dir, FILES_DIR)):
    if not tf.io.gfile.isdir(directory):
      continue
    for entry in tf.io.gfile.listdir(directory):
      if fileio.is_temporary(entry):
        target = entry[len(fileio.TMP_MARK):].split("-", 1)[-1]
        if target in mine or target.removesuffix(".json") in mine:
          tf.io.gfile.remove(os.path.join(directory, entry))


def _load_done(path: str, settings: dict) -> dict | None:
  if not tf.io.gfile.exists(path):
    return None
  done = fileio.read_json(path)
  if done["settings"] != settings:
    raise ValueError(f"{path} was labelled with other settings ({done['settings']}) than "
                     f"now ({settings}); use a fresh --output_dir")
  return done


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
  if cfg.batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas")
  teacher = Teacher(cfg.teacher, strategy, temperature=cfg.temperature, noised=cfg.noised)
  if cfg.num_classes is not None and cfg.num_classes != teacher.num_classes:
    raise ValueError(f"teacher {cfg.teacher} predicts {teacher.num_classes} classes, "
                     f"--num_classes says {cfg.num_classes}")
  if cfg.soft_label_top_k >= teacher.num_classes:
    raise ValueError(f"soft_label_top_k {cfg.soft_label_top_k} >= num_classes "
                     f"{teacher.num_classes}: use 0 for the full vector")
  settings = cfg.settings(teacher.config)
  mine = pipeline.shard_files(files, cfg.shard_index, cfg.num_shards)
  names = [os.path.basename(f) for f in mine]
  done_paths = [os.path.join(cfg.output_dir, FILES_DIR, n + ".json") for n in names]
  todo = [(f, n, d) for f, n, d in zip(mine, names, done_paths)
          if _load_done(d, settings) is None]
  tf.io.gfile.makedirs(os.path.join(cfg.output_dir, FILES_DIR))
  _remove_stale_temporaries(cfg.output_dir, names)
  print(f"shard {cfg.shard_index}/{cfg.num_shards}: {len(mine)} of {len(files)} input "
        f"files, {len(mine) - len(todo)} already done; teacher {teacher.num_classes} "
        f"classes at {settings['image_size']}px, {strategy.num_replicas_in_sync} replica(s)")
  _label_files(todo, teacher, cfg, settings, after_file)
  return _write_shard_stats(cfg, settings, teacher.num_classes, mine, done_paths)


def _label_files(todo, teacher, cfg, settings, after_file) -> None:
  from tqdm import tqdm
  with tqdm(unit="img", unit_scale=True, mininterval=2.0, smoothing=0.05,
            desc=f"label {cfg.shard_index}/{cfg.num_shards}") as bar:
    for path, name, done_path in todo:
      start = time.time()
      out_path = os.path.join(cfg.output_dir, name)
      result = label_file(path, out_path, teacher, cfg, bar.update)
      fileio.write_json_atomic(done_path, {
          "input": path, "output": name, "settings": settings,
          "num_images": result.num_images, "num_corrupt": len(result.corrupt),
          "corrupt": result.corrupt, "seconds": round(time.time() - start, 3),
          "histogram_sparse": _sparse(result.histogram)})
      if result.corrupt:
        bar.write(f"{path}: {len(result.corrupt)} corrupt record(s), listed in {done_path}")
      if after_file is not None:
        after_file(out_path)


def _write_shard_stats(cfg, settings, num_classes, mine, done_paths) -> dict:
  hist, files, corrupt, seconds = selection.new_histogram(num_classes), [], [], 0.0
  for path, done_path in zip(mine, done_paths):
    done = fileio.read_json(done_path)
    hist += _dense(done["histogram_sparse"], num_classes)
    files.append({"input": path, "output": done["output"], "num_images": done["num_images"],
                  "num_corrupt": done["num_corrupt"]})
    corrupt.extend(done["corrupt"])
    seconds += done["seconds"]
  stats = selection.make_label_stats(shard_index=cfg.shard_index,
                                     num_shards=cfg.num_shards, histogram=hist,
                                     files=files, corrupt=corrupt, settings=settings)
  stats["seconds"] = round(seconds, 3)
  path = os.path.join(cfg.output_dir,
                      selection.label_stats_name(cfg.shard_index, cfg.num_shards))
  selection.write_label_stats(path, stats)
  print(f"shard {cfg.shard_index}: {stats['num_images']:,} images, "
        f"{stats['num_corrupt']} corrupt; stats in {path}")
  return stats

