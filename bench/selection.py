r"""Selection at scale: pass 1 from stats files only, pass 2 streaming rate and memory.

  .venv/bin/python bench/selection.py                          # quick: 200k records
  .venv/bin/python bench/selection.py --records=1000000,10000000  # the issue's sizes
  .venv/bin/python bench/selection.py --example_png=docs/selection_example.png

For each size: writes synthetic prediction TFRecords (1000 classes, a 1x1 PNG as the
"small image", top-1 soft label storage, unique ids, ~300 bytes a record: mostly key names) plus
`--label_shards` stats files, then runs pass 1 and pass 2 (one job over all files) in a
fresh subprocess and prints wall time, records/s, records per CPU-second (all threads of
the job) and the job's peak RSS. Files are cached in --workdir (removed with --cleanup).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

POOL = 4096           # distinct (label, confidence) records; ids make every record unique
ID_TEMPLATE = b"u%011d"


def _pool(num_classes: int, seed: int):
  """Serialized template records with a fixed-width id placeholder, and their stats."""
  import tensorflow as tf
  from data.records import schema
  rng = np.random.default_rng(seed)
  png = tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()
  # Imbalanced classes (a Zipf-like share) and a teacher that is mostly confident.
  share = 1.0 / np.arange(1, num_classes + 1) ** 0.6
  labels = rng.choice(num_classes, size=POOL, p=share / share.sum())
  conf = rng.beta(5.0, 1.5, size=POOL).astype(np.float32)
  placeholder = ID_TEMPLATE % 0
  records, offsets = [], []
  for label, c in zip(labels, conf):
    # Only the fields a pseudo-labeled record needs (no format/size/filename keys).
    feats = {k: v for k, v in schema.image_features(png, placeholder).items()
             if k in (schema.ENCODED, schema.ID, schema.LABEL)}
    feats.update({schema.PSEUDO_LABEL: schema._ints([int(label)]),
                  schema.PSEUDO_CONFIDENCE: schema._floats([float(c)]),
                  schema.PSEUDO_TOPK_INDICES: schema._ints([int(label)]),
                  schema.PSEUDO_TOPK_VALUES: schema._floats([float(c)])})
    s = schema.make_example(feats).SerializeToString()
    assert s.count(placeholder) == 1
    records.append(s)
    offsets.append(s.index(placeholder))
  return records, offsets, labels, conf


def generate(directory: str, records: int, num_files: int, label_shards: int,
             num_classes: int) -> dict:
  """Writes `records` prediction records in `num_files` files + stats; returns timing."""
  import tensorflow as tf
  from noisy_student.selection import selector
  done = os.path.join(directory, "GENERATED")
  if os.path.exists(done):
    return json.load(open(done))
  shutil.rmtree(directory, ignore_errors=True)
  os.makedirs(directory)
  start = time.time()
  pool, offsets, labels, conf = _pool(num_classes, seed=0)
  width = len(ID_TEMPLATE % 0)
  heads = [s[:o] for s, o in zip(pool, offsets)]
  tails = [s[o + width:] for s, o in zip(pool, offsets)]
  bounds = np.linspace(0, records, num_files + 1).astype(np.int64)
  files = []
  for f in range(num_files):
    a, b = int(bounds[f]), int(bounds[f + 1])
    name = f"pred-{f:05d}-of-{num_files:05d}.tfrecord"
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as w:
      for r in range(a, b):
        p = r % POOL
        w.write(heads[p] + ID_TEMPLATE % r + tails[p])
    pool_counts = np.bincount(np.arange(a, b) % POOL, minlength=POOL)
    files.append((name, b - a, pool_counts))
  for i in range(label_shards):
    hist = selector.new_histogram(num_classes)
    mine = files[i::label_shards]
    for _, _, counts in mine:
      np.add.at(hist, (labels, selector.confidence_bins(conf)), counts)
    stats = selector.make_label_stats(
        shard_index=i, num_shards=label_shards, histogram=hist, corrupt=[],
        files=[{"input": n, "output": n, "num_images": int(k), "num_corrupt": 0}
               for n, k, _ in mine], settings={"synthetic": True})
    selector.write_label_stats(
        os.path.join(directory, selector.label_stats_name(i, label_shards)), stats)
  info = {"records": records, "generate_seconds": round(time.time() - start, 1),
          "bytes": sum(os.path.getsize(os.path.join(directory, n)) for n, _, _ in files)}
  json.dump(info, open(done, "w"))
  return info


def child(directory: str, images_per_class: int, out_dir: str) -> None:
  """One selection job over all files; prints a JSON line with timings and peak RSS."""
  import tensorflow as tf
  from noisy_student.selection import selector
  start = time.time()
  stats = selector.read_label_stats(directory)
  plan = selector.plan_selection(stats.histogram, selector.SelectionConfig(
      images_per_class=images_per_class, seed=0))
  pass1 = time.time() - start
  shutil.rmtree(out_dir, ignore_errors=True)
  tf.io.gfile.makedirs(out_dir)
  outs = [os.path.join(out_dir, n) for n in selector.output_names(0, 1, 4)]
  rss, seen = [], [0]

  def sample(n):  # RSS after 10%, 20%, ... of the records: flat = bounded memory.
    seen[0] += n
    if seen[0] * 10 // max(1, total) > len(rss):
      rss.append(round(_rss_mb()))

  total = int(stats.histogram.sum())
  wall, cpu = time.time(), time.process_time()
  counts = selector.select_shard(stats.files, plan, outs, shard_seed=[0, 0],
                                  progress=sample)
  wall, cpu = time.time() - wall, time.process_time() - cpu
  read = int(counts["read"].sum())
  print(json.dumps({
      "pass1_s": round(pass1, 2), "stats_files": len(stats.stats_files),
      "pass2_s": round(wall, 1), "read": read, "written": int(counts["written"].sum()),
      "rec_per_s": round(read / wall), "rec_per_cpu_s": round(read / cpu),
      "cpu_s": round(cpu, 1),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
      "rss_mb_by_decile": rss}))


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def example_png(path: str, num_classes: int = 1000, seed: int = 0) -> None:
  """The picture in docs/pseudo_labels.md: a plan over synthetic stats (no records needed).

  Zipf-like class sizes (2,000 to 400,000 predictions), Beta(5, 1.5) confidences,
  K = 10,000 per class.
  """
  from noisy_student.selection import selector
  rng = np.random.default_rng(seed)
  sizes = rng.zipf(1.3, size=num_classes).clip(1, 200) * 2000
  bin_p = np.bincount(selector.confidence_bins(rng.beta(5.0, 1.5, 1_000_000)),
                      minlength=selector.NUM_BINS) / 1_000_000
  hist = np.stack([rng.multinomial(n, bin_p) for n in sizes])
  plan = selector.plan_selection(hist, selector.SelectionConfig(images_per_class=10000))
  selector.plot_summary(plan, path)
  print(f"wrote {path}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", default="200000",
                      help="comma-separated record counts (e.g. 1000000,10000000)")
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--files_per_million", type=int, default=16)
  parser.add_argument("--label_shards", type=int, default=16)
  parser.add_argument("--keep_fraction", type=float, default=0.3,
                      help="K = keep_fraction * records / classes")
  parser.add_argument("--workdir", default="/tmp/ns_bench_selection")
  parser.add_argument("--cleanup", action="store_true", help="delete generated files")
  parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  parser.add_argument("--example_png", help="only write the example plot of docs/pseudo_labels.md here")
  args = parser.parse_args()
  if args.example_png:
    example_png(args.example_png)
    return
  if args.child:
    child(args.child[0], int(args.child[1]), args.child[2])
    return
  print(f"{'records':>11} {'MB':>7} {'gen s':>6} {'pass1 s':>7} {'pass2 s':>7} "
        f"{'rec/s':>8} {'rec/cpu-s':>9} {'written':>10} {'peak RSS MB':>11}")
  for n in [int(x) for x in args.records.split(",")]:
    directory = os.path.join(args.workdir, f"pred-{n}")
    num_files = max(1, round(args.files_per_million * n / 1e6))
    info = generate(directory, n, num_files, min(args.label_shards, num_files), args.classes)
    k = max(1, int(args.keep_fraction * n / args.classes))
    out = subprocess.run([sys.executable, __file__, "--child", directory, str(k),
                          os.path.join(args.workdir, f"out-{n}")],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"{n:>11,} {info['bytes'] / 1e6:>7.0f} {info['generate_seconds']:>6.0f} "
          f"{r['pass1_s']:>7.2f} {r['pass2_s']:>7.1f} {r['rec_per_s']:>8,} "
          f"{r['rec_per_cpu_s']:>9,} {r['written']:>10,} {r['peak_rss_mb']:>11,}  "
          f"RSS by decile: {r['rss_mb_by_decile']}", flush=True)
    shutil.rmtree(os.path.join(args.workdir, f"out-{n}"), ignore_errors=True)
    if args.cleanup:
      shutil.rmtree(directory, ignore_errors=True)
  print("pass 1 reads only the stats files (fixed count); pass 2 = one job, all files, "
        "4 output files, shuffle buffer 10000; target >= 20,000 rec per CPU-second")


if __name__ == "__main__":
  main()
