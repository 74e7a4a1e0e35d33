r"""The semi-supervised split: a labeled training set -> labeled / dev / unlabeled.

    python -m data.split --input_pattern='/tmp/fmnist/train-*' \
        --output_dir=/tmp/fmnist_ssl --labeled_per_class=100 --dev_per_class=50 \
        --seed=0 --num_output_shards=8

The flags are `SplitSettings` (`data.config_flags`); `--num_shards` is the old name of
`--num_output_shards`.

Per class c, the records of c (in input order) are permuted with a generator seeded by
(seed, c); the first `labeled_per_class` go to `labeled`, the next `dev_per_class` to
`dev` (a small held-out labeled set for model selection, so the test split is never
used to choose models), the rest to `unlabeled`. Records already unlabeled (label -1)
go to `unlabeled` unchanged. The test split is not touched: keep using its TFRecords.

Output, in `--output_dir`: `{labeled,dev,unlabeled}-{i:05d}-of-{N:05d}.tfrecord` and
`split_summary.json` (counts per class per split). Labeled and dev records are copied
byte for byte. Unlabeled records get `image/class/label = -1` and keep their true label
only as `image/class/hidden_label` (for analysing pseudo labels; training never reads
it); their encoded bytes and all other features are untouched.

Two streaming passes (labels, then routing), so memory holds only the label array:
each split's records are assigned to its N shards by a seeded permutation, and within a
shard they keep the input order (already shuffled by `data.make_tfrecords`). The result
depends only on the input files, the seed and the flags.

Bad records (not a tf.train.Example, an image that does not decode, a label below -1)
are skipped, as the labeller skips them: counted and listed (file, index in the file) in
the summary. More than --max_bad_records of them, or a truncated file (named), stop it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np
import tensorflow as tf

from data import cli
from data import config_flags
from data import fileio
from data import make_tfrecords
from data.config_flags import setting
from data.input import pipeline
from data.records import schema

SPLITS = ("labeled", "dev", "unlabeled")
SUMMARY = "split_summary.json"
BAD = -2  # The label (and destination) of a skipped record.


def read_labels(files, decode_images: bool = True) -> tuple[np.ndarray, list[dict]]:
  """(stored label of every record in file then record order, the bad records).

  A bad record (see the module docstring) gets label BAD and an entry {"file", "index",
  "reason"}. A truncated file is a ValueError naming it.
  """
  columns = {"file": [], "record": [], "label": [], "ok": []}
  try:
    for chunk in pipeline.record_status(files, decode_images=decode_images).batch(
        4096).as_numpy_iterator():
      for key, values in columns.items():
        values.append(chunk[key])
  except tf.errors.DataLossError as e:
    raise fileio.data_loss_error(files, e) from None
  if not columns["ok"]:
    return np.zeros([0], np.int64), []
  file, record, label, ok = (np.concatenate(columns[k]) for k in columns)
  label = label.astype(np.int64)
  bad = (ok == 0) | (label < schema.UNLABELED)
  skipped = [{"file": files[int(f)], "index": int(i),
              "reason": "label below -1" if o else "not a tf.train.Example, or its image "
              "does not decode"} for f, i, o in zip(file[bad], record[bad], ok[bad])]
  label[bad] = BAD
  return label, skipped


def choose(labels: np.ndarray, labeled_per_class: int, dev_per_class: int,
           seed: int) -> np.ndarray:
  """Destination (index into SPLITS) of each record."""
  dest = np.full(len(labels), SPLITS.index("unlabeled"), np.int64)
  for c in np.unique(labels[labels != schema.UNLABELED]):
    members = np.flatnonzero(labels == c)
    needed = labeled_per_class + dev_per_class
    if len(members) < needed:
      raise ValueError(f"class {c} has {len(members)} records; labeled_per_class + "
                       f"dev_per_class = {needed}")
    order = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
    dest[order[:labeled_per_class]] = SPLITS.index("labeled")
    dest[order[labeled_per_class:needed]] = SPLITS.index("dev")
  return dest


def shard_of_each(dest: np.ndarray, num_shards: int, seed: int) -> np.ndarray:
  """Output shard of each record: per split, a seeded permutation cut into N chunks."""
  shard = np.zeros(len(dest), np.int64)
  for s in range(len(SPLITS)):
    members = np.flatnonzero(dest == s)
    chunks = make_tfrecords.assign_shards(len(members), num_shards, seed * 7919 + s)
    for j, chunk in enumerate(chunks):
      shard[members[chunk]] = j
  return shard


def hide_label(serialized: bytes) -> bytes:
  """The record with label -1 and its label moved to `image/class/hidden_label`."""
  example = tf.train.Example.FromString(serialized)
  feature = example.features.feature
  label = feature[schema.LABEL].int64_list.value[0]
  feature[schema.HIDDEN_LABEL].int64_list.value[:] = [label]
  feature[schema.LABEL].int64_list.value[:] = [schema.UNLABELED]
  return example.SerializeToString(deterministic=True)


def split(input_pattern: str, output_dir: str, *, labeled_per_class: int,
          dev_per_class: int = 0, seed: int = 0, num_output_shards: int = 8,
          max_bad_records: int = pipeline.DEFAULT_MAX_BAD_RECORDS,
          decode_images: bool = True) -> dict:
  """Writes the three splits and the summary; returns the summary dict."""
  if labeled_per_class < 1 or dev_per_class < 0:
    raise ValueError(f"--labeled_per_class must be >= 1 and --dev_per_class >= 0, got "
                     f"{labeled_per_class} and {dev_per_class}")
  if num_output_shards < 1 or max_bad_records < 0:
    raise ValueError(f"--num_output_shards must be >= 1 and --max_bad_records >= 0, got "
                     f"{num_output_shards} and {max_bad_records}")
  files = fileio.list_record_files(input_pattern)
  fileio.makedirs(output_dir)
  labels, skipped = read_labels(files, decode_images)
  if len(skipped) > max_bad_records:
    first = skipped[0]
    raise ValueError(f"{len(skipped)} bad records, more than --max_bad_records="
                     f"{max_bad_records} (the first: {first['file']} record "
                     f"{first['index']}, {first['reason']}); fix or remove them, or raise "
                     "--max_bad_records")
  good = labels != BAD
  dest = np.full(len(labels), BAD, np.int64)
  dest[good] = choose(labels[good], labeled_per_class, dev_per_class, seed)
  shard = shard_of_each(dest, num_output_shards, seed)
  present = [s for s in range(len(SPLITS)) if np.any(dest == s)]
  names = {(s, j): make_tfrecords.shard_name(SPLITS[s], j, num_output_shards)
           for s in present for j in range(num_output_shards)}
  with contextlib.ExitStack() as stack:
    writers = {}
    for key, name in names.items():
      tmp = stack.enter_context(fileio.atomic_path(os.path.join(output_dir, name)))
      writers[key] = stack.enter_context(tf.io.TFRecordWriter(tmp))
    for i, record in enumerate(tf.data.TFRecordDataset(files).as_numpy_iterator()):
      if dest[i] == BAD:
        continue
      hide = dest[i] == SPLITS.index("unlabeled") and labels[i] != schema.UNLABELED
      writers[dest[i], shard[i]].write(hide_label(record) if hide else record)
    # The ExitStack unwinds in reverse: each writer closes before its file is renamed.
  for s, name in enumerate(SPLITS):
    make_tfrecords.remove_stale_shards(
        output_dir, name, {n for (t, _), n in names.items() if t == s})
  summary = _summary(files, labels, dest, names, seed, labeled_per_class, dev_per_class,
                     num_output_shards)
  summary.update(num_skipped=len(skipped), skipped=skipped)
  if skipped:
    print(f"skipped {len(skipped)} bad records, listed in {SUMMARY}")
  fileio.write_json_atomic(os.path.join(output_dir, SUMMARY), summary)
  return summary


def _summary(files, labels, dest, names, seed, labeled_per_class, dev_per_class,
             num_shards) -> dict:
  out = {"input_files": files, "seed": seed, "labeled_per_class": labeled_per_class,
         "dev_per_class": dev_per_class, "num_shards": num_shards,
         "num_input_records": int(len(labels))}
  for s, name in enumerate(SPLITS):
    classes, counts = np.unique(labels[dest == s], return_counts=True)
    out[name] = {
        "num_records": int(np.sum(dest == s)),
        # True (stored) labels; for `unlabeled` they are hidden in the records.
        "counts_per_class": {str(int(c)): int(n) for c, n in zip(classes, counts)},
        "files": sorted(n for (t, _), n in names.items() if t == s),
    }
  return out


@dataclasses.dataclass(frozen=True)
class SplitSettings:
  """`data.split`'s flags."""
  input_pattern: str = setting(None, "Labeled TFRecords (e.g. '.../train-*').",
                               required=True)
  output_dir: str = setting(None, "Where the splits go.", required=True)
  labeled_per_class: int = setting(None, "Labeled images kept per class.", required=True)
  dev_per_class: int = setting(0, "Held-out dev images per class.")
  seed: int = setting(0, "Seed of the per-class choice and of the sharding.")
  num_output_shards: int = setting(8, "Shards per output split.", aliases=["num_shards"])
  max_bad_records: int = setting(pipeline.DEFAULT_MAX_BAD_RECORDS, "Bad records are "
                                 "skipped and listed; more than this many stop it.")
  decode_images: bool = setting(True, "Decode every image to find the bad ones (off: only "
                                "records that do not parse; faster on large JPEG sets).")


def main(argv):
  del argv
  s = config_flags.read(SplitSettings)
  summary = split(s.input_pattern, s.output_dir, labeled_per_class=s.labeled_per_class,
                  dev_per_class=s.dev_per_class, seed=s.seed,
                  num_output_shards=s.num_output_shards,
                  max_bad_records=s.max_bad_records, decode_images=s.decode_images)
  print(", ".join(f"{name}: {summary[name]['num_records']}" for name in SPLITS),
        f"-> {s.output_dir}")


if __name__ == "__main__":
  config_flags.define(SplitSettings)
  cli.run(main)
