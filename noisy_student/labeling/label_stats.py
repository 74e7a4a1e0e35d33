"""The pseudo-label stats: what noisy_student.label leaves for noisy_student.select.

Paper Sec. 3.1 ("Data filtering and balancing") picks a confidence threshold and a copy
factor per class from counts of the teacher's predictions; the labeller counts them while
it writes, so the selector never has to read a record to plan. This module is that
contract, imported by both sides (the labeller needs nothing of the selector):

  label-settings.json             LABEL_SETTINGS: the labelling run (settings, shard
                                  count, input basenames), written by the first job
  stats-{i:05d}-of-{N:05d}.json   one per labelling shard (`label_stats_name`): the
                                  shard's [C, 101] histogram, its files, corrupt records
  _files/<input basename>.json    one per input file (`file_stats_path`): that file's
                                  histogram (sparse) and corrupt records; written after
                                  its predictions, so its presence means "done"

Histograms count predictions per predicted class c and confidence bin b: the bin of a
confidence is the largest b in 0..100 with float32(confidence) >= float32(b / 100)
(`confidence_bins`, also pass 2's decision rule, so both passes agree record for record).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from data import fileio
from noisy_student.common import job_io

NUM_BINS = 101  # Thresholds 0.00, 0.01, ..., 1.00.
STATS_FORMAT = "noisy_student.label.stats/1"
LABEL_SETTINGS = "label-settings.json"
LABEL_SETTINGS_FORMAT = "noisy_student.label.settings/1"
FILES_DIR = "_files"
# Predictions are stored at T = 1, the teacher's own distribution: selection filters on
# its confidence, and the trainer's --teacher_temperature is the one sharpening.
TEMPERATURE = 1.0
_STATS_GLOB = "stats-*-of-*.json"
_STATS_RE = re.compile(r"^stats-(\d{5})-of-(\d{5})\.json$")
_BIN_EDGES = (np.arange(NUM_BINS) / 100.0).astype(np.float32)


# --------------------------------------------------------------------------- histograms


def confidence_bins(confidence) -> np.ndarray:
  """Histogram bin of each confidence: the largest b with c >= float32(b / 100).

  Args:
    confidence: [n] float32 confidences (other dtypes are cast to float32) in [0, 1].
  Returns:
    [n] int64 bins in [0, 100] (values below 0 go to bin 0).
  """
  c = np.asarray(confidence, dtype=np.float32)
  if not np.isfinite(c).all():  # searchsorted would put NaN in bin 100.
    raise ValueError(f"non-finite confidence(s): {c[~np.isfinite(c)][:5].tolist()}")
  bins = np.searchsorted(_BIN_EDGES, c, side="right") - 1
  return np.maximum(bins, 0).astype(np.int64)


def new_histogram(num_classes: int) -> np.ndarray:
  return np.zeros([num_classes, NUM_BINS], np.int64)


def accumulate(histogram: np.ndarray, labels, confidence) -> None:
  """Adds images (predicted class `labels` [n] int, `confidence` [n]) to [C, 101]."""
  np.add.at(histogram, (np.asarray(labels, np.int64), confidence_bins(confidence)), 1)


def sparse(histogram: np.ndarray) -> list:
  """[[class, bin, count], ...] of the non-zero cells (the per-file stats' form)."""
  c, b = np.nonzero(histogram)
  return [[int(i), int(j), int(histogram[i, j])] for i, j in zip(c, b)]


def dense(triples: list, num_classes: int) -> np.ndarray:
  """The [C, 101] int64 histogram of `sparse`'s triples."""
  h = new_histogram(num_classes)
  for c, b, n in triples:
    h[c, b] = n
  return h


# --------------------------------------------------------------------------- names


def label_stats_name(shard_index: int, num_shards: int) -> str:
  return f"stats-{shard_index:05d}-of-{num_shards:05d}.json"


def is_label_stats_name(name: str) -> bool:
  return bool(_STATS_RE.match(name))


def file_stats_path(output_dir: str, input_basename: str) -> str:
  return os.path.join(output_dir, FILES_DIR, input_basename + ".json")


def _stats_files(directory: str) -> list[str]:
  """The shard stats files in `directory` (unsorted; other stats-* names excluded)."""
  return [p for p in tf.io.gfile.glob(os.path.join(directory, _STATS_GLOB))
          if is_label_stats_name(os.path.basename(p))]


# --------------------------------------------------------------------------- writing


def run_settings(settings: dict, num_shards: int, input_basenames: list[str]) -> dict:
  """label-settings.json's content: what every job of one labelling run shares.

  Input basenames (unique per run), not paths: the same inputs from another mount or
  working directory are the same inputs.
  """
  return {"format": LABEL_SETTINGS_FORMAT, "settings": settings, "num_shards": num_shards,
          "input_files": job_io.fingerprint(input_basenames)}


def check_earlier_stats(output_dir: str, num_shards: int, settings: dict) -> None:
  """Refuses shard stats of another run in a directory without label-settings.json
  (one from before that file existed): select would sum them with the new ones."""
  for stats_path in sorted(_stats_files(output_dir)):
    stats = fileio.read_json(stats_path)
    if stats["num_shards"] != num_shards or stats["settings"] != settings:
      raise ValueError(
          f"{stats_path}: stats of an earlier labelling run with other settings "
          f"({job_io.settings_diff(stats['settings'], settings)}; num_shards "
          f"{stats['num_shards']} vs {num_shards}); use a fresh --output_dir or "
          "delete this one")


def make_file_stats(*, input_path: str, output: str, settings: dict,
                    histogram: np.ndarray, corrupt: list[dict], seconds: float) -> dict:
  """The stats of one labelled input file (`file_stats_path`).

  Args:
    input_path: the input file, as given; output: the prediction file's basename.
    histogram: [C, 101] int counts (stored sparse).
    corrupt: {"file", "index", "id", "error"} per corrupt record.
  """
  return {"input": input_path, "output": output, "settings": settings,
          "num_images": int(histogram.sum()), "num_corrupt": len(corrupt),
          "corrupt": corrupt, "seconds": round(seconds, 3),
          "histogram_sparse": sparse(histogram)}


def write_file_stats(path: str, stats: dict) -> None:
  job_io.write_json_atomic(path, stats)


def read_file_stats(path: str, settings: dict) -> dict | None:
  """A finished file's stats; None if it is not done yet.

  Raises:
    ValueError: it was labelled with other settings.
  """
  if not tf.io.gfile.exists(path):
    return None
  done = fileio.read_json(path)
  if done["settings"] != settings:
    raise ValueError(f"{path} was labelled with other settings ({done['settings']}) than "
                     f"now ({settings}); use a fresh --output_dir")
  return done


def make_label_stats(*, shard_index: int, num_shards: int, histogram: np.ndarray,
                     files: list[dict], corrupt: list[dict], settings: dict) -> dict:
  """The stats file of one labelling shard (written by noisy_student.label).

  Args:
    histogram: [C, 101] int counts per predicted class and confidence bin.
    files: per input file {"input": path, "output": basename in the same directory as
      the stats file, "num_images": int, "num_corrupt": int}.
    corrupt: {"file", "index", "id", "error"} per corrupt record (not in any output).
    settings: teacher, temperature, storage, ... (recorded for provenance).
  """
  histogram = np.asarray(histogram, np.int64)
  return {
      "format": STATS_FORMAT, "shard_index": shard_index, "num_shards": num_shards,
      "num_classes": int(histogram.shape[0]), "num_images": int(histogram.sum()),
      "num_corrupt": len(corrupt), "settings": settings,
      "bin_rule": "bin = largest b in 0..100 with float32(confidence) >= "
                  "float32(b / 100); count(confidence >= b/100) = sum(histogram[c][b:])",
      "class_counts": histogram.sum(axis=1).tolist(), "files": files,
      "corrupt_records": corrupt, "histogram": histogram.tolist()}


def merge_file_stats(*, shard_index: int, num_shards: int, settings: dict,
                     num_classes: int, inputs: list[str], file_stats: list[dict]) -> dict:
  """A shard's stats (`make_label_stats` + "seconds") from its files' stats.

  Args:
    inputs: the shard's input files, in order; file_stats: each one's stats.
  """
  hist, files, corrupt, seconds = new_histogram(num_classes), [], [], 0.0
  for path, done in zip(inputs, file_stats):
    hist += dense(done["histogram_sparse"], num_classes)
    files.append({"input": path, "output": done["output"], "num_images": done["num_images"],
                  "num_corrupt": done["num_corrupt"]})
    corrupt.extend(done["corrupt"])
    seconds += done["seconds"]
  stats = make_label_stats(shard_index=shard_index, num_shards=num_shards, histogram=hist,
                           files=files, corrupt=corrupt, settings=settings)
  stats["seconds"] = round(seconds, 3)
  return stats


def write_label_stats(path: str, stats: dict) -> None:
  job_io.write_text_atomic(path, job_io.dumps_compact(stats))


# --------------------------------------------------------------------------- reading


@dataclasses.dataclass
class LabelStats:
  """What pass 1 knows about one labelling run (summed over its stats files)."""
  histogram: np.ndarray            # [C, 101] int64
  files: list[str]                 # prediction TFRecords, absolute, sorted
  num_corrupt: int
  num_shards: int
  stats_files: list[str]

  @property
  def num_classes(self) -> int:
    return self.histogram.shape[0]


def _stats_paths(predictions: str) -> tuple[list[str], set[str] | None]:
  """Stats files for a directory, or for the directories of a pattern's matches."""
  if tf.io.gfile.isdir(predictions):
    return _stats_files(predictions), None
  matched = set(fileio.list_files(predictions))
  dirs = sorted(set(os.path.dirname(f) for f in matched))
  paths = []
  for d in dirs:
    paths.extend(_stats_files(d))
  return paths, matched


def read_label_stats(predictions: str) -> LabelStats:
  """Pass 1 input: sums the stats files of a labelling run; reads no records.

  Args:
    predictions: the labelling output directory, or a glob (or comma-separated globs)
      of prediction TFRecords; their stats files are found in the same directories and
      must describe exactly the matched files.
  Raises:
    ValueError: no stats files, a missing shard, mixed class counts, stats of two
      labelling runs in one directory, sharpened predictions (T != 1), or stats that
      do not describe the matched files.
  """
  paths, matched = _stats_paths(predictions)
  paths = sorted(paths)
  if not paths:
    raise ValueError(f"no label stats files ({_STATS_GLOB}) for {predictions!r}: "
                     "run noisy_student.label on every shard first")
  hist, files, corrupt, runs = None, [], 0, {}
  for path in paths:
    stats = fileio.read_json(path)
    if stats.get("format") != STATS_FORMAT:
      raise ValueError(f"{path}: not a {STATS_FORMAT} file")
    _check_temperature(path, stats.get("settings") or {})
    h = np.asarray(stats["histogram"], np.int64)
    if hist is None:
      hist = np.zeros_like(h)
    if h.shape != hist.shape:
      raise ValueError(f"{path}: histogram shape {h.shape} != {hist.shape} "
                       "(stats from teachers with different class counts)")
    hist += h
    corrupt += int(stats["num_corrupt"])
    directory = os.path.dirname(path)
    files.extend(os.path.join(directory, f["output"]) for f in stats["files"])
    runs.setdefault(directory, []).append((path, stats))
  total_shards = sum(_check_one_run(d, run) for d, run in runs.items())
  repeated = sorted(f for f, n in collections.Counter(files).items() if n > 1)
  if repeated:
    raise ValueError(f"prediction files listed by two stats files: {repeated[:3]}")
  files = sorted(files)
  if matched is not None and set(files) != matched:
    extra = sorted(matched - set(files))[:3]
    lacking = sorted(set(files) - matched)[:3]
    raise ValueError(f"{predictions!r} does not match the files the stats describe "
                     f"(matched but not in stats: {extra}; in stats but not matched: "
                     f"{lacking}); pass the prediction directory instead")
  return LabelStats(hist, files, corrupt, total_shards, paths)


def _check_temperature(path: str, settings: dict) -> None:
  t = float(settings.get("temperature", TEMPERATURE))
  if t != TEMPERATURE:
    raise ValueError(f"{path}: predictions sharpened at temperature {t:g}; selection "
                     "filters on the teacher's T = 1 confidence: relabel them, and pass "
                     "the temperature to noisy_student.train --teacher_temperature")


def _check_one_run(directory: str, run: list) -> int:
  """The stats files of one directory form one complete labelling run; its shards."""
  pinned_path = os.path.join(directory, LABEL_SETTINGS)
  pinned = fileio.read_json(pinned_path) if tf.io.gfile.exists(pinned_path) else None
  for path, stats in run:
    if pinned is not None and stats["num_shards"] != pinned["num_shards"]:
      raise ValueError(f"{path}: stats of a labelling run with {stats['num_shards']} "
                       f"shards, but {pinned_path} says {pinned['num_shards']}: a stale "
                       "file of an earlier run; label into a fresh directory")
    if pinned is not None and stats["settings"] != pinned["settings"]:
      raise ValueError(f"{path}: made with other settings than {pinned_path} "
                       f"({job_io.settings_diff(pinned['settings'], stats['settings'])})")
  counts = sorted({stats["num_shards"] for _, stats in run})
  if len(counts) > 1:
    raise ValueError(f"{directory} holds stats of two labelling runs (with "
                     f"{' and '.join(map(str, counts))} shards): their predictions would "
                     "be counted twice; label into a fresh directory")
  n = counts[0]
  missing = sorted(set(range(n)) - {stats["shard_index"] for _, stats in run})
  if missing:
    raise ValueError(f"{directory}: stats for shards {missing[:10]} of {n} are missing "
                     "(labelling incomplete)")
  return n
