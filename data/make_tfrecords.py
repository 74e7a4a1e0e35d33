r"""Writes an image source as sharded TFRecords in the shared schema (`data/records/schema.py`).

    python -m data.make_tfrecords --source=fashion_mnist:train --output_dir=/tmp/fmnist \
        --num_shards=16 --seed=0

Sources: `fashion_mnist:train|test`, `folder:PATH`, `tfds:NAME/SPLIT` (`data/records/sources.py`).

Output, in `--output_dir`:
  * `{split}-{i:05d}-of-{N:05d}.tfrecord`: the items are shuffled with `--seed` and cut
    into N contiguous chunks, so the files depend only on (source, seed, N): the same
    command writes byte-identical shards. Shards are written in parallel threads, each
    under a temporary name renamed when complete; shards of the same split left by an
    earlier run with another N are removed at the end.
  * `{split}_summary.json`: counts per class, class names, skipped images (with reasons),
    files, timing. (`_`, not `-`, so the glob `{split}-*` matches only shards.)

Images that cannot be decoded (folder and TFDS sources) are skipped, counted and listed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import re
import threading
import time

from absl import flags
import numpy as np
import tensorflow as tf
import tqdm

from data import cli
from data import fileio
from data.records import schema
from data.records import sources


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def summary_name(split: str) -> str:
  return f"{split}_summary.json"


def assign_shards(num_items: int, num_shards: int, seed: int) -> list[np.ndarray]:
  """Item indices of each shard: a seeded permutation cut into contiguous chunks."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  order = np.random.default_rng(seed).permutation(num_items)
  return np.array_split(order, num_shards)


def serialize(item: sources.Item, encoded: sources.Encoded) -> bytes:
  features = schema.image_features(
      encoded.data, item.image_id, item.label, image_format=encoded.image_format,
      height=encoded.height, width=encoded.width, filename=item.filename)
  # deterministic=True sorts the feature map, so equal inputs give equal bytes.
  return schema.make_example(features).SerializeToString(deterministic=True)


def _write_shard(source, items, path: str, progress) -> dict:
  """Writes one shard; returns its per-label counts and skipped images."""
  counts = collections.Counter()
  skipped = []
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
        if n % 256 == 0 or n == len(items):
          progress(256 if n % 256 == 0 else n % 256)
  return {"counts": counts, "skipped": skipped}


def remove_stale_shards(output_dir: str, split: str, keep: set[str]) -> list[str]:
  """Deletes `{split}-*-of-*.tfrecord` files not written by this run (another N)."""
  pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord$")
  stale = [f for f in tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord"))
           if pattern.search(os.path.basename(f)) and os.path.basename(f) not in keep]
  for f in stale:
    logging.warning("removing stale shard %s", f)
    tf.io.gfile.remove(f)
  return sorted(stale)


def make_tfrecords(source, output_dir: str, *, num_shards: int, seed: int,
                   split_name: str | None = None, num_workers: int = 0,
                   max_examples: int = 0, show_progress: bool = True) -> dict:
  """Writes `source` as shards plus a summary JSON; returns the summary dict.

  `max_examples` > 0 keeps a seeded random subset of that many items (in source order),
  for smoke runs and quick experiments on real data.
  """
  start = time.time()
  split = split_name or source.split
  items = source.items()
  if 0 < max_examples < len(items):
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:max_examples])
    items = [items[i] for i in keep]
  shards = assign_shards(len(items), num_shards, seed)
  names = [shard_name(split, i, num_shards) for i in range(num_shards)]
  fileio.makedirs(output_dir)

  bar = tqdm.tqdm(total=len(items), unit="img", desc=split, disable=not show_progress)
  lock = threading.Lock()

  def progress(n):
    with lock:
      bar.update(n)

  workers = num_workers or min(num_shards, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(_write_shard, source, [items[i] for i in idx],
                           os.path.join(output_dir, name), progress)
               for idx, name in zip(shards, names)]
    results = [f.result() for f in futures]  # In shard order: deterministic summary.
  bar.close()
  stale = remove_stale_shards(output_dir, split, set(names))

  counts = sum((r["counts"] for r in results), collections.Counter())
  skipped = sorted((s for r in results for s in r["skipped"]), key=lambda s: s["id"])
  summary = {
      "source": source.name,
      "split": split,
      "seed": seed,
      "num_shards": num_shards,
      "max_examples": max_examples,
      "files": names,
      "num_records": sum(counts.values()),
      "num_skipped": len(skipped),
      "skipped": skipped,
      "class_names": source.class_names,
      "num_classes": len(source.class_names) if source.class_names else 0,
      "counts_per_class": {str(k): v for k, v in sorted(counts.items())},
      "records_per_shard": [sum(r["counts"].values()) for r in results],
      "removed_stale_shards": [os.path.basename(f) for f in stale],
      "seconds": round(time.time() - start, 2),
  }
  fileio.write_json_atomic(os.path.join(output_dir, summary_name(split)), summary)
  return summary


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("source", None, "fashion_mnist:train|test, folder:PATH or "
                      "tfds:NAME/SPLIT.")
  flags.DEFINE_string("output_dir", None, "Where the shards and the summary go.")
  flags.DEFINE_integer("num_shards", 16, "Number of output shards.")
  flags.DEFINE_integer("seed", 0, "Seed of the shuffle before sharding.")
  flags.DEFINE_string("split_name", None, "File prefix; default: the source's split "
                      "(train/test for Fashion-MNIST, the TFDS split, train for folders).")
  flags.DEFINE_integer("num_workers", 0, "Writer threads; 0: min(num_shards, CPUs).")
  flags.DEFINE_integer("max_examples", 0, "Keep only a seeded random subset of this "
                       "many images (0: all).")
  flags.DEFINE_string("fashion_mnist_dir", sources.DEFAULT_FASHION_MNIST_DIR,
                      "Directory with the Fashion-MNIST IDX .gz files.")
  flags.DEFINE_string("cache_dir", sources.DEFAULT_CACHE_DIR,
                      "Where missing Fashion-MNIST files are downloaded to.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: TFDS's own).")
  flags.mark_flags_as_required(["source", "output_dir"])


def main(argv):
  del argv
  source = sources.make_source(FLAGS.source, fashion_mnist_dir=FLAGS.fashion_mnist_dir,
                               cache_dir=FLAGS.cache_dir, tfds_data_dir=FLAGS.tfds_data_dir)
  summary = make_tfrecords(source, FLAGS.output_dir, num_shards=FLAGS.num_shards,
                           seed=FLAGS.seed, split_name=FLAGS.split_name,
                           num_workers=FLAGS.num_workers,
                           max_examples=FLAGS.max_examples)
  print(f"wrote {summary['num_records']} records ({summary['num_skipped']} skipped) to "
        f"{FLAGS.output_dir} in {summary['seconds']} s; per class: "
        f"{summary['counts_per_class']}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
