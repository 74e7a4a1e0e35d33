r"""Training throughput: our custom loop vs `model.fit` on the same model and data.

  .venv/bin/python bench/train_loop.py                    # B0 small image, 32 px, batch 64
  .venv/bin/python bench/train_loop.py --width=0.5 --batch=128 --rounds=6

Both train the same EfficientNet (fresh copies, same initial weights) with the same
optimizer (TF1-style RMSprop), label-smoothed cross entropy and the same in-memory
batches (`from_tensor_slices`, cached, repeated), `steps` steps per host call:
  * ours: `noisy_student.training.trainer.Trainer`'s compiled loop (a `tf.range` loop of
    `strategy.run` steps under a OneDeviceStrategy); it does MORE work per step than fit:
    L2 weight decay over all non-BN weights, and the EMA update of every variable
    (`--noema` drops the EMA to isolate it);
  * fit: `model.compile(steps_per_execution=steps)` + `model.fit(steps_per_epoch=steps)`,
    timed from epoch begin to epoch end (fit's own per-call set-up excluded).
Calls alternate (ours, fit, fit, ours, ours, fit, ...) after a traced warm-up of each, so
machine noise hits both alike; the ratio uses the median img/s of each. Target: ours >= 0.95x fit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet  # noqa: E402
from noisy_student.training import losses  # noqa: E402
from noisy_student.training import optimization  # noqa: E402
from noisy_student.training import trainer as trainer_lib  # noqa: E402


class BenchTask:
  """The trainer's task interface over in-memory batches (labeled only)."""

  metric_names = ("labeled_ce",)
  has_eval = False

  def __init__(self, args, images, targets):
    self.args, self.images, self.targets = args, images, targets
    self.global_batch_images = args.batch

  def setup(self):
    pass

  def initial_epoch(self, step):
    return 0

  def build_model(self, *, for_training):
    a = self.args
    return efficientnet.build_model(
        a.model, num_classes=a.classes, input_shape=(a.size, a.size, 3), small_image=True,
        width_coefficient=a.width, depth_coefficient=a.depth)

  def train_dataset(self, ctx, seed, initial_epoch=0):
    ds = tf.data.Dataset.from_tensor_slices({
        "image": self.images, "target": self.targets,
        "is_unlabeled": np.zeros(len(self.images), "float32")})
    return ds.cache().repeat().batch(self.args.batch, drop_remainder=True).prefetch(2)

  def train_loss(self, model, batch, num_replicas):
    logits = model(batch["image"], training=True)
    parts = losses.data_loss(logits, batch["target"], batch["is_unlabeled"],
                             losses.LossConfig(), num_replicas)
    return parts["loss"], {"labeled_ce": parts["labeled_ce"]}

  def export_config(self):
    return {}


class EpochTimer(keras.callbacks.Callback):
  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds = time.perf_counter() - self.start


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="efficientnet-b0")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--depth", type=float, default=1.0)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=10, help="steps per host call")
  p.add_argument("--rounds", type=int, default=5, help="timed calls of each")
  p.add_argument("--noema", action="store_true", help="our loop without the EMA")
  args = p.parse_args()

  rng = np.random.default_rng(0)
  n = args.batch * 4
  images = rng.uniform(0, 255, (n, args.size, args.size, 3)).astype("float32")
  targets = np.eye(args.classes, dtype="float32")[rng.integers(0, args.classes, n)]

  keras.utils.set_random_seed(0)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  task = BenchTask(args, images, targets)
  config = trainer_lib.TrainerConfig(
      model_dir=tempfile.mkdtemp(), train_steps=10**9, steps_per_loop=args.steps,
      moving_average_decay=0.0 if args.noema else 0.9999,
      schedule=optimization.ScheduleConfig(base_lr=0.016, labeled_batch_size=args.batch,
                                           steps_per_epoch=n / args.batch))
  ours = trainer_lib.Trainer(config, task, strategy)
  iterator = ours._make_iterator(0)
  loop = ours._build_train_loop()
  steps = tf.constant(args.steps, tf.int32)

  fit_model = task.build_model(for_training=True)
  fit_model.set_weights(ours.model.get_weights())
  fit_model.compile(
      optimizer=optimization.build_optimizer("rmsprop", 0.016 * args.batch / 256),
      loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
      steps_per_execution=args.steps, jit_compile=False)
  fit_data = tf.data.Dataset.from_tensor_slices((images, targets)).cache().repeat().batch(
      args.batch, drop_remainder=True).prefetch(2)
  timer = EpochTimer()

  def run_ours():
    start = time.perf_counter()
    loop(iterator, steps)["loss"].numpy()
    return time.perf_counter() - start

  def run_fit():
    fit_model.fit(fit_data, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False,
                  callbacks=[timer])
    return timer.seconds

  print(f"{args.model} w{args.width} d{args.depth} {args.size}px batch {args.batch}, "
        f"{args.steps} steps per call, {args.rounds} rounds, "
        f"{'no EMA' if args.noema else 'with EMA'}; warming up (traces) ...", flush=True)
  run_ours(), run_fit()
  rates = {"ours": [], "fit": []}
  runs = [("ours", run_ours), ("fit", run_fit)]
  for r in range(args.rounds):
    for name, fn in runs if r % 2 == 0 else runs[::-1]:  # alternate who goes first
      rates[name].append(args.steps * args.batch / fn())
    print(f"round {r + 1}: ours {rates['ours'][-1]:7.1f} img/s   "
          f"fit {rates['fit'][-1]:7.1f} img/s", flush=True)
  ours_rate, fit_rate = (statistics.median(rates[k]) for k in ("ours", "fit"))
  ratio = ours_rate / fit_rate
  print(f"median: ours {ours_rate:.1f} img/s, model.fit {fit_rate:.1f} img/s, "
        f"ratio ours/fit = {ratio:.3f} ({'OK' if ratio >= 0.95 else 'SLOWER than'} "
        f"the 0.95 target)")


if __name__ == "__main__":
  main()
