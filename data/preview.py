"""A picture of the input noise the student gets (paper Sec. 3.1; data/input/randaugment.py).

    python -m data.preview --output=docs/randaugment_preview.png \
        [--image=photo.jpg | --tfrecord='train-*' --index=3] [--magnitudes=5,10,27] \
        [--op_magnitude=27] [--seed=0]

Writes one PNG grid: the image (a real photo; default scikit-image's astronaut), then the
image under each of the 16 ops at `--op_magnitude` (sign +1; panels where the op is the
identity at that magnitude are marked "= input"), then `--samples` draws of full
RandAugment(2, M) per magnitude. The image is centre-cropped and resized to
`--image_size` first, so the ImageNet constants (translate 100 px, cutout 40) look as
they do in training at 224. The file is written atomically (data/fileio.py).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow as tf
from absl import flags

from data import cli
from data import fileio
from data.input import randaugment
from data.records import schema


@dataclasses.dataclass(frozen=True)
class PreviewConfig:
  """What the grid shows.

  Attributes:
    magnitudes: M values for the full-RandAugment rows (official scale).
    op_magnitude: M for the one-op panels.
    num_layers: N of the full-RandAugment rows.
    samples: full-RandAugment draws per magnitude (one row each).
    seed: seeds every draw (panel k uses the stateless seed [seed, k]).
    image_size: side of the square the image is cropped and resized to.
    translate_const / cutout_const / fill_value: RandAugment constants.
    columns: panels per row.
    dpi: PNG resolution (2 inches per panel).
  """
  magnitudes: tuple = (5, 10, 27)
  op_magnitude: float = 27
  num_layers: int = 2
  samples: int = 6
  seed: int = 0
  image_size: int = 224
  translate_const: int = 100
  cutout_const: int = 40
  fill_value: int = 128
  columns: int = 6
  dpi: int = 80


def default_image() -> np.ndarray:
  """A real RGB photo shipped with scikit-image: [512, 512, 3] uint8."""
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top
  return skdata.astronaut()


def read_image_file(path: str) -> np.ndarray:
  """Any image file PIL reads (local or gs://), as [h, w, 3] uint8."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "rb") as f:
    return np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))


def read_tfrecord_image(pattern: str, index: int) -> np.ndarray:
  """The `index`-th record (0-based, over the sorted files) of TFRecords in our schema."""
  records = tf.data.TFRecordDataset(fileio.list_files(pattern))
  for serialized in records.skip(index).take(1):
    encoded = schema.parse_example(serialized)["encoded"]
    return tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
  raise IndexError(f"{pattern!r} has no record {index}")


def square(image: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop, bicubic resize to [size, size, 3] uint8."""
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  crop = image[top:top + side, left:left + side]
  resized = tf.image.resize(crop, [size, size], method="bicubic", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def panels(image: np.ndarray, config: PreviewConfig) -> list[tuple[str, np.ndarray]]:
  """(label, [size, size, 3] uint8) for every panel of the grid, in order."""
  constants = dict(translate_const=config.translate_const,
                   cutout_const=config.cutout_const, fill_value=config.fill_value)
  out = [("input", image)]
  for name in randaugment.OP_NAMES:
    augmented = randaugment.apply_op(image, name, config.op_magnitude,
                                     seed=[config.seed, 0], **constants).numpy()
    same = " = input" if np.array_equal(augmented, image) else ""
    out.append((f"{name} M={config.op_magnitude:g}{same}", augmented))
  # Pad the one-op section to whole rows so each magnitude starts a row.
  while len(out) % config.columns:
    out.append(("", None))
  draw = 1
  for magnitude in config.magnitudes:
    for sample in range(config.samples):
      augmented = randaugment.randaugment(
          image, config.num_layers, magnitude, seed=tf.constant([config.seed, draw]),
          **constants).numpy()
      out.append((f"RandAugment({config.num_layers}, {magnitude:g}) #{sample + 1}",
                  augmented))
      draw += 1
    while len(out) % config.columns:
      out.append(("", None))
  return out


def render(image: np.ndarray, config: PreviewConfig, path: str) -> tuple[int, int]:
  """Draws the labelled grid and writes it to `path` as PNG; returns (width, height)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  grid = panels(square(image, config.image_size), config)
  rows = len(grid) // config.columns
  inches = 2.0
  figure = Figure(figsize=(config.columns * inches, rows * (inches + 0.25)),
                  dpi=config.dpi)
  for k, (label, panel) in enumerate(grid):
    axes = figure.add_subplot(rows, config.columns, k + 1)
    axes.set_axis_off()
    if panel is not None:
      axes.imshow(panel, interpolation="nearest")
      axes.set_title(label, fontsize=8)
  figure.suptitle("RandAugment as in Noisy Student: one op per panel, then "
                  f"RandAugment(N={config.num_layers}, M) draws (fill {config.fill_value})",
                  fontsize=10)
  figure.tight_layout()
  with fileio.atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      figure.savefig(f, format="png", pil_kwargs={"optimize": True})
  width, height = figure.get_size_inches() * figure.dpi
  return int(round(width)), int(round(height))


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("output", "docs/randaugment_preview.png", "PNG to write.")
  flags.DEFINE_string("image", None, "An image file; default: scikit-image's astronaut.")
  flags.DEFINE_string("tfrecord", None, "TFRecord glob in data/records/schema.py's format, "
                      "instead of --image; with --index.")
  flags.DEFINE_integer("index", 0, "Which record of --tfrecord (0-based).")
  flags.DEFINE_list("magnitudes", ["5", "10", "27"], "M of the full-RandAugment rows.")
  flags.DEFINE_float("op_magnitude", 27, "M of the one-op panels.")
  flags.DEFINE_integer("num_layers", 2, "N of the full-RandAugment rows.")
  flags.DEFINE_integer("samples", 6, "Draws per magnitude.")
  flags.DEFINE_integer("seed", 0, "Seed of every draw.")
  flags.DEFINE_integer("image_size", 224, "Centre crop, resized to this side.")
  flags.DEFINE_integer("translate_const", 100, "RandAugment translate constant.")
  flags.DEFINE_integer("cutout_const", 40, "RandAugment cutout constant.")


def main(argv):
  del argv
  if FLAGS.image and FLAGS.tfrecord:
    raise ValueError("give --image or --tfrecord, not both")
  if FLAGS.tfrecord:
    image = read_tfrecord_image(FLAGS.tfrecord, FLAGS.index)
  elif FLAGS.image:
    image = read_image_file(FLAGS.image)
  else:
    image = default_image()
  config = PreviewConfig(
      magnitudes=tuple(float(m) for m in FLAGS.magnitudes),
      op_magnitude=FLAGS.op_magnitude, num_layers=FLAGS.num_layers,
      samples=FLAGS.samples, seed=FLAGS.seed, image_size=FLAGS.image_size,
      translate_const=FLAGS.translate_const, cutout_const=FLAGS.cutout_const)
  width, height = render(image, config, FLAGS.output)
  print(f"wrote {FLAGS.output} ({width}x{height} px)")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
