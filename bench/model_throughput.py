"""Model throughput: our EfficientNet-B0 vs keras.applications.EfficientNetB0 (issue 2).

Both models take the same [0, 255] float32 images, normalise them inside, use head
dropout 0.2 and stochastic depth 0.2, and run through the *same* code: one
`tf.function` train step (forward, sparse cross entropy on logits, gradients, SGD with
momentum, a fresh optimizer per model) and one `tf.function` inference step
(`training=False`). After a warm-up (tracing), repetitions of `--steps` steps alternate
between the two models in ABBA order, so slow phases of a shared machine hit both alike.
The table reports medians over repetitions of wall-clock img/s and of process CPU
milliseconds per image (which other processes on the machine barely disturb), and the
speed ratio ours / keras (> 1: ours is faster).

    python bench/model_throughput.py [--resolution=128] [--batch=16] [--steps=3] [--reps=8]
                                     [--threads=1]

`--threads=1` (one intra-op thread per op) gives the steadiest comparison on a machine
shared with other jobs; the default uses TensorFlow's thread pools, as training does.

The default 128x128 keeps a run at a few minutes on a 2-core CPU (224x224 trains at
about 13 img/s there). XLA stays off: on CPU it made B0 training ~10x slower.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import efficientnet  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("resolution", 128, "Input height and width.")
flags.DEFINE_integer("batch", 16, "Images per step.")
flags.DEFINE_integer("steps", 3, "Steps per timed repetition.")
flags.DEFINE_integer("reps", 8, "Timed repetitions per model and mode (interleaved).")
flags.DEFINE_integer("warmup", 2, "Untimed steps per model and mode (tracing).")
flags.DEFINE_integer("num_classes", 1000, "Classifier width.")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads; 0: one per core. 1 gives "
                     "the steadiest CPU-time comparison on a busy machine.")


def make_steps(model: keras.Model):
  """The train and inference steps every model goes through (identical code)."""
  optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
  optimizer.build(model.trainable_variables)

  @tf.function(jit_compile=False)
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  @tf.function(jit_compile=False)
  def infer_step(images):
    return model(images, training=False)

  return train_step, infer_step


def time_steps(step, args, steps: int) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) for `steps` calls, waiting for the last result.

  CPU seconds count the work of all our threads and barely move when other processes
  compete for the cores; wall seconds do.
  """
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    out = step(*args)
  np.asarray(out)  # Blocks until the computation is done.
  return time.perf_counter() - wall, time.process_time() - cpu


def main(_):
  if FLAGS.threads:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
  shape = (FLAGS.resolution, FLAGS.resolution, 3)
  rng = np.random.RandomState(0)
  images = tf.constant(rng.uniform(0, 255, (FLAGS.batch,) + shape).astype("float32"))
  labels = tf.constant(rng.randint(0, FLAGS.num_classes, FLAGS.batch))
  models = {
      "ours": efficientnet.build_model(
          "efficientnet-b0", num_classes=FLAGS.num_classes, input_shape=shape),
      "keras": keras.applications.EfficientNetB0(
          weights=None, input_shape=shape, classes=FLAGS.num_classes,
          classifier_activation=None),
  }
  steps = {name: make_steps(model) for name, model in models.items()}
  modes = {"train": lambda s: (s[0], (images, labels)), "infer": lambda s: (s[1], (images,))}
  for name in models:
    for mode, pick in modes.items():
      step, args = pick(steps[name])
      time_steps(step, args, FLAGS.warmup)

  wall = {(name, mode): [] for name in models for mode in modes}
  cpu = {(name, mode): [] for name in models for mode in modes}
  order = list(models)
  for _ in range(FLAGS.reps):
    for mode, pick in modes.items():
      for name in order:
        step, args = pick(steps[name])
        seconds, cpu_seconds = time_steps(step, args, FLAGS.steps)
        wall[name, mode].append(FLAGS.batch * FLAGS.steps / seconds)
        cpu[name, mode].append(1000 * cpu_seconds / (FLAGS.batch * FLAGS.steps))
    order.reverse()  # ABBA: a drifting machine load favours neither model.

  print(f"EfficientNet-B0, {FLAGS.resolution}x{FLAGS.resolution}, batch {FLAGS.batch}, "
        f"{FLAGS.reps} x {FLAGS.steps} steps per model and mode, medians (min-max)")
  cell = lambda r: f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})"
  print(f"{'':<18}{'ours':>22}{'keras.applications':>22}{'ours/keras':>12}")
  for mode in modes:
    for unit, table, better_high in (("img/s", wall, True), ("CPU ms/img", cpu, False)):
      ours, theirs = table["ours", mode], table["keras", mode]
      # The ratio is always "speed of ours / speed of keras": > 1 means ours is faster.
      ratio = statistics.median(ours) / statistics.median(theirs)
      ratio = ratio if better_high else 1 / ratio
      print(f"{mode + ' ' + unit:<18}{cell(ours):>22}{cell(theirs):>22}{ratio:>12.2f}")


if __name__ == "__main__":
  app.run(main)
