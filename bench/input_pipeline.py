"""Input-pipeline throughput: our RandAugment vs the Keras ones (issue 3; paper Sec. 3.1).

One run on 224x224 crops of real photos (the scikit-image / scikit-learn samples, cut
into a few hundred 256x256 JPEGs in memory). Every variant is the same `tf.data` graph,
decode + random 224 crop, then one augmentation applied per image in the same parallel
`map` (num_parallel_calls=AUTOTUNE), and is timed over the same images after a warm-up:

  decode+crop            the ceiling: no augmentation
  ours RandAugment(2,27) data.input.randaugment.randaugment, the paper's student noise
  keras.layers           keras.layers.RandAugment(num_ops=2, factor=1.0), a different
                         algorithm (random magnitudes); slow per image, so fewer images
  keras_cv.layers        keras_cv.layers.RandAugment(augmentations_per_image=2,
                         magnitude=1.0, rate=1.0); only if keras-cv is installed
                         (`pip install -e ".[bench]"`), else a line says it is missing

    python bench/input_pipeline.py [--num_images=1024] [--keras_images=64] [--rounds=3]

Prints img/s (median of interleaved rounds), ratios, and this process's CPU ms per image
side by side. Wall-clock timings on a shared CPU are noisy (CPU ms much less so); re-run
before quoting numbers.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from data.input import randaugment as ra  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 1024, "Images timed per fast variant.")
flags.DEFINE_integer("keras_images", 64, "Images timed for keras.layers (slow).")
flags.DEFINE_integer("warmup", 256, "Images run before timing a fast variant: the first "
                     "hundreds run slower (function instantiation, AUTOTUNE ramp-up).")
flags.DEFINE_integer("seed", 0, "Seed for the JPEG crops and the augmentations.")
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds; the table shows medians.")

IMAGE_SIZE = 224
SOURCE_SIZE = 256


def sample_photos() -> list[np.ndarray]:
  """Real RGB photos shipped with scikit-image and scikit-learn, uint8 [h, w, 3]."""
  from skimage import data as skdata
  photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
  try:
    from sklearn.datasets import load_sample_images
    photos += list(load_sample_images().images)
  except ImportError:
    pass
  return photos


def make_jpegs(count: int, seed: int) -> list[bytes]:
  """`count` 256x256 JPEGs: random square crops of the sample photos, resized."""
  rng = np.random.default_rng(seed)
  photos = sample_photos()
  encoded = []
  for i in range(count):
    photo = photos[i % len(photos)]
    side = int(rng.integers(SOURCE_SIZE, min(photo.shape[:2]) + 1))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = tf.image.resize(photo[top:top + side, left:left + side],
                           [SOURCE_SIZE, SOURCE_SIZE], antialias=True)
    crop = tf.cast(tf.clip_by_value(tf.round(crop), 0, 255), tf.uint8)
    encoded.append(tf.io.encode_jpeg(crop, quality=90).numpy())
  return encoded


def decode_and_crop(encoded: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """JPEG bytes -> random 224x224 uint8 crop, decoded from the crop window only."""
  seed = tf.stack([tf.cast(FLAGS.seed, tf.int64), tf.cast(index, tf.int64)])
  offset = tf.random.stateless_uniform([2], seed, 0, SOURCE_SIZE - IMAGE_SIZE + 1,
                                       dtype=tf.int32)
  window = tf.stack([offset[0], offset[1], IMAGE_SIZE, IMAGE_SIZE])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  return tf.ensure_shape(image, [IMAGE_SIZE, IMAGE_SIZE, 3])


def variants() -> list[tuple[str, object, bool]]:
  """(name, per-image augmentation or None, is_slow); None entries print a reason."""
  out = [("decode+crop (ceiling)", lambda image, seed: image, False)]
  out.append(("ours RandAugment(2, 27)",
              lambda image, seed: ra.randaugment(image, 2, 27, seed=seed), False))
  import keras
  keras_layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=1.0,
                                         seed=FLAGS.seed)
  out.append(("keras.layers.RandAugment", lambda image, seed: tf.cast(
      keras_layer(tf.cast(image, tf.float32)), tf.uint8), True))
  try:
    import keras_cv
  except ImportError as e:
    out.append((f"keras_cv.layers.RandAugment: NOT INSTALLED ({e.__class__.__name__}; "
                "pip install -e '.[bench]')", None, False))
  else:
    cv_layer = keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2,
                                           magnitude=1.0, rate=1.0, seed=FLAGS.seed)
    out.append(("keras_cv.layers.RandAugment", lambda image, seed: tf.cast(
        cv_layer(tf.cast(image, tf.float32)), tf.uint8), False))
  return out


def make_dataset(jpegs: list[bytes], augment, warmup: int, count: int) -> tf.data.Dataset:
  """decode+crop+augment of `warmup + count` images, batched by 16."""
  def map_fn(encoded, index):
    image = decode_and_crop(encoded, index)
    seed = tf.stack([tf.cast(FLAGS.seed + 1, tf.int64), tf.cast(index, tf.int64)])
    return augment(image, seed)

  total = warmup + count
  encoded = tf.constant([jpegs[i % len(jpegs)] for i in range(total)])
  dataset = tf.data.Dataset.from_tensor_slices((encoded, tf.range(total)))
  dataset = dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.batch(16).prefetch(2)


def images_per_second(dataset: tf.data.Dataset, warmup: int) -> tuple[float, float]:
  """(img/s, CPU ms per image of this process) after the first `warmup` images.

  CPU time per image hardly depends on what other processes do; img/s does.
  """
  iterator = iter(dataset)
  seen = 0
  while seen < warmup:
    seen += int(next(iterator).shape[0])
  start, cpu_start, timed = time.perf_counter(), time.process_time(), 0
  for batch in iterator:
    timed += int(batch.shape[0])
  cpu_ms = (time.process_time() - cpu_start) * 1000 / timed
  return timed / (time.perf_counter() - start), cpu_ms


def main(argv):
  del argv
  jpegs = make_jpegs(256, FLAGS.seed)
  print(f"{len(jpegs)} JPEGs {SOURCE_SIZE}x{SOURCE_SIZE} -> decode + random crop "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}, map(num_parallel_calls=AUTOTUNE), "
        f"{os.cpu_count()} CPUs, TF {tf.__version__}")
  datasets = {}
  for name, augment, slow in variants():
    if augment is None:
      print(name)
    else:
      warmup = min(FLAGS.warmup, 16) if slow else FLAGS.warmup
      count = FLAGS.keras_images if slow else FLAGS.num_images
      datasets[name] = (make_dataset(jpegs, augment, warmup, count), warmup)
  # Rounds interleave the variants so that load from other processes hits all of them
  # alike; the table reports each variant's median.
  measured = {name: [] for name in datasets}
  for round_index in range(FLAGS.rounds):
    for name, (dataset, warmup) in datasets.items():
      measured[name].append(images_per_second(dataset, warmup))
    print(f"  round {round_index + 1} img/s: " + ", ".join(
        f"{name.split(' (')[0]} {runs[-1][0]:.0f}" for name, runs in measured.items()),
        flush=True)
  rates = {name: float(np.median([r for r, _ in runs])) for name, runs in measured.items()}
  cpu = {name: float(np.median([c for _, c in runs])) for name, runs in measured.items()}
  ceiling = rates["decode+crop (ceiling)"]
  ours = rates["ours RandAugment(2, 27)"]
  cv = rates.get("keras_cv.layers.RandAugment")
  print()
  print(f"| {'pipeline':30s} | {'img/s':>8s} | {'/ ceiling':>9s} | {'ours / it':>9s} | "
        f"{'CPU ms/img':>10s} |")
  print(f"|{'-' * 32}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
  for name, rate in rates.items():
    print(f"| {name:30s} | {rate:8.1f} | {rate / ceiling:9.2f} | {ours / rate:9.2f} | "
          f"{cpu[name]:10.2f} |")
  if cv is not None:
    verdict = "meets" if ours >= 3 * cv else "MISSES"
    print(f"\nours / keras-cv = {ours / cv:.2f} ({verdict} the >= 3x target)")
  else:
    print("\nkeras-cv not installed: no keras-cv comparison")


if __name__ == "__main__":
  app.run(main)
