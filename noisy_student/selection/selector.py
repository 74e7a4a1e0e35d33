"""Data filtering and balancing of pseudo-labeled images (paper Sec. 3.1, "Data filtering
and balancing"; the official filter_unlabel.py).

Two passes, each one runs as independent jobs:

* **Pass 1** (`plan_selection`) reads only the per-shard stats files that
  `noisy_student.label` writes (noisy_student/labeling/label_stats.py): per class, a histogram
  of the teacher's confidence at 0.01 resolution. For every class it walks the
  threshold t down from 1.00 to `min_threshold` and stops at the first t where
  `count(confidence >= t) >= K` (`images_per_class`); if none does, t =
  `min_threshold`. The copy factor is
  `x = K / count(confidence >= t)` (capped at 1 without upsampling): classes with too many
  confident images are down-sampled to ~K, keeping the most confident, classes with too
  few are duplicated.
* **Pass 2** (`select_shard`) streams prediction records and writes each record whose
  confidence bin reaches its class's threshold `int(x) + Bernoulli(frac(x))` times,
  shuffled through a bounded buffer. Records are written back as the exact serialized
  bytes that were read; only the label, confidence and id are parsed.

Confidence bins. A confidence c (the float32 `pseudo/confidence`, the maximum of the
stored soft label) goes to bin b, the largest b in 0..100 with `c >= float32(b / 100)`,
compared in float32 (c's own precision): bin b holds `b/100 <= c < (b+1)/100`, bin 100
holds c >= 1.0, and a confidence stored as 0.29 lands in bin 29. "c >= t" for a threshold
t = b/100 means "bin(c) >= b" everywhere (pass 1 counts and pass 2 decisions), so both
passes agree record for record.

Stochastic rounding. Whether a record gets the extra copy is decided by
`u < frac(x)`, with u in [0, 1) a 53-bit FarmHash fingerprint of "<seed>:<key>"
(`tf.strings.to_hash_bucket_fast`): the same record makes the same decision in whichever
shard, order or rerun it is read, so sharded pass 2 is reproducible. The key is the
record's `image/id`; records without one (ImageNet TFRecords of the TPU conversion
script) use "filename:<image/filename>", else "record:<prediction file>:<index>". Keys
must be unique (two records with one key would be kept or dropped together): a duplicate
is an error naming the key and its files, found within a pass-2 shard and, once every
shard is done, across shards (each shard leaves its sorted key fingerprints in
`select-keys-*.bin`).

One temperature. Selection filters on the teacher's T = 1 confidence, as the official
filter_unlabel.py does; a temperature is applied once, by the trainer
(`--teacher_temperature`). Predictions sharpened by an older `noisy_student.label
--temperature` are refused.

Reused directories. The labelling run's `label-settings.json` pins its shard count and
settings: stats files of another run in the same directory are an error, never summed.
The selection's `select-settings.json` pins its own settings likewise, so a rerun with
other shard counts cannot leave stale `selected-*` files beside new ones.

Outputs to look at: selection.png (pass 1's counts, thresholds and copy factors, every
job) and samples.png (selected images per class, noisy_student/selection/samples.py;
written by the job that completes pass 2).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import time

import numpy as np
import tensorflow as tf

from data import fileio
from data.records import schema
from data.records import shards
from noisy_student.common import job_io
from noisy_student.labeling import label_stats
from noisy_student.selection import samples

SELECT_STATS_FORMAT = "noisy_student.select.stats/1"
SELECT_SETTINGS = "select-settings.json"
SELECT_SETTINGS_FORMAT = "noisy_student.select.settings/1"
SUMMARY = "selection.json"
_HASH_BUCKETS = 2**53  # u = hash / 2**53 is an exact float64 in [0, 1).
_KEY_BUCKETS = 2**62   # Key fingerprints for the duplicate check.
_KEY_PARTITIONS = 64   # The cross-shard check holds 1/64 of all fingerprints at a time.

# Pass 1's input, the labeller's stats, is defined in label_stats; these names stay
# importable from here for older callers (bench/selection.py).
NUM_BINS = label_stats.NUM_BINS
STATS_FORMAT = label_stats.STATS_FORMAT
LABEL_SETTINGS = label_stats.LABEL_SETTINGS
LABEL_SETTINGS_FORMAT = label_stats.LABEL_SETTINGS_FORMAT
LabelStats = label_stats.LabelStats
confidence_bins = label_stats.confidence_bins
new_histogram = label_stats.new_histogram
accumulate = label_stats.accumulate
label_stats_name = label_stats.label_stats_name
is_label_stats_name = label_stats.is_label_stats_name
make_label_stats = label_stats.make_label_stats
write_label_stats = label_stats.write_label_stats
read_label_stats = label_stats.read_label_stats


class EmptySelectionError(ValueError):
  """Nothing to train the student on: no prediction passes, or nothing was written."""


def check_complete(files) -> None:
  """Refuses selected files whose selection is unfinished or failed.

  Each shard renames its outputs into place as it finishes, so a student pointed at
  `selected-*` while other shards run, or after the cross-shard check failed, would
  silently train on part of the selection: files whose directory holds a
  `selection.json` that is not "complete" raise ValueError. Files without one (made by
  other tools) pass.
  """
  for directory in sorted({os.path.dirname(f) for f in files}):
    summary = _read_summary(directory)
    if summary is not None and not summary.get("complete"):
      raise ValueError(f"{os.path.join(directory, SUMMARY)}: the selection in {directory} is not complete (shards "
                       "still running, or one failed): finish noisy_student.select there "
                       "before training on its files")


def _read_summary(directory: str) -> dict | None:
  """The directory's selection.json, or None if it has none."""
  path = os.path.join(directory, SUMMARY)
  return fileio.read_json(path) if tf.io.gfile.exists(path) else None


def select_stats_name(shard_index: int, num_shards: int) -> str:
  return f"select-stats-{shard_index:05d}-of-{num_shards:05d}.json"


def at_least(histogram: np.ndarray) -> np.ndarray:
  """[C, 101] counts of images with confidence >= t/100 (reverse cumulative sum)."""
  return np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]


# --------------------------------------------------------------------------- pass 1


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
  """Filter and balance settings.

  Attributes:
    min_threshold: lowest confidence threshold (0.3 in the paper's code); a multiple
      of 0.01.
    images_per_class: K, the target number of images per class (ignored with
      balance=False).
    balance: False is a plain threshold filter: confidence >= min_threshold, one copy.
    upsample: False caps the copy factor at 1 (no duplication of small classes).
    seed: seeds the stochastic rounding and the output shuffle.
  """
  min_threshold: float = 0.3
  images_per_class: int | None = None
  balance: bool = True
  upsample: bool = True
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.min_threshold <= 1.0:
      raise ValueError(f"min_threshold must be in [0, 1], got {self.min_threshold}")
    if abs(self.min_threshold * 100 - round(self.min_threshold * 100)) > 1e-6:
      raise ValueError(f"min_threshold must be a multiple of 0.01, got {self.min_threshold}")
    if self.balance and (self.images_per_class is None or self.images_per_class < 1):
      raise ValueError("balancing needs images_per_class >= 1 (or use balance=False)")

  @property
  def min_bin(self) -> int:
    return int(round(self.min_threshold * 100))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-class decisions of pass 1 (arrays of length num_classes).

  Attributes:
    threshold_bin: int64; keep a record iff its confidence bin >= this (threshold =
      bin / 100).
    copy_factor: float64 x; a kept record is written int(x) + Bernoulli(frac(x)) times.
    count_before: all predictions of the class.
    count_kept: predictions at or above the threshold (total_count(c)).
    expected_after: count_kept * copy_factor, the expected number of output records.
  """
  config: SelectionConfig
  threshold_bin: np.ndarray
  copy_factor: np.ndarray
  count_before: np.ndarray
  count_kept: np.ndarray
  expected_after: np.ndarray
  confidence_histogram: np.ndarray  # [101] over all classes

  @property
  def thresholds(self) -> np.ndarray:
    return self.threshold_bin / 100.0

  def to_json(self) -> dict:
    return {
        "config": dataclasses.asdict(self.config),
        "num_classes": int(len(self.threshold_bin)),
        "total_before": int(self.count_before.sum()),
        "total_kept": int(self.count_kept.sum()),
        "total_expected_after": float(self.expected_after.sum()),
        "threshold": [round(float(t), 2) for t in self.thresholds],
        "copy_factor": [float(x) for x in self.copy_factor],
        "count_before": self.count_before.tolist(),
        "count_kept": self.count_kept.tolist(),
        "expected_after": [float(x) for x in self.expected_after],
        "confidence_histogram": self.confidence_histogram.tolist(),
    }


def plan_selection(histogram: np.ndarray, config: SelectionConfig) -> Plan:
  """Pass 1: per-class threshold and copy factor from [C, 101] confidence histograms."""
  histogram = np.asarray(histogram, np.int64)
  counts = at_least(histogram)                             # [C, 101], non-increasing in t
  num_classes = histogram.shape[0]
  if config.balance:
    k = config.images_per_class
    # count(>= t) >= K holds for a prefix t = 0..t*; walking down from 1.00 stops at t*.
    highest_ok = (counts >= k).sum(axis=1) - 1             # -1 when no t reaches K
    threshold = np.maximum(highest_ok, config.min_bin)
  else:
    threshold = np.full([num_classes], config.min_bin, np.int64)
  kept = counts[np.arange(num_classes), threshold]
  if config.balance:
    factor = np.where(kept > 0, config.images_per_class / np.maximum(kept, 1), 0.0)
    if not config.upsample:
      factor = np.minimum(factor, 1.0)
  else:
    factor = np.where(kept > 0, 1.0, 0.0)
  return Plan(config, threshold.astype(np.int64), factor.astype(np.float64),
              histogram.sum(axis=1), kept, kept * factor, histogram.sum(axis=0))


def num_copies(plan: Plan, labels, confidence, uniforms) -> np.ndarray:
  """Pass 2 decisions: how often each record is written.

  Args:
    labels: [n] int pseudo labels; confidence: [n] float32; uniforms: [n] float64 in
      [0, 1) from `record_uniforms`.
  Returns:
    [n] int64 copies (0 = dropped).
  """
  labels = np.asarray(labels, np.int64)
  keep = label_stats.confidence_bins(confidence) >= plan.threshold_bin[labels]
  x = np.where(keep, plan.copy_factor[labels], 0.0)
  whole = np.floor(x)
  return (whole + (np.asarray(uniforms) < (x - whole))).astype(np.int64)


def record_uniforms(keys: tf.Tensor, seed: int) -> tf.Tensor:
  """[n] float64 in [0, 1): a deterministic per-record draw from its key and the seed."""
  keyed = tf.strings.join([tf.constant(f"{seed}:"), keys])
  bucket = tf.strings.to_hash_bucket_fast(keyed, _HASH_BUCKETS)
  return tf.cast(bucket, tf.float64) / float(_HASH_BUCKETS)


def record_keys(ids: tf.Tensor, filenames: tf.Tensor, file_name: tf.Tensor,
                indices: tf.Tensor) -> tf.Tensor:
  """[n] string keys of the per-record draw.

  Args:
    ids / filenames: [n] string `image/id` / `image/filename` ("" when absent).
    file_name: scalar string, the prediction file's basename (the input's basename, so
      the same in every labelling directory).
    indices: [n] int64 positions of the records in that file.
  Returns:
    the id; else "filename:<image/filename>"; else "record:<file_name>:<index>".
  """
  by_filename = tf.strings.join(["filename:", filenames])
  by_position = tf.strings.join(["record:", file_name, ":", tf.strings.as_string(indices)])
  return tf.where(ids != "", ids, tf.where(filenames != "", by_filename, by_position))


def key_fingerprints(keys: tf.Tensor) -> tf.Tensor:
  """[n] int64 in [0, 2^62): what the duplicate check compares (then the keys)."""
  return tf.strings.to_hash_bucket_fast(keys, _KEY_BUCKETS)


# --------------------------------------------------------------------------- pass 2


_SELECT_SPEC = {
    schema.PSEUDO_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    schema.PSEUDO_CONFIDENCE: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    schema.ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    schema.FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _keyed_batches(files: list[str], batch_size: int) -> tf.data.Dataset:
  """Per-file batches (a batch never spans two files), in file order: the serialized
  records, their label and confidence, their draw keys, file and index in the file."""
  def per_file(path):
    name = tf.strings.regex_replace(path, r"^.*/", "")
    batches = tf.data.TFRecordDataset(path, buffer_size=8 << 20).batch(batch_size)
    return batches.enumerate().map(lambda k, serialized: (serialized, path, name, k))

  def parse(serialized, path, name, k):
    parsed = tf.io.parse_example(serialized, _SELECT_SPEC)
    index = k * batch_size + tf.range(tf.size(serialized, out_type=tf.int64))
    return {"serialized": serialized, "label": parsed[schema.PSEUDO_LABEL],
            "confidence": parsed[schema.PSEUDO_CONFIDENCE], "file": path, "index": index,
            "key": record_keys(parsed[schema.ID], parsed[schema.FILENAME], name, index)}
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).flat_map(per_file)
  return ds.map(parse, num_parallel_calls=2, deterministic=True)


def _fixed_buffers(ds: tf.data.Dataset) -> tf.data.Dataset:
  # Fixed parallelism and prefetch: AUTOTUNE grows buffers while the consumer lags,
  # and memory must not depend on how long the stream is.
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.prefetch(2).with_options(options)


def _decision_dataset(files: list[str], seed: int, batch_size: int) -> tf.data.Dataset:
  """(serialized, label, confidence, u, key fingerprint) batches, in file order."""
  def decide(b):
    return (b["serialized"], b["label"], b["confidence"], record_uniforms(b["key"], seed),
            key_fingerprints(b["key"]))
  return _fixed_buffers(_keyed_batches(files, batch_size).map(decide))


def _describe_key(key: str) -> str:
  if key.startswith("filename:"):
    return f"filename {key[len('filename:'):]!r}"
  if key.startswith("record:"):
    return f"record position {key[len('record:'):]!r}"
  return f"image/id {key!r}"


def raise_if_duplicate_keys(files: list[str], fingerprints, batch_size: int = 4096):
  """Reads `files` for the records with these key fingerprints; raises ValueError
  naming the key and its files if two records share a key (a mere fingerprint
  collision of two different keys is not an error)."""
  wanted = np.asarray(sorted(fingerprints), np.int64)
  found = collections.defaultdict(list)
  for b in _fixed_buffers(_keyed_batches(files, batch_size)).as_numpy_iterator():
    prints = key_fingerprints(tf.constant(b["key"])).numpy()
    for i in np.flatnonzero(np.isin(prints, wanted)):
      found[b["key"][i].decode("utf-8", "replace")].append(
          (b["file"].decode(), int(b["index"][i])))
  for key, where in found.items():
    if len(where) > 1:
      places = ", ".join(f"{f} (record {i})" for f, i in where[:4])
      raise ValueError(
          f"{_describe_key(key)} occurs {len(where)} times: {places}; the selection's "
          "per-record draw is keyed on it, so these would be kept or dropped together: "
          "give every record a unique image/id (or remove the duplicate files)")


class ShuffleWriter:
  """Streams records into `paths` in a seeded random order with bounded memory.

  A buffer of `buffer_size` records: once full, each incoming record replaces a random
  buffered one, which is written to a random output file (tf.data's shuffle, plus a
  random file). Memory is buffer_size records whatever the stream length; copies of one
  record land in different files or up to ~buffer_size positions apart.
  """

  def __init__(self, paths: list[str], *, buffer_size: int, seed):
    self._rng = np.random.default_rng(seed)
    self._writers = [tf.io.TFRecordWriter(p) for p in paths]
    self._buffer: list[bytes] = []
    self._size = max(1, buffer_size)
    self.written = np.zeros(len(paths), np.int64)

  def add(self, records) -> None:
    """Adds a sequence of serialized records."""
    records = list(records)
    fill = min(len(records), self._size - len(self._buffer))
    self._buffer.extend(records[:fill])
    rest = records[fill:]
    if not rest:
      return
    slots = self._rng.integers(0, self._size, size=len(rest))
    files = self._rng.integers(0, len(self._writers), size=len(rest))
    buffer, writers = self._buffer, self._writers
    for record, slot, f in zip(rest, slots.tolist(), files.tolist()):
      writers[f].write(buffer[slot])
      buffer[slot] = record
    np.add.at(self.written, files, 1)

  def close(self) -> None:
    """Flushes the buffer in random order and closes the files."""
    order = self._rng.permutation(len(self._buffer))
    files = self._rng.integers(0, len(self._writers), size=len(order))
    for i, f in zip(order.tolist(), files.tolist()):
      self._writers[f].write(self._buffer[i])
    np.add.at(self.written, files, 1)
    self._buffer = []
    for w in self._writers:
      w.close()


def select_shard(files: list[str], plan: Plan, out_paths: list[str], *,
                 shard_seed, buffer_size: int = 10000, batch_size: int = 4096,
                 progress=None) -> dict:
  """Pass 2 over `files`: writes the selected, duplicated, shuffled records.

  `out_paths` are written directly (wrap them in atomic paths). Returns per-class
  counts: "read", "above_threshold" (the filter passed), "selected" (>= 1 copy; the
  rest of the above-threshold records were down-sampled away) and "written" (with
  copies), plus "written_per_file" and "keys" (the sorted key fingerprints).

  Raises:
    ValueError: two records of `files` with one key (see `record_keys`).
  """
  num_classes = len(plan.threshold_bin)
  read = np.zeros(num_classes, np.int64)
  above = np.zeros(num_classes, np.int64)
  selected = np.zeros(num_classes, np.int64)
  written = np.zeros(num_classes, np.int64)
  writer = ShuffleWriter(out_paths, buffer_size=buffer_size, seed=shard_seed)
  dataset = _decision_dataset(files, plan.config.seed, batch_size)
  prints = []
  try:
    for serialized, labels, confidence, uniforms, keys in dataset.as_numpy_iterator():
      bad = (labels < 0) | (labels >= num_classes)
      if bad.any():
        raise ValueError(f"record with pseudo label {labels[bad][0]} outside "
                         f"[0, {num_classes}) in {files}: not a prediction file?")
      if not np.isfinite(confidence).all():
        raise ValueError(f"record with a non-finite pseudo-label probability in {files}")
      copies = num_copies(plan, labels, confidence, uniforms)
      read += np.bincount(labels, minlength=num_classes)
      passed = label_stats.confidence_bins(confidence) >= plan.threshold_bin[labels]
      above += np.bincount(labels[passed], minlength=num_classes)
      selected += np.bincount(labels[copies > 0], minlength=num_classes)
      written += np.bincount(labels, weights=copies, minlength=num_classes).astype(np.int64)
      rows = np.repeat(np.arange(len(copies)), copies)
      writer.add(serialized[rows])
      prints.append(keys)
      if progress is not None:
        progress(len(labels))
  finally:
    writer.close()
  keys = np.sort(np.concatenate(prints)) if prints else np.zeros([0], np.int64)
  repeated = keys[1:][keys[1:] == keys[:-1]]
  if repeated.size:
    raise_if_duplicate_keys(files, set(repeated[:10].tolist()), batch_size)
  return {"read": read, "above_threshold": above, "selected": selected, "written": written,
          "written_per_file": writer.written, "keys": np.unique(keys)}


# --------------------------------------------------------------------------- outputs


def output_names(shard_index: int, num_shards: int, files_per_shard: int) -> list[str]:
  """Global numbering: shard i writes selected-{i*J + j:05d}-of-{N*J:05d}.tfrecord."""
  total = num_shards * files_per_shard
  return [f"selected-{shard_index * files_per_shard + j:05d}-of-{total:05d}.tfrecord"
          for j in range(files_per_shard)]


_COUNT_KEYS = ("read", "above_threshold", "selected", "written")


def summarize(plan: Plan, stats: label_stats.LabelStats,
              shard_stats: list[dict] | None) -> dict:
  """selection.json: the plan, and the actual counts once every shard has finished.

  Per-class lists (index = class) are top-level keys, one line each on disk.
  """
  summary = {"format": "noisy_student.select.summary/1", "complete": shard_stats is not None,
             "num_prediction_files": len(stats.files),
             "num_label_shards": stats.num_shards,
             "num_corrupt_in_labelling": stats.num_corrupt}
  summary.update(plan.to_json())
  if shard_stats is not None:
    for key in _COUNT_KEYS:
      summary[f"actual_{key}"] = np.sum([s[key] for s in shard_stats], axis=0).tolist()
    summary["total_written"] = int(sum(summary["actual_written"]))
    summary["output_files"] = sorted(f for s in shard_stats for f in s["output_files"])
  return summary


def plot_summary(plan: Plan, path: str, actual_written=None) -> None:
  """A one-page PNG of what the teacher produced and what selection made of it."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = plan.config
  c = np.arange(len(plan.threshold_bin))
  after = plan.expected_after if actual_written is None else np.asarray(actual_written)
  fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
  ax = axes[0, 0]
  order = np.argsort(-plan.count_before, kind="stable")
  step = dict(where="mid", linewidth=1.2)
  ax.step(c, plan.count_before[order], label="predicted (all)", **step)
  ax.step(c, plan.count_kept[order], label="kept (conf >= threshold)", **step)
  ax.step(c, after[order], linestyle="--", label="after balancing" + (
      " (expected)" if actual_written is None else ""), **step)
  if cfg.balance:
    ax.axhline(cfg.images_per_class, color="k", linestyle=":", label=f"K = {cfg.images_per_class}")
  ax.set_yscale("symlog", linthresh=1)
  ax.set_ylim(0, 2.0 * max(1.0, float(plan.count_before.max()), float(np.max(after))))
  ax.set_xlabel("class, sorted by predicted count")
  ax.set_ylabel("images")
  ax.set_title("Per-class counts")
  ax.legend(fontsize=8)
  ax = axes[0, 1]
  ax.step(c, plan.thresholds[order], where="mid", color="C3")
  ax.axhline(cfg.min_threshold, color="k", linestyle=":", label=f"min_threshold {cfg.min_threshold}")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("class, sorted by predicted count")
  ax.set_ylabel("confidence threshold")
  ax.set_title("Chosen threshold per class")
  ax.legend(fontsize=8)
  ax = axes[1, 0]
  ax.bar(np.arange(101) / 100.0, plan.confidence_histogram, width=0.01, align="edge")
  ax.axvline(cfg.min_threshold, color="k", linestyle=":")
  ax.set_yscale("symlog", linthresh=1)
  ax.set_ylim(0, 2.0 * max(1.0, float(plan.confidence_histogram.max())))
  ax.set_xlabel("teacher confidence (max soft-label probability), bin width 0.01")
  ax.set_ylabel("images")
  ax.set_title("Confidence histogram, all classes")
  ax = axes[1, 1]
  factor = plan.copy_factor[order]
  ax.step(c, np.where(factor > 0, factor, np.nan), where="mid", color="C2")
  ax.axhline(1.0, color="k", linestyle=":")
  ax.set_yscale("log")
  ax.set_xlabel("class, sorted by predicted count")
  ax.set_ylabel("copy factor x (down < 1 < up)")
  ax.set_title("Sampling per class (classes with no kept image omitted)")
  mode = ("filter only" if not cfg.balance else
          f"balance to K={cfg.images_per_class}" + ("" if cfg.upsample else ", no upsampling"))
  fig.suptitle(
      f"{plan.count_before.sum():,} predictions, {len(c)} classes, {mode}: "
      f"{plan.count_kept.sum():,} kept, {int(round(float(np.sum(after)))):,} "
      f"{'written' if actual_written is not None else 'expected'}; "
      f"{int((plan.threshold_bin > cfg.min_bin).sum())} classes above min_threshold, "
      f"{int((plan.count_kept < (cfg.images_per_class or 0)).sum()) if cfg.balance else 0}"
      " classes short of K", fontsize=11)
  fig.tight_layout(rect=(0, 0, 1, 0.96))
  with job_io.atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      fig.savefig(f, format="png", dpi=90)
  plt.close(fig)


# --------------------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True)
class SelectJob:
  """One pass-2 job: shard `shard_index` of `num_shards` over the prediction files."""
  predictions: str
  output_dir: str
  shard_index: int = 0
  num_shards: int = 1
  files_per_shard: int = 1
  shuffle_buffer: int = 10000
  plan_only: bool = False
  label_offset: int = 0  # of the hidden labels, for samples.png's right/wrong frames


def keys_file_name(shard_index: int, num_shards: int) -> str:
  return f"select-keys-{shard_index:05d}-of-{num_shards:05d}.bin"


def run_selection(job: SelectJob, config: SelectionConfig, *, shard_files) -> dict:
  """Pass 1 (always, cheap) and pass 2 for one shard; returns the summary dict.

  Every shard recomputes the same plan from the stats files and writes selection.json
  and selection.png; the shard that finds all shards finished checks keys across
  shards and rewrites both with the actual counts. A finished shard (its select-stats
  file exists) is skipped on rerun. `shard_files(files, i, n)` splits the prediction
  files (data.input.pipeline.shard_files).

  Raises:
    ValueError: bad shard numbers; stats that do not form one labelling run (see
      `label_stats.read_label_stats`); an output directory of other settings;
      duplicate keys.
    EmptySelectionError: no prediction reaches its class's threshold, or (once all
      shards are done) nothing was written.
  """
  shards.check_shard(job.shard_index, job.num_shards)
  if job.files_per_shard < 1:
    raise ValueError(f"num_output_shards must be >= 1, got {job.files_per_shard}")
  stats = label_stats.read_label_stats(job.predictions)
  plan = plan_selection(stats.histogram, config)
  tf.io.gfile.makedirs(job.output_dir)
  job_io.remove_stale_temporaries(job.output_dir)   # A killed run's leftovers.
  identity = _identity(job, config, stats)
  _check_output_dir(job, identity)
  # A finished selection (same settings: checked above) keeps its actual counts.
  summary = _read_summary(job.output_dir)
  if not (summary and summary.get("complete")):
    summary = _write_summary(job, plan, stats, None)
  if plan.count_kept.sum() == 0:
    raise EmptySelectionError(
        f"empty selection: 0 of {int(plan.count_before.sum()):,} predictions reach "
        f"min_threshold {config.min_threshold}; the plan is in "
        f"{os.path.join(job.output_dir, SUMMARY)}")
  if job.plan_only:
    return summary
  marker = os.path.join(job.output_dir, select_stats_name(job.shard_index, job.num_shards))
  if tf.io.gfile.exists(marker):
    done = fileio.read_json(marker)
    if done["identity"] != identity:
      raise ValueError(f"{marker} was made with other settings or predictions; "
                       "use a fresh --output_dir")
    job_io.say(f"shard {job.shard_index}: already done ({marker})")
  else:
    _select_one_shard(job, plan, stats, identity, marker,
                      shard_files(stats.files, job.shard_index, job.num_shards))
  return _maybe_complete(job, plan, stats)


def _identity(job: SelectJob, config: SelectionConfig,
              stats: label_stats.LabelStats) -> dict:
  """What a shard's outputs depend on. Prediction files are named by their directory's
  basename and their own, so a rerun from another working directory or mount (the same
  files under another prefix) is the same selection."""
  names = [f"{os.path.basename(os.path.dirname(f))}/{os.path.basename(f)}"
           for f in stats.files]
  return {"config": dataclasses.asdict(config), "num_shards": job.num_shards,
          "files_per_shard": job.files_per_shard, "shuffle_buffer": job.shuffle_buffer,
          "predictions": names}


_OUTPUT_RE = re.compile(r"^selected-\d{5}-of-(\d{5})\.tfrecord$")
_MARKER_RE = re.compile(r"^select-(?:stats|keys)-\d{5}-of-(\d{5})\.(?:json|bin)$")


def _check_output_dir(job: SelectJob, identity: dict) -> None:
  """Pins the output directory to these settings (select-settings.json): the student
  reads every selected-* file there, so outputs of other settings must not be left
  beside the new ones. --plan_only only compares (it writes no records)."""
  settings = {"format": SELECT_SETTINGS_FORMAT,
              **{k: v for k, v in identity.items() if k != "predictions"},
              "predictions": job_io.fingerprint(identity["predictions"])}
  path = os.path.join(job.output_dir, SELECT_SETTINGS)
  if tf.io.gfile.exists(path) or not job.plan_only:
    if not tf.io.gfile.exists(path):
      _refuse_foreign_outputs(job)              # A directory from before this file.
    job_io.pin_settings(path, settings, "a selection")


def _refuse_foreign_outputs(job: SelectJob) -> None:
  total = job.num_shards * job.files_per_shard
  stale = []
  for name in sorted(tf.io.gfile.listdir(job.output_dir)):
    output, marker = _OUTPUT_RE.match(name), _MARKER_RE.match(name)
    if (output and int(output.group(1)) != total) or (
        marker and int(marker.group(1)) != job.num_shards):
      stale.append(name)
  if stale:
    raise ValueError(f"{job.output_dir} holds outputs of a selection with other shard "
                     f"counts ({', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}); "
                     "the student would read them with the new ones: use a fresh "
                     "--output_dir or delete this one")


def _select_one_shard(job, plan, stats, identity, marker, files) -> None:
  names = output_names(job.shard_index, job.num_shards, job.files_per_shard)
  paths = [os.path.join(job.output_dir, n) for n in names]
  expected = int(sum(plan.count_before)) * len(files) // max(1, len(stats.files))
  start = time.time()
  with job_io.progress(total=expected, unit="rec", unit_scale=True, mininterval=2.0,
                       desc=f"select {job.shard_index}/{job.num_shards}") as bar:
    with contextlib.ExitStack() as stack:
      tmps = [stack.enter_context(job_io.atomic_path(p)) for p in paths]
      counts = select_shard(files, plan, tmps, buffer_size=job.shuffle_buffer,
                            shard_seed=[plan.config.seed, job.shard_index],
                            progress=bar.update)
  seconds = time.time() - start
  keys_name = keys_file_name(job.shard_index, job.num_shards)
  offsets = _write_keys(os.path.join(job.output_dir, keys_name), counts["keys"])
  record = {"format": SELECT_STATS_FORMAT, "identity": identity,
            "shard_index": job.shard_index, "num_shards": job.num_shards,
            "input_files": files, "output_files": names,
            "records_per_output_file": counts["written_per_file"].tolist(),
            **{k: counts[k].tolist() for k in _COUNT_KEYS}, "seconds": round(seconds, 3),
            "records_per_second": round(int(counts["read"].sum()) / max(seconds, 1e-9), 1),
            "keys_file": keys_name, "key_offsets": offsets}
  job_io.write_text_atomic(marker, job_io.dumps_compact(record))
  job_io.say(f"shard {job.shard_index}: read {int(counts['read'].sum()):,}, selected "
             f"{int(counts['selected'].sum()):,}, wrote {int(counts['written'].sum()):,} "
             f"records into {len(names)} file(s) in {seconds:.1f}s")


def _write_keys(path: str, keys: np.ndarray) -> list[int]:
  """Writes sorted key fingerprints (raw int64); returns where each of the
  _KEY_PARTITIONS value ranges starts (and the end), for the cross-shard check."""
  bounds = np.arange(_KEY_PARTITIONS, dtype=np.int64) * (_KEY_BUCKETS // _KEY_PARTITIONS)
  offsets = np.searchsorted(keys, bounds).tolist() + [len(keys)]
  with job_io.atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(np.asarray(keys, "<i8").tobytes())
  return offsets


def _read_keys(path: str, start: int, stop: int) -> np.ndarray:
  with tf.io.gfile.GFile(path, "rb") as f:
    f.seek(start * 8)
    return np.frombuffer(f.read((stop - start) * 8), "<i8")


def _check_keys_across_shards(job: SelectJob, shard_stats: list[dict]) -> None:
  """Duplicate keys in different shards; one value range at a time (bounded memory)."""
  if len(shard_stats) < 2:
    return
  if any("key_offsets" not in s for s in shard_stats):
    job_io.say(f"{job.output_dir}: shards selected by an older version: keys not "
               "checked across shards")
    return
  for p in range(_KEY_PARTITIONS):
    parts = [_read_keys(os.path.join(job.output_dir, s["keys_file"]),
                        s["key_offsets"][p], s["key_offsets"][p + 1]) for s in shard_stats]
    merged = np.sort(np.concatenate(parts))
    repeated = merged[1:][merged[1:] == merged[:-1]]
    if repeated.size:
      suspects = repeated[:10]
      files = [f for s, part in zip(shard_stats, parts) if np.isin(part, suspects).any()
               for f in s["input_files"]]
      raise_if_duplicate_keys(files, set(suspects.tolist()))


def _maybe_complete(job, plan, stats) -> dict:
  paths = [os.path.join(job.output_dir, select_stats_name(i, job.num_shards))
           for i in range(job.num_shards)]
  if not all(tf.io.gfile.exists(p) for p in paths):
    return summarize(plan, stats, None)
  shard_stats = [fileio.read_json(p) for p in paths]
  _check_keys_across_shards(job, shard_stats)
  written = sum(int(np.sum(s["written"])) for s in shard_stats)
  if written == 0:
    raise EmptySelectionError(
        f"empty selection: {int(plan.count_kept.sum()):,} predictions passed the "
        "thresholds, but the stochastic rounding of copy factors < 1 wrote 0 records "
        f"(all {job.num_shards} shard(s) done, in {job.output_dir})")
  return _write_summary(job, plan, stats, shard_stats)


def _write_summary(job, plan, stats, shard_stats) -> dict:
  summary = summarize(plan, stats, shard_stats)
  if shard_stats is not None:  # Complete: the selected records can be shown.
    classes = samples.shown_classes(stats.num_classes)
    shown = samples.write_samples(
        [os.path.join(job.output_dir, f) for f in summary["output_files"]],
        os.path.join(job.output_dir, "samples.png"), stats.num_classes,
        label_offset=job.label_offset)
    summary["samples_png"] = {"classes": classes, "images": shown}
  job_io.write_text_atomic(os.path.join(job.output_dir, SUMMARY),
                           job_io.dumps_compact(summary))
  plot_summary(plan, os.path.join(job.output_dir, "selection.png"),
               actual_written=summary.get("actual_written"))
  return summary
