r"""Writes an image source as sharded TFRecords in the shared schema (`data/records/schema.py`).

One process writes every file:

    python -m data.make_tfrecords --source=fashion_mnist:train --output_dir=/tmp/fmnist \
        --num_shards=16 --seed=0

or N independent jobs each write their own files (here 100 jobs of 300 files, 30,000
in all), each run with its own `--shard_index` (`auto`: from the scheduler, see
data/records/shards.py):

    python -m data.make_tfrecords --source=folder:gs://B/raw --split_name=unlabeled \
        --output_dir=gs://B/unlabeled --num_shards=100 --num_output_shards=300 \
        --shard_index=auto

Sources: `fashion_mnist:train|test`, `folder:PATH`, `tfds:NAME/SPLIT` (`data/records/sources.py`).
The flags are `RecordsConfig`'s fields (`data.config_flags`).

Output, in `--output_dir`, with T = num_shards * num_output_shards files in all:
  * `{split}-{g:05d}-of-{T:05d}.tfrecord`, each written under a temporary name and
    renamed when complete (never seen half-written). Which image goes to which file:
    - one process, listed sources (Fashion-MNIST, folders): the items are shuffled with
      `--seed` and cut into T contiguous chunks, written in parallel threads. The files
      depend only on (source, seed, T): the same command writes byte-identical files.
      Files of the same split left by an earlier run with another T are removed.
    - job k of N, listed sources: image -> file hash(seed, image id) mod T; job k writes
      files k*F .. k*F+F-1 (F = num_output_shards). It streams the listing (one folder at
      a time) and keeps only the names of its own images, ordered within a file by the
      same hash (a seeded shuffle). Deterministic too, but not the same files as one
      process writes: a permutation needs the whole list, which the jobs avoid holding.
    - TFDS, either mode: file g holds the g-th of T contiguous, nearly equal runs of the
      split in TFDS's order (shuffled by TFDS when it prepared the data set), streamed
      as TFDS reads it; `--seed` is not used. One process writes the same bytes as the
      N jobs together.
  * one process: `{split}_summary.json`: counts per class, class names, skipped images
    (with reasons), files, timing. (`_`, not `-`, so the glob `{split}-*` matches only
    shards.)
  * job k: `{split}_summary-{k:05d}-of-{N:05d}.json`, the same counts for its files,
    rewritten as each file completes. A rerun of the job (after preemption) skips the
    files it lists as done; the settings it holds must match. The job that finds all N
    summaries complete writes the combined `{split}_summary.json` (rerunning any
    finished job writes it again, in seconds).

Images that cannot be decoded (folder and TFDS sources) are skipped, counted and listed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import re
import threading
import time

import numpy as np
import tensorflow as tf
import tqdm

from data import cli
from data import config_flags
from data import fileio
from data.config_flags import setting
from data.records import schema
from data.records import shards
from data.records import sources


@dataclasses.dataclass(frozen=True)
class RecordsConfig:
  """The flags of `python -m data.make_tfrecords` (`data.config_flags`)."""
  source: str = setting(None, "fashion_mnist:train|test, folder:PATH or tfds:NAME/SPLIT.",
                        required=True)
  output_dir: str = setting(None, "Where the shards and the summary go.", required=True)
  num_shards: int = setting(16, "Number of output shards; with --shard_index, the number "
                            "of jobs, each writing --num_output_shards files (files in "
                            "all: num_shards * num_output_shards).")
  shard_index: str | None = setting(None, shards.SHARD_INDEX_HELP + " Unset: this one process "
                                    "writes every shard.")
  num_output_shards: int = setting(1, "Output files per shard (per job).")
  seed: int = setting(0, "Seed of the shuffle before sharding.")
  split_name: str | None = setting(None, "File prefix; default: the source's split "
                                   "(train/test for Fashion-MNIST, the TFDS split, train "
                                   "for folders).")
  num_workers: int = setting(0, "Writer threads; 0: min(files to write, CPUs).")
  max_examples: int = setting(0, "Keep only a seeded random subset of this many images "
                              "(TFDS: the first ones; 0: all).")
  fashion_mnist_dir: str = setting(sources.DEFAULT_FASHION_MNIST_DIR,
                                   "Directory with the Fashion-MNIST IDX .gz files.")
  cache_dir: str = setting(sources.DEFAULT_CACHE_DIR,
                           "Where missing Fashion-MNIST files are downloaded to.")
  tfds_data_dir: str | None = setting(None, "TFDS data_dir (default: TFDS's own).")
  tfds_manual_dir: str | None = setting(None, "TFDS manual_dir: where manually downloaded "
                                        "files are (imagenet2012's tars).")

  def __post_init__(self):
    shards.check_num_shards(self.num_shards)
    for name, low in (("num_output_shards", 1), ("max_examples", 0), ("num_workers", 0)):
      if getattr(self, name) < low:
        raise ValueError(f"--{name} must be >= {low}, got {getattr(self, name)}")


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def summary_name(split: str) -> str:
  return f"{split}_summary.json"


def job_summary_name(split: str, shard_index: int, num_shards: int) -> str:
  return f"{split}_summary-{shard_index:05d}-of-{num_shards:05d}.json"


def assign_shards(num_items: int, num_shards: int, seed: int) -> list[np.ndarray]:
  """Item indices of each shard: a seeded permutation cut into contiguous chunks."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  order = np.random.default_rng(seed).permutation(num_items)
  return np.array_split(order, num_shards)


def stable_hash(seed: int, image_id: str) -> int:
  """A 64-bit hash of (seed, image id), the same in every process and on every machine."""
  digest = hashlib.sha256(f"{seed}/{image_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big")


def serialize(item: sources.Item, encoded: sources.Encoded) -> bytes:
  features = schema.image_features(
      encoded.data, item.image_id, item.label, image_format=encoded.image_format,
      height=encoded.height, width=encoded.width, filename=item.filename)
  # deterministic=True sorts the feature map, so equal inputs give equal bytes.
  return schema.make_example(features).SerializeToString(deterministic=True)


def _write_shard(source, items, path: str, progress) -> dict:
  """Writes one file from `items` (any iterable, consumed once); returns its counts per
  label and its skipped images, as JSON-ready dicts."""
  counts = collections.Counter()
  skipped = []
  n = 0
  with fileio.atomic_path(path) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      for n, item in enumerate(items, 1):
        try:
          encoded = source.load(item)
        except sources.CorruptImage as e:
          skipped.append({"id": item.image_id, "error": str(e)})
        else:
          writer.write(serialize(item, encoded))
          counts[item.label] += 1
        if n % 256 == 0:
          progress(256)
  progress(n % 256)
  return {"num_records": sum(counts.values()),
          "counts_per_class": {str(k): v for k, v in sorted(counts.items())},
          "skipped": skipped}


def remove_stale_shards(output_dir: str, split: str, keep: set[str]) -> list[str]:
  """Deletes `{split}-*-of-*.tfrecord` files not written by this run (another N)."""
  pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord$")
  stale = [f for f in tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord"))
           if pattern.search(os.path.basename(f)) and os.path.basename(f) not in keep]
  for f in stale:
    logging.warning("removing stale shard %s", f)
    tf.io.gfile.remove(f)
  return sorted(stale)


# ------------------------------------------------------------------------------ plans
# A plan is a list of (file index, its items: an iterable consumed once, their count).


def _subset(items: list, seed: int, max_examples: int) -> list:
  """A seeded random subset of `max_examples` items, in source order."""
  if 0 < max_examples < len(items):
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:max_examples])
    items = [items[i] for i in keep]
  return items


def _streamed_plan(source, total: int, files, max_examples: int) -> list:
  ranges = source.file_ranges(total, max_examples)
  return [(g, source.iter_range(*ranges[g]), ranges[g][2]) for g in files]


def single_process_plan(source, total: int, seed: int, max_examples: int) -> list:
  """All T files: TFDS's contiguous runs, or a seeded permutation cut into T chunks."""
  if sources.is_streamed(source):
    return _streamed_plan(source, total, range(total), max_examples)
  items = _subset(source.items(), seed, max_examples)
  return [(g, [items[i] for i in idx], len(idx))
          for g, idx in enumerate(assign_shards(len(items), total, seed))]


def job_plan(source, total: int, files, seed: int, max_examples: int,
             show_progress: bool = False) -> list:
  """The files `files` of T: TFDS's contiguous runs, or the images whose hash lands in
  them, streamed from the listing (only their names are kept), in hash order."""
  if sources.is_streamed(source):
    return _streamed_plan(source, total, files, max_examples)
  if max_examples:
    raise ValueError("--max_examples needs the whole list of images: use it without "
                     "--shard_index")
  buckets = {g: [] for g in files}
  listing = tqdm.tqdm(source.iter_items(), unit="name", desc="listing",
                      disable=not show_progress)
  for item in listing:
    key = stable_hash(seed, item.image_id)
    if key % total in buckets:
      buckets[key % total].append((key, item.image_id, item))
  plan = []
  for g, entries in buckets.items():
    entries.sort(key=lambda e: e[:2])
    plan.append((g, [item for _, _, item in entries], len(entries)))
  return plan


def write_plan(source, plan: list, output_dir: str, names: dict, *, num_workers: int = 0,
               show_progress: bool = True, desc: str = "", on_done=None) -> dict:
  """Writes the files of `plan` in parallel threads; returns {file index: its counts}.

  `on_done(g, counts)` runs (in the writer's thread) after file g is renamed into place.
  """
  if not plan:
    return {}
  fileio.makedirs(output_dir)
  bar = tqdm.tqdm(total=sum(n for _, _, n in plan), unit="img", desc=desc,
                  disable=not show_progress)
  lock = threading.Lock()

  def progress(n):
    with lock:
      bar.update(n)

  def write(g, items):
    result = _write_shard(source, items, os.path.join(output_dir, names[g]), progress)
    if on_done:
      on_done(g, result)
    return result

  workers = num_workers or min(len(plan), os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {g: pool.submit(write, g, items) for g, items, _ in plan}
    results = {g: f.result() for g, f in futures.items()}
  bar.close()
  return results


# ---------------------------------------------------------------------------- summaries


def _combined(source_name: str, split: str, settings: dict, class_names, names: list,
              results: list, **extra) -> dict:
  """The `{split}_summary.json` of files `names` with per-file counts `results`."""
  counts = collections.Counter()
  for r in results:
    counts.update({int(k): v for k, v in r["counts_per_class"].items()})
  skipped = sorted((s for r in results for s in r["skipped"]), key=lambda s: s["id"])
  return {
      "source": source_name,
      "split": split,
      **settings,
      "files": names,
      "num_records": sum(counts.values()),
      "num_skipped": len(skipped),
      "skipped": skipped,
      "class_names": class_names,
      "num_classes": len(class_names) if class_names else 0,
      "counts_per_class": {str(k): v for k, v in sorted(counts.items())},
      "records_per_shard": [r["num_records"] for r in results],
      **extra,
  }


def _settings_diff(found: dict, wanted: dict) -> str:
  return "; ".join(f"{k}: {found.get(k)!r} there vs {wanted.get(k)!r}"
                   for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k))


def _assignment(source, jobs: bool) -> str:
  if sources.is_streamed(source):
    return "contiguous"
  return "hash" if jobs else "permutation"


def merge_job_summaries(output_dir: str, split: str, num_shards: int) -> dict | None:
  """Writes `{split}_summary.json` from the N job summaries once all are complete.

  Returns:
    The combined summary, or None while a job summary is missing or incomplete.
  Raises:
    ValueError: two job summaries hold different settings.
  """
  paths = {}
  pattern = re.compile(re.escape(split) + rf"_summary-(\d{{5}})-of-{num_shards:05d}\.json$")
  for path in tf.io.gfile.glob(os.path.join(output_dir, f"{split}_summary-*.json")):
    match = pattern.search(os.path.basename(path))
    if match:
      paths[int(match.group(1))] = path
  if len(paths) != num_shards:
    return None
  jobs = [fileio.read_json(paths[k]) for k in range(num_shards)]
  if not all(job["complete"] for job in jobs):
    return None
  for k, job in enumerate(jobs):
    if job["settings"] != jobs[0]["settings"]:
      raise ValueError(f"{paths[k]} holds other settings than {paths[0]} "
                       f"({_settings_diff(job['settings'], jobs[0]['settings'])}); rerun "
                       "that job with the same flags")
  files = {name: r for job in jobs for name, r in job["files"].items()}
  names = sorted(files)
  settings = dict(jobs[0]["settings"])
  summary = _combined(settings.pop("source"), settings.pop("split"), settings,
                      jobs[0]["class_names"], names, [files[n] for n in names],
                      removed_stale_shards=[],
                      seconds=round(sum(job["seconds"] for job in jobs), 2))
  fileio.write_json_atomic(os.path.join(output_dir, summary_name(split)), summary)
  return summary


# --------------------------------------------------------------------------------- runs


def make_tfrecords(source, output_dir: str, *, num_shards: int, seed: int,
                   split_name: str | None = None, num_workers: int = 0,
                   max_examples: int = 0, show_progress: bool = True,
                   shard_index: int | None = None, num_output_shards: int = 1) -> dict:
  """Writes `source` as TFRecord files plus summaries (see the module docstring).

  `max_examples` > 0 keeps a seeded random subset of that many items (in source order;
  TFDS: the first ones), for smoke runs and quick experiments on real data.
  `shard_index` None: this process writes all num_shards * num_output_shards files and
  returns `{split}_summary.json`'s dict. Else it is job `shard_index` of `num_shards`,
  writes its num_output_shards files and returns its job summary (with `merged`: the
  combined summary, when this job found every job complete, else None).
  """
  if shard_index is not None:
    return _run_job(source, output_dir, shard_index=shard_index, num_shards=num_shards,
                    seed=seed, split_name=split_name, num_workers=num_workers,
                    max_examples=max_examples, show_progress=show_progress,
                    num_output_shards=num_output_shards)
  start = time.time()
  split = split_name or source.split
  total = num_shards * num_output_shards
  plan = single_process_plan(source, total, seed, max_examples)
  names = {g: shard_name(split, g, total) for g in range(total)}
  fileio.makedirs(output_dir)
  results = write_plan(source, plan, output_dir, names, num_workers=num_workers,
                       show_progress=show_progress, desc=split)
  stale = remove_stale_shards(output_dir, split, set(names.values()))
  settings = {"seed": seed, "num_shards": num_shards, "num_output_shards": num_output_shards,
              "max_examples": max_examples, "assignment": _assignment(source, False)}
  summary = _combined(source.name, split, settings, source.class_names,
                      [names[g] for g in range(total)], [results[g] for g in range(total)],
                      removed_stale_shards=[os.path.basename(f) for f in stale],
                      seconds=round(time.time() - start, 2))
  fileio.write_json_atomic(os.path.join(output_dir, summary_name(split)), summary)
  return summary


def _job_state(path: str, settings: dict, output_dir: str) -> dict:
  """{file name: counts} of the files an earlier run of this job finished (and that
  still exist); a ValueError when that run had other settings."""
  if not tf.io.gfile.exists(path):
    return {}
  found = fileio.read_json(path)
  if found.get("settings") != settings:
    diff = _settings_diff(found.get("settings", {}), settings)
    raise ValueError(f"{path} was written with other settings ({diff} now); use a fresh "
                     "--output_dir or delete it")
  return {name: r for name, r in found["files"].items()
          if tf.io.gfile.exists(os.path.join(output_dir, name))}


def _run_job(source, output_dir: str, *, shard_index: int, num_shards: int, seed: int,
             split_name: str | None, num_workers: int, max_examples: int,
             show_progress: bool, num_output_shards: int) -> dict:
  """Job `shard_index` of `num_shards`: writes its files, skipping those done before."""
  start = time.time()
  shards.check_shard(shard_index, num_shards, "--shard_index")
  split = split_name or source.split
  total = num_shards * num_output_shards
  mine = range(shard_index * num_output_shards, (shard_index + 1) * num_output_shards)
  names = {g: shard_name(split, g, total) for g in mine}
  settings = {"source": source.name, "split": split, "seed": seed, "num_shards": num_shards,
              "num_output_shards": num_output_shards, "max_examples": max_examples,
              "assignment": _assignment(source, True)}
  path = os.path.join(output_dir, job_summary_name(split, shard_index, num_shards))
  done = _job_state(path, settings, output_dir)
  before = sorted(done)
  lock = threading.Lock()

  def save(complete: bool) -> dict:
    finished = [names[g] for g in mine if names[g] in done]
    summary = _combined(source.name, split, {"settings": settings}, source.class_names,
                        finished, [done[name] for name in finished],
                        shard_index=shard_index, complete=complete, already_present=before,
                        seconds=round(time.time() - start, 2))
    summary["files"] = {name: done[name] for name in finished}
    fileio.write_json_atomic(path, summary)
    return summary

  def on_done(g, result):
    with lock:
      done[names[g]] = result
      save(complete=False)

  todo = [g for g in mine if names[g] not in done]
  if todo:
    plan = job_plan(source, total, todo, seed, max_examples, show_progress)
    write_plan(source, plan, output_dir, names, num_workers=num_workers,
               show_progress=show_progress, desc=f"{split} job {shard_index}",
               on_done=on_done)
  summary = save(complete=True)
  summary["merged"] = merge_job_summaries(output_dir, split, num_shards)
  return summary


def run(c: RecordsConfig, environ=None) -> dict:
  """What `main` does with its flags: returns `make_tfrecords`'s summary.

  Args:
    environ: for `--shard_index=auto` (default os.environ).
  """
  shard_index = (None if c.shard_index is None
                 else shards.resolve_shard_index(c.shard_index, c.num_shards, environ))
  source = sources.make_source(c.source, fashion_mnist_dir=c.fashion_mnist_dir,
                               cache_dir=c.cache_dir, tfds_data_dir=c.tfds_data_dir,
                               tfds_manual_dir=c.tfds_manual_dir,
                               tfds_prepare=shard_index is None)
  return make_tfrecords(source, c.output_dir, num_shards=c.num_shards, seed=c.seed,
                        split_name=c.split_name, num_workers=c.num_workers,
                        max_examples=c.max_examples, shard_index=shard_index,
                        num_output_shards=c.num_output_shards)


def main(argv):
  del argv
  c = config_flags.read(RecordsConfig)
  summary = run(c)
  if "shard_index" not in summary:
    print(f"wrote {summary['num_records']} records ({summary['num_skipped']} skipped) to "
          f"{c.output_dir} in {summary['seconds']} s; per class: "
          f"{summary['counts_per_class']}")
    return
  print(f"job {summary['shard_index']} of {c.num_shards}: {summary['num_records']} "
        f"records ({summary['num_skipped']} skipped) in its {len(summary['files'])} files "
        f"under {c.output_dir} ({len(summary['already_present'])} were already there) in "
        f"{summary['seconds']} s; per class: {summary['counts_per_class']}")
  merged = summary["merged"]
  print(f"all {c.num_shards} jobs are complete: {merged['num_records']} records in all, "
        f"counted in {summary_name(merged['split'])}" if merged else
        f"{summary_name(summary['split'])} is written by the last job to complete")


if __name__ == "__main__":
  config_flags.define(RecordsConfig)
  cli.run(main)
