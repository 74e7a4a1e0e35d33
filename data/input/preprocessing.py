"""Image preprocessing: encoded bytes -> float32 [S, S, 3] in [0, 255] (the model normalises).

The paths of the official EfficientNet / Noisy Student code (`preprocessing.py` in tensorflow/tpu
models/official/efficientnet and google-research/noisystudent; paper
Sec. 3.1 "input noise" is the RandAugment part):

  * imagenet, training: Inception crop (`stateless_sample_distorted_bounding_box`, area
    0.08-1, aspect 3/4-4/3, min_object_covered 0.1, 10 attempts; when sampling fails,
    i.e. the window is the whole image, a center crop as below). JPEGs decode only the
    crop window (`tf.image.decode_and_crop_jpeg`); other formats decode fully, then crop.
    Then bicubic resize to S x S, random horizontal flip, RandAugment on uint8.
  * imagenet, eval: center crop of side S / (S + 32) * min(h, w), bicubic resize.
  * small (32x32 datasets): decode with 3 channels; an image no larger than S x S is
    zero-padded centred to S x S (Fashion-MNIST 28 -> 32: 2 pixels each side), a larger
    one is resized (bicubic) to S x S. Training: RandAugment with translate_const =
    cutout_const = S // 8, an extra Cutout of `cutout_size` (16x16), reflect-pad 4 and a
    random S x S crop, optional flip (off for SVHN: digits are not mirror-symmetric).

`augment` picks the noise: "randaugment" (the above), "standard" (crop + flip, and the
pad-crop for small; no RandAugment, no Cutout), "none" (the eval path). Resizing uses
TF2's half-pixel-centred bicubic (Keys, a = -0.5); `antialias=True` widens the kernel when
downsampling, which matches PIL's `Image.resize(BICUBIC)`. The official TF1 code used
`resize_bicubic` without antialiasing.

Randomness is stateless: every random op is seeded from a shape-[2] per-example seed
(`data.input.pipeline` derives it from the global seed, the record's position and the epoch),
so the same seed gives the same image eagerly, in `tf.function` and in parallel maps.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

MODES = ("imagenet", "small")
AUGMENTS = ("randaugment", "standard", "none")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Which preprocessing path to run, and its constants.

  Attributes:
    image_size: S, the output side.
    mode: "imagenet" (inception crop / center crop + resize) or "small" (pad to S).
    augment: "randaugment", "standard" or "none" (eval path).
    randaugment_layers / randaugment_magnitude: N and M (official scale; paper M = 27
      for ImageNet students, 5 for SVHN).
    flip: random horizontal flip when augmenting.
    extra_cutout: small mode with RandAugment: the extra `cutout_size` square Cutout.
    translate_const / cutout_const: RandAugment constants; None: 100 / 40 (imagenet),
      S // 8 (small).
  """
  image_size: int
  mode: str = "imagenet"
  augment: str = "randaugment"
  randaugment_layers: int = 2
  randaugment_magnitude: float = 10
  flip: bool = True
  extra_cutout: bool = True
  cutout_size: int = 16
  pad_crop: int = 4
  crop_padding: int = 32
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  min_object_covered: float = 0.1
  max_attempts: int = 10
  translate_const: int | None = None
  cutout_const: int | None = None
  fill_value: int = 128
  antialias: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.augment not in AUGMENTS:
      raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
    if self.image_size < 1:
      raise ValueError(f"image_size must be positive, got {self.image_size}")

  @property
  def randaugment_constants(self) -> tuple[int, int]:
    """(translate_const, cutout_const) with the mode's defaults filled in."""
    default = (100, 40) if self.mode == "imagenet" else (self.image_size // 8,) * 2
    return (default[0] if self.translate_const is None else self.translate_const,
            default[1] if self.cutout_const is None else self.cutout_const)

  def for_eval(self) -> "PreprocessConfig":
    return dataclasses.replace(self, augment="none")


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any of JPEG/PNG/GIF/BMP/WebP -> [h, w, 3] uint8 (grey is replicated; first frame)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def _decode_and_crop(encoded: tf.Tensor, window_fn) -> tf.Tensor:
  """Decodes the window `window_fn(shape)` = [y, x, h, w] of the image.

  JPEGs decode only the window (`decode_and_crop_jpeg`, from the header's shape).
  """
  def jpeg():
    window = window_fn(tf.image.extract_jpeg_shape(encoded))
    return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

  def other():
    image = decode_rgb(encoded)
    window = window_fn(tf.shape(image))
    return tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], 3]))

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  return tf.ensure_shape(image, [None, None, 3])


def center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int = 32):
  """[y, x, h, w] of the centred square of side S / (S + crop_padding) * min(h, w)."""
  height, width = shape[0], shape[1]
  side = tf.cast(image_size / (image_size + crop_padding) *
                 tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def inception_crop_window(shape: tf.Tensor, seed: tf.Tensor, config: PreprocessConfig):
  """[y, x, h, w] of a random crop; the center-crop window when sampling fails."""
  shape = tf.cast(shape, tf.int32)
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, whole, seed=seed, min_object_covered=config.min_object_covered,
      aspect_ratio_range=config.aspect_ratio_range, area_range=config.area_range,
      max_attempts=config.max_attempts, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  # The sampler returns the whole image when all attempts fail (official fallback test).
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  return tf.where(failed, center_crop_window(shape, config.image_size,
                                             config.crop_padding), window)


def resize(image: tf.Tensor, image_size: int, antialias: bool = False) -> tf.Tensor:
  """Bicubic resize to [S, S, 3], float32 clipped to [0, 255]."""
  image = tf.image.resize(image, [image_size, image_size], method="bicubic",
                          antialias=antialias)
  return tf.clip_by_value(image, 0.0, 255.0)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def fit_small(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """[h, w, 3] uint8 -> [S, S, 3] uint8: zero-pad centred if it fits, else resize."""
  shape = tf.shape(image)
  fits = (shape[0] <= image_size) & (shape[1] <= image_size)

  def pad():
    return tf.image.pad_to_bounding_box(image, (image_size - shape[0]) // 2,
                                        (image_size - shape[1]) // 2, image_size,
                                        image_size)

  def shrink():
    return to_uint8(resize(image, image_size))

  return tf.ensure_shape(tf.cond(fits, pad, shrink), [image_size, image_size, 3])


def _randaugment(image: tf.Tensor, seed, config: PreprocessConfig) -> tf.Tensor:
  from data.input import randaugment  # pylint: disable=g-import-not-at-top
  translate_const, cutout_const = config.randaugment_constants
  return randaugment.randaugment(
      image, config.randaugment_layers, config.randaugment_magnitude, seed=seed,
      translate_const=translate_const, cutout_const=cutout_const,
      fill_value=config.fill_value)


def _imagenet(encoded, config: PreprocessConfig, seeds) -> tf.Tensor:
  size = config.image_size
  if config.augment == "none":
    image = _decode_and_crop(
        encoded, lambda shape: center_crop_window(shape, size, config.crop_padding))
    return resize(image, size, config.antialias)
  image = _decode_and_crop(
      encoded, lambda shape: inception_crop_window(shape, seeds[0], config))
  image = resize(image, size, config.antialias)
  if config.flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  if config.augment == "randaugment":
    image = tf.cast(_randaugment(to_uint8(image), seeds[2], config), tf.float32)
  return image


def _small(encoded, config: PreprocessConfig, seeds) -> tf.Tensor:
  size = config.image_size
  image = fit_small(decode_rgb(encoded), size)
  if config.augment == "none":
    return tf.cast(image, tf.float32)
  if config.augment == "randaugment":
    image = _randaugment(image, seeds[2], config)
    if config.extra_cutout:
      from data.input import randaugment  # pylint: disable=g-import-not-at-top
      image = randaugment.cutout(image, config.cutout_size // 2, seed=seeds[3],
                                 fill_value=config.fill_value)
  p = config.pad_crop
  if p:
    image = tf.pad(image, [[p, p], [p, p], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=seeds[0])
  if config.flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  return tf.cast(image, tf.float32)


def preprocess_image(encoded: tf.Tensor, config: PreprocessConfig,
                     seed: tf.Tensor | None = None) -> tf.Tensor:
  """Encoded image bytes -> [S, S, 3] float32 in [0, 255].

  Args:
    encoded: scalar string, JPEG/PNG/GIF/BMP/WebP bytes.
    config: the path and its constants.
    seed: shape [2] int32/int64 stateless seed of this example (ignored when
      `config.augment == "none"`); None draws one at random (not reproducible).
  """
  if config.augment != "none" and seed is None:
    seed = tf.random.uniform([2], minval=-(2**31), maxval=2**31 - 1, dtype=tf.int32)
  seeds = (None,) * 4 if config.augment == "none" else tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  fn = _imagenet if config.mode == "imagenet" else _small
  image = fn(encoded, config, seeds)
  return tf.ensure_shape(image, [config.image_size, config.image_size, 3])
