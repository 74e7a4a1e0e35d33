"""RandAugment as used by Noisy Student (paper Sec. 3.1 "input noise"; Cubuk et al. 2020).

Each of `num_layers` layers picks one of the 16 ops below uniformly at random and always
applies it at the FIXED magnitude M, on the official scale (`_MAX_LEVEL = 10`, m = M / 10;
the paper's students use M = 27). Ops are pure TensorFlow on uint8 [H, W, 3] images, one
small function each, collected in `NAME_TO_OP` and dispatched per image with
`tf.switch_case`: only the selected op runs, there is no hidden identity branch and no
sampled-then-unused probability. Everything works eagerly, inside `tf.function` and inside
`tf.data.Dataset.map` with unknown static height/width.

Magnitude -> argument (m = M / 10; NOTES.md section 4):
  Rotate            30 m degrees, random sign        ShearX/Y      0.3 m, random sign
  TranslateX/Y      m * translate_const px, sign     Cutout        half-size int(m * cutout_const)
  Color/Contrast/Brightness/Sharpness  factor 1.8 m + 0.1
  SolarizeAdd       add int(110 m) to pixels < 128   Posterize     bits int(4 m)
  Solarize          threshold int(256 m)             AutoContrast/Equalize/Invert: no argument

Out-of-range magnitudes (a deliberate choice). The official maps for Posterize and
Solarize make the op *weaker* as M grows and leave the valid range above M = 10:
  * Posterize keeps `bits = clip(int(4 m), 0, 8)` high bits. For M >= 20 (bits >= 8) it
    is the identity. This is also what the official TF code computes on CPU/GPU: TF clamps
    the negative shift `8 - bits` to 0. (At bits = 0 we follow PIL, a black image; TF's
    clamp would keep 1 bit.)
  * Solarize inverts pixels >= `threshold = clip(int(256 m), 0, 256)`. For M >= 10
    (threshold 256) it is the identity, i.e. PIL's `ImageOps.solarize` with threshold > 255.
So at M = 27 both ops are intentional no-ops, as the magnitude maps extrapolate; we do
not wrap the threshold modulo 256 or invert the meaning.

Semantics follow PIL, which the original AutoAugment used, and are pinned against
`PIL.ImageOps` / `PIL.ImageEnhance` / `Image.transform` in tests/data/test_randaugment.py:
  * Color/Contrast/Brightness/Sharpness blend `degenerate + f * (image - degenerate)` in
    float32, clip to [0, 255] and truncate, like `Image.blend`.
  * Grayscale is PIL's fixed-point ITU-R 601 luma, L = (19595 R + 38470 G + 7471 B +
    2^15) >> 16, i.e. (299 R + 587 G + 114 B) / 1000 rounded as PIL rounds it.
  * Contrast blends with the mean grayscale value rounded to an integer (PIL), not with
    the official TF code's `sum(histogram) / 256` (the pixel count / 256, a known slip).
  * Sharpness blends with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13, rounded);
    the one-pixel border is left untouched, as in PIL.
  * AutoContrast and Equalize work per channel through 256-entry lookup tables computed
    exactly as PIL computes them (AutoContrast in float64 like Python, Equalize in ints).
  * Geometric ops use nearest-neighbour sampling and fill value 128 (official code), with
    PIL's `Image.transform(AFFINE)` convention: the output pixel centre (x + .5, y + .5)
    maps through the affine matrix and picks the input pixel containing that point.
    Rotate turns counter-clockwise about the image centre for positive degrees;
    TranslateX by t shows input column x + t at output column x; ShearX by s maps output
    (x, y) to input (x + s y, y).
"""

from __future__ import annotations

import math

import tensorflow as tf

_MAX_LEVEL = 10.0
# SolarizeAdd only brightens pixels below this value (official code).
_SOLARIZE_ADD_THRESHOLD = 128


# ----------------------------------------------------------------------------------------
# Helpers.

def _to_float(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(image, tf.float32)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's `Image.blend(degenerate, image, factor)`: float32, clip, truncate.

  Args:
    degenerate: uint8 or float32, broadcastable to `image`.
    image: [H, W, 3] uint8.
    factor: float; 0 gives `degenerate`, 1 gives `image`, > 1 extrapolates.

  Returns:
    [H, W, 3] uint8.
  """
  degenerate = _to_float(degenerate)
  factor = tf.cast(factor, tf.float32)
  blended = degenerate + factor * (_to_float(image) - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """PIL's `convert("L")`: [H, W, 3] uint8 -> [H, W, 1] int32 in [0, 255]."""
  rgb = tf.cast(image, tf.int32)
  weighted = rgb * tf.constant([19595, 38470, 7471], tf.int32)
  luma = tf.reduce_sum(weighted, axis=-1, keepdims=True) + (1 << 15)
  return tf.bitwise.right_shift(luma, 16)


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """Per-channel lookup: image [H, W, 3] uint8, lut [3, 256] int -> [H, W, 3] uint8."""
  lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
  flat_index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  return tf.gather(tf.reshape(lut, [-1]), flat_index)


def _channel_histograms(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] uint8 -> [3, 256] int32 histograms, one bincount for all channels."""
  flat_index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  counts = tf.math.bincount(tf.reshape(flat_index, [-1]), minlength=768, maxlength=768)
  return tf.reshape(counts, [3, 256])


# ----------------------------------------------------------------------------------------
# Colour ops (PIL.ImageOps / PIL.ImageEnhance semantics).

def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.autocontrast(image)`: stretch each channel's [min, max] to [0, 255]."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)[:, None]  # [3, 1]
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)[:, None]
  # float64 so the table equals PIL's, which evaluates int(ix * scale + offset) in Python.
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  offset = -lo * scale
  levels = tf.range(256, dtype=tf.float64)[None, :]
  stretched = tf.cast(levels * scale + offset, tf.int32)  # truncation, like int()
  lut = tf.where(hi > lo, stretched, tf.cast(levels, tf.int32))  # flat channel: as is
  return _apply_lut(image, lut)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.equalize(image)`: per-channel histogram equalisation (PIL's table)."""
  hist = _channel_histograms(image)  # [3, 256]
  # PIL (and the official TF code): step = (count - count of the last used level) // 255.
  last_nonzero = tf.reduce_max(
      tf.where(hist > 0, tf.range(256)[None, :], -1), axis=1, keepdims=True)
  last_count = tf.gather(hist, tf.maximum(last_nonzero, 0), axis=1, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1, keepdims=True) - last_count) // 255
  # lut[i] = (step // 2 + number of pixels below level i) // step.
  below = tf.cumsum(hist, axis=1, exclusive=True)
  equalized = (step // 2 + below) // tf.maximum(step, 1)
  lut = tf.where(step > 0, equalized, tf.range(256)[None, :])
  return _apply_lut(image, lut)


def invert(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.invert`: 255 - x."""
  return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """`ImageOps.posterize`: keep the `bits` high bits; bits is clamped to [0, 8]."""
  shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, shift), 255), tf.uint8)
  return tf.bitwise.bitwise_and(image, mask)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """`ImageOps.solarize`: invert pixels >= threshold; threshold is clamped to [0, 256]."""
  threshold = tf.clip_by_value(tf.cast(threshold, tf.int32), 0, 256)
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition, threshold=_SOLARIZE_ADD_THRESHOLD) -> tf.Tensor:
  """Official SolarizeAdd: add `addition` (clipped to [0, 255]) to pixels < threshold."""
  pixels = tf.cast(image, tf.int32)
  added = tf.cast(tf.clip_by_value(pixels + tf.cast(addition, tf.int32), 0, 255), tf.uint8)
  return tf.where(pixels < tf.cast(threshold, tf.int32), added, image)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Color(image).enhance(factor)`: blend with the grayscale image."""
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Contrast(image).enhance(factor)`: blend with the mean gray level."""
  gray = tf.cast(_grayscale(image), tf.float64)
  mean = tf.floor(tf.reduce_mean(gray) + 0.5)  # PIL: int(mean + 0.5)
  return _blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Brightness(image).enhance(factor)`: blend with black."""
  return _blend(tf.zeros([], tf.float32), image, factor)


def _smooth(image: tf.Tensor) -> tf.Tensor:
  """PIL's `ImageFilter.SMOOTH`: [H, W, 3] uint8 -> float32, border pixels kept."""
  pixels = _to_float(image)
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  sums = tf.nn.depthwise_conv2d(pixels[None], kernel, [1, 1, 1, 1], "SAME")[0]
  # Integer sums / 13 are never within 1/26 of a .5 tie, so float32 rounding is exact.
  smoothed = tf.floor(sums / 13.0 + 0.5)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  return tf.where(interior, smoothed, pixels)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Sharpness(image).enhance(factor)`: blend with the smoothed image."""
  return _blend(_smooth(image), image, factor)


# ----------------------------------------------------------------------------------------
# Geometric ops: nearest neighbour, constant fill, PIL's AFFINE convention.

def _affine(image: tf.Tensor, matrix, fill_value) -> tf.Tensor:
  """PIL's `image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill_value)`.

  Args:
    image: [H, W, 3] uint8.
    matrix: 6 floats (a, b, c, d, e, f): output point (x, y) samples the input at
      (a x + b y + c, d x + e y + f), in continuous coordinates where pixel i covers
      [i, i + 1).
    fill_value: value for pixels that map outside the input.

  Returns:
    [H, W, 3] uint8.
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
  # TF samples index coordinates (pixel centres at integers) and rounds to the nearest
  # pixel: round(p - 0.5) == floor(p) is PIL's "pixel containing p" except on exact ties.
  # So evaluate PIL's map at (x + .5, y + .5) and shift the result by -.5.
  c = c + 0.5 * (a + b) - 0.5
  f = f + 0.5 * (d + e) - 0.5
  zero = tf.zeros([], tf.float64)
  transform = tf.cast(tf.stack([a, b, c, d, e, f, zero, zero])[None], tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=tf.cast(fill_value, tf.float32), interpolation="NEAREST",
      fill_mode="CONSTANT")
  return out[0]


def rotate(image: tf.Tensor, degrees, fill_value=128) -> tf.Tensor:
  """`image.rotate(degrees, NEAREST, fillcolor=fill_value)`: counter-clockwise, centred."""
  radians = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
  cos, sin = tf.cos(radians), tf.sin(radians)
  size = tf.cast(tf.shape(image)[:2], tf.float64)
  center_y, center_x = size[0] / 2.0, size[1] / 2.0
  # PIL: rotate about the centre, i.e. translate by -centre, rotate, translate back.
  c = cos * -center_x + sin * -center_y + center_x
  f = -sin * -center_x + cos * -center_y + center_y
  return _affine(image, (cos, sin, c, -sin, cos, f), fill_value)


def shear_x(image: tf.Tensor, level, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, level, 0, 0, 1, 0))`."""
  return _affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0), fill_value)


def shear_y(image: tf.Tensor, level, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, 0, 0, level, 1, 0))`."""
  return _affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0), fill_value)


def translate_x(image: tf.Tensor, pixels, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, 0, pixels, 0, 1, 0))`: content moves left."""
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill_value)


def translate_y(image: tf.Tensor, pixels, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, 0, 0, 0, 1, pixels))`: content moves up."""
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill_value)


def cutout(image: tf.Tensor, pad_size, *, seed=None, fill_value=128) -> tf.Tensor:
  """Fills a (2 pad_size)^2 square, clipped at the borders, with `fill_value`.

  The centre is uniform over all pixels (official code), so the square is often partly
  outside the image. Also used for the extra 16x16 cutout of the 32x32 path (pad_size=8).

  Args:
    image: [H, W, C] uint8.
    pad_size: int scalar, half the side of the square.
    seed: None (stateful random centre) or a shape [2] int32/int64 stateless seed.
    fill_value: the square's value.

  Returns:
    [H, W, C] uint8.
  """
  size = tf.shape(image)[:2]
  if seed is None:
    unit = tf.random.uniform([2], dtype=tf.float32)
  else:
    unit = tf.random.stateless_uniform([2], seed=seed, dtype=tf.float32)
  center = tf.minimum(tf.cast(unit * tf.cast(size, tf.float32), tf.int32), size - 1)
  pad_size = tf.cast(pad_size, tf.int32)
  rows = tf.range(size[0])[:, None, None]
  cols = tf.range(size[1])[None, :, None]
  inside = ((rows >= center[0] - pad_size) & (rows < center[0] + pad_size) &
            (cols >= center[1] - pad_size) & (cols < center[1] + pad_size))
  return tf.where(inside, tf.cast(fill_value, image.dtype), image)


# ----------------------------------------------------------------------------------------
# The policy.

NAME_TO_OP = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "SolarizeAdd": solarize_add,
    "Cutout": cutout,
}
# The dispatch order of `randaugment` (the official list order).
OP_NAMES = tuple(NAME_TO_OP)


def _op_call(op_name, magnitude, sign, translate_const, cutout_const, fill_value, seed):
  """(args, kwargs) for NAME_TO_OP[op_name] at `magnitude` (official level -> arg maps)."""
  # float64 so that int()/factors equal Python's arithmetic on the same numbers.
  m = tf.cast(magnitude, tf.float64) / _MAX_LEVEL
  sign = tf.cast(sign, tf.float64)
  as_int = lambda x: tf.cast(x, tf.int32)  # truncation toward zero, like int()
  enhance = (1.8 * m + 0.1,)
  table = {
      "AutoContrast": (), "Equalize": (), "Invert": (),
      "Rotate": (sign * 30.0 * m, fill_value),
      "Posterize": (as_int(4.0 * m),),
      "Solarize": (as_int(256.0 * m),),
      "Color": enhance, "Contrast": enhance, "Brightness": enhance, "Sharpness": enhance,
      "ShearX": (sign * 0.3 * m, fill_value),
      "ShearY": (sign * 0.3 * m, fill_value),
      "TranslateX": (sign * m * translate_const, fill_value),
      "TranslateY": (sign * m * translate_const, fill_value),
      "SolarizeAdd": (as_int(110.0 * m),),
  }
  if op_name == "Cutout":
    return (as_int(m * cutout_const),), {"seed": seed, "fill_value": fill_value}
  if op_name not in table:
    raise ValueError(f"unknown op {op_name!r}; expected one of {OP_NAMES}")
  return table[op_name], {}


def _check_image(image) -> tf.Tensor:
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"RandAugment ops take uint8 images, got {image.dtype.name}")
  image.shape.assert_is_compatible_with([None, None, 3])
  return image


def apply_op(image, op_name: str, magnitude, *, sign=1, translate_const=100,
             cutout_const=40, fill_value=128, seed=None) -> tf.Tensor:
  """Applies one named op at magnitude M, with no randomness beyond the arguments.

  Args:
    image: [H, W, 3] uint8.
    op_name: one of `OP_NAMES` (official spelling, e.g. "TranslateX").
    magnitude: M on the official scale (0..10, the paper uses up to 27); float or tensor.
    sign: +1 or -1 (int or scalar tensor); the direction of Rotate/Shear*/Translate*.
    translate_const: pixels TranslateX/Y move at M = 10.
    cutout_const: Cutout half-size at M = 10.
    fill_value: value of pixels uncovered by geometric ops and Cutout.
    seed: shape [2] int stateless seed; fixes the Cutout centre (None: stateful random).

  Returns:
    [H, W, 3] uint8.
  """
  image = _check_image(image)
  args, kwargs = _op_call(op_name, magnitude, sign, translate_const, cutout_const,
                          fill_value, seed)
  return NAME_TO_OP[op_name](image, *args, **kwargs)


def randaugment(image, num_layers: int = 2, magnitude=10, *, seed=None,
                translate_const=100, cutout_const=40, fill_value=128) -> tf.Tensor:
  """RandAugment(N=num_layers, M=magnitude) on one image.

  Each layer picks an op uniformly from `OP_NAMES`, a random sign for the geometric ops
  and (for Cutout) a random centre, then applies the op at the fixed magnitude.

  Args:
    image: [H, W, 3] uint8; static height/width may be unknown.
    num_layers: N, the number of ops applied in sequence (Python int).
    magnitude: M on the official scale (paper: 27).
    seed: None (stateful random ops) or a shape [2] int32/int64 tensor: the same seed
      gives the same output, eagerly, in `tf.function` and in a parallel `Dataset.map`.
    translate_const: pixels TranslateX/Y move at M = 10 (ImageNet 100; 32x32: size // 8).
    cutout_const: Cutout half-size at M = 10 (ImageNet 40; 32x32: size // 8).
    fill_value: value of pixels uncovered by geometric ops and Cutout.

  Returns:
    [H, W, 3] uint8, same shape as `image`.
  """
  image = _check_image(image)
  if seed is None:
    # One stateful draw, then the stateless path: a single code path for both modes.
    seed = tf.random.uniform([2], minval=-(2**31), maxval=2**31 - 1, dtype=tf.int32)
  layer_seeds = tf.random.experimental.stateless_split(seed, num=max(num_layers, 1))
  for layer in range(num_layers):
    op_seed, sign_seed, cutout_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seeds[layer], num=3))
    op_index = tf.random.stateless_uniform(
        [], op_seed, minval=0, maxval=len(OP_NAMES), dtype=tf.int32)
    sign = 2 * tf.random.stateless_uniform(
        [], sign_seed, minval=0, maxval=2, dtype=tf.int32) - 1

    def branch(op_name, image=image, sign=sign, cutout_seed=cutout_seed):
      return lambda: apply_op(image, op_name, magnitude, sign=sign,
                              translate_const=translate_const, cutout_const=cutout_const,
                              fill_value=fill_value, seed=cutout_seed)

    image = tf.switch_case(op_index, [branch(name) for name in OP_NAMES])
  return image
