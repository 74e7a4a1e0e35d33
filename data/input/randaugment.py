"""RandAugment as used by Noisy Student (paper Sec. 3.1 "input noise"; Cubuk et al. 2020).

Each of `num_layers` layers picks one of the 16 ops below uniformly at random and always
applies it at the FIXED magnitude M, on the official scale (`_MAX_LEVEL = 10`, m = M / 10;
the paper's students use M = 27). Ops are pure TensorFlow on uint8 [H, W, 3] images, one
small function each, collected in `NAME_TO_OP` and dispatched per image with
`tf.switch_case`: only the selected op runs, there is no hidden identity branch and no
sampled-then-unused probability. Everything works eagerly, inside `tf.function` and inside
`tf.data.Dataset.map` with unknown static height/width.

Magnitude -> argument (m = M / 10; the official `autoaugment.py`'s `level_to_arg`):
  Rotate            30 m degrees, random sign        ShearX/Y      0.3 m, random sign
  TranslateX/Y      m * translate_const px, sign     Cutout  half-size int(m * cutout_const)
  Color/Contrast/Brightness/Sharpness  factor 1.8 m + 0.1
  SolarizeAdd       add int(110 m) to pixels < 128   Posterize     bits int(4 m)
  Solarize          threshold int(256 m)             AutoContrast/Equalize/Invert: none

Out-of-range magnitudes (a deliberate choice: the arguments the paper's code computed).
The official maps for Posterize and Solarize leave PIL's valid range (bits int(4 m) > 8
from M = 22.5; threshold int(256 m) > 255 from M = 10). The official TF code hands these
Python ints to uint8 tensor ops: TF converts them to uint8 (mod 256) and clamps shift
amounts to 7 (checked against TF's own ops in the tests). `apply_op`/`randaugment` pass
the ops the arguments that this produces, so our students get the noise the paper's
students got; the ops themselves stay PIL's:
  * Posterize gets bits 8 - min((8 - int(4 m)) mod 256, 7): int(4 m) for M in 2.5..22.4,
    but ONE bit (values 0 / 128) below M = 2.5 and from M = 22.5 (M = 27: one bit).
  * Solarize gets threshold int(256 m) mod 256: PIL's below M = 10; at M = 10 (256 -> 0)
    it inverts every pixel, like Invert; at M = 27 (691 -> 179) pixels >= 179.
The alternative, clamping to PIL's range (bits 8, threshold 256), would make both ops
no-ops at M = 27: weaker noise than the paper's.

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
# Helpers. On CPU, TF's broadcasting kernels (SelectV2, a [3]-vector times an image) cost
# ~6 ns per element, several times the same-shape or scalar ones; `tf.data` runs these
# ops per image, so the ops below use same-shape `Select`, scalars, `bias_add` and small
# matmuls instead.

def _select(condition: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """`tf.where` for three tensors of one shape, without the broadcasting kernel."""
  return tf.raw_ops.Select(condition=condition, x=x, y=y)


def _blend(degenerate, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL's `Image.blend(degenerate, image, factor)`: float32, clip, truncate.

  Args:
    degenerate: float32 scalar, or float32 of the image's shape.
    image: [H, W, 3] uint8.
    factor: float; 0 gives `degenerate`, 1 gives `image`, > 1 extrapolates.

  Returns:
    [H, W, 3] uint8.
  """
  factor = tf.cast(factor, tf.float32)
  blended = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


# PIL's `convert("L")` is fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
# Every partial sum stays below 2^24, so float32 matmuls compute it exactly.
_LUMA_WEIGHTS = (19595.0, 38470.0, 7471.0)


def _luma(image: tf.Tensor, channels: int) -> tf.Tensor:
  """PIL grayscale of [H, W, 3] uint8 as float32 [H * W, channels] (copies of L)."""
  pixels = tf.reshape(tf.cast(image, tf.float32), [-1, 3])
  weights = tf.tile(tf.constant(_LUMA_WEIGHTS)[:, None], [1, channels])
  return tf.floor((tf.matmul(pixels, weights) + 32768.0) / 65536.0)


def _channel_index(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 3] uint8 -> int32 value + 256 * channel, an index into [3 * 256] tables."""
  # A tiled offset tensor is cheaper than broadcasting the 3-vector (or bias_add).
  offsets = tf.tile(tf.constant([0, 256, 512]), [tf.size(image) // 3])
  return tf.cast(image, tf.int32) + tf.reshape(offsets, tf.shape(image))


def _apply_lut(index: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """Per-channel lookup: index from `_channel_index`, lut [3, 256] int -> uint8."""
  lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
  return tf.gather(tf.reshape(lut, [-1]), index)


# ----------------------------------------------------------------------------------------
# Colour ops (PIL.ImageOps / PIL.ImageEnhance semantics).

def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.autocontrast(image)`: stretch each channel's [min, max] to [0, 255]."""
  # Channel-major rows make every step a scalar-times-vector op (no broadcasting).
  channels = tf.unstack(tf.transpose(tf.reshape(image, [-1, 3])), num=3)
  stretched = []
  for pixels in channels:
    lo = tf.cast(tf.reduce_min(pixels), tf.float64)
    hi = tf.cast(tf.reduce_max(pixels), tf.float64)
    # float64 reproduces PIL's table, int(ix * scale + offset) evaluated in Python; the
    # exact floor((ix - lo) * 255 / (hi - lo)) differs from it for ~0.4% of levels.
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)  # flat: as is
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    stretched.append(tf.cast(tf.cast(pixels, tf.float64) * scale + offset, tf.uint8))
  return tf.reshape(tf.transpose(tf.stack(stretched)), tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.equalize(image)`: per-channel histogram equalisation (PIL's table)."""
  index = _channel_index(image)
  hist = tf.reshape(tf.math.bincount(tf.reshape(index, [-1]), minlength=768,
                                     maxlength=768), [3, 256])
  # PIL (and the official TF code): step = (count - count of the last used level) // 255.
  last_used = tf.reduce_max(tf.where(hist > 0, tf.range(256)[None, :], 0), axis=1)
  last_count = tf.gather(hist, last_used[:, None], axis=1, batch_dims=1)  # [3, 1]
  step = (tf.reduce_sum(hist, axis=1, keepdims=True) - last_count) // 255
  # lut[i] = (step // 2 + number of pixels below level i) // step.
  below = tf.cumsum(hist, axis=1, exclusive=True)
  equalized = (step // 2 + below) // tf.maximum(step, 1)
  lut = tf.where(step > 0, equalized, tf.range(256)[None, :])  # < 2 levels used: as is
  return _apply_lut(index, lut)


def invert(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.invert`: 255 - x."""
  return 255 - image


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """`ImageOps.posterize`: keep the `bits` high bits (bits clipped to [0, 8])."""
  shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, shift), 255), tf.uint8)
  return tf.bitwise.bitwise_and(image, mask)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """`ImageOps.solarize`: invert pixels >= threshold (> 255: none; <= 0: all)."""
  threshold = tf.clip_by_value(tf.cast(threshold, tf.int32), 0, 256)
  return _select(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition,
                 threshold=_SOLARIZE_ADD_THRESHOLD) -> tf.Tensor:
  """Official SolarizeAdd: add `addition` (clipped to [0, 255]) to pixels < threshold."""
  pixels = tf.cast(image, tf.int32)
  added = tf.clip_by_value(pixels + tf.cast(addition, tf.int32), 0, 255)
  below = pixels < tf.cast(threshold, tf.int32)
  return tf.cast(_select(below, added, pixels), tf.uint8)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Color(image).enhance(factor)`: blend with the grayscale image."""
  gray = tf.reshape(_luma(image, channels=3), tf.shape(image))
  return _blend(gray, image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Contrast(image).enhance(factor)`: blend with the mean gray level."""
  total = tf.reduce_sum(tf.cast(_luma(image, channels=1), tf.int32))  # exact below 2^31
  mean = tf.cast(total, tf.float64) / tf.cast(tf.size(image) // 3, tf.float64)
  mean = tf.floor(mean + 0.5)  # PIL: int(mean + 0.5)
  return _blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  """`ImageEnhance.Brightness(image).enhance(factor)`: blend with black."""
  return _blend(tf.zeros([], tf.float32), image, factor)


def _smooth(image: tf.Tensor) -> tf.Tensor:
  """PIL's `ImageFilter.SMOOTH`: [H, W, 3] uint8 -> float32, border pixels kept."""
  pixels = tf.cast(image, tf.float32)
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  sums = tf.nn.depthwise_conv2d(pixels[None], kernel, [1, 1, 1, 1], "SAME")[0]
  # Integer sums / 13 are never within 1/26 of a .5 tie, so float32 rounding is exact.
  smoothed = tf.floor(sums / 13.0 + 0.5)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  interior = tf.ones([tf.maximum(height - 2, 0), tf.maximum(width - 2, 0), 3], tf.bool)
  interior = tf.pad(interior, [[1, 1], [1, 1], [0, 0]])[:height, :width]
  return _select(interior, smoothed, pixels)


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
      [i, i + 1). Output pixel (i, j) uses its centre and takes the input pixel
      containing the mapped point.
    fill_value: value for pixels that map outside the input.

  Returns:
    [H, W, 3] uint8.
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  # Sample at output pixel centres (x + .5, y + .5), shifted by +1 so that truncation
  # toward zero (a cast) equals floor for every sample that can land inside the image.
  c = c + 0.5 * (a + b) + 1.0
  f = f + 0.5 * (d + e) + 1.0
  xs = tf.range(tf.cast(width, tf.float64))[None, :]  # [1, W]
  ys = tf.range(tf.cast(height, tf.float32))[:, None]  # [H, 1]
  # u[y, x] = (a x + c) + b y as one [H, 2] x [2, W] matmul: a handful of whole-map ops
  # instead of a dozen elementwise ones over H * W coordinates.
  rows = tf.concat([tf.ones_like(ys), ys], axis=1)
  def coordinate(slope_x, offset, slope_y):
    cols = tf.concat([tf.cast(slope_x * xs + offset, tf.float32),
                      tf.fill(tf.shape(xs), tf.cast(slope_y, tf.float32))], axis=0)
    index = tf.cast(tf.matmul(rows, cols), tf.int32) - 1  # floor of the unshifted map
    return index, tf.bitcast(index, tf.uint32)  # negatives become huge: one comparison
  u, u_unsigned = coordinate(a, c, b)
  v, v_unsigned = coordinate(d, f, e)
  inside = ((u_unsigned < tf.cast(width, tf.uint32)) &
            (v_unsigned < tf.cast(height, tf.uint32)))
  # One gather of whole pixels through an index map is several times faster here than
  # ImageProjectiveTransformV3, which recomputes the map for every channel. Samples
  # outside the image read one extra "fill" pixel appended after it.
  source = _select(inside, v * width + u, tf.fill(tf.shape(u), height * width))
  fill = tf.fill([1, 3], tf.cast(fill_value, tf.uint8))
  pixels = tf.concat([tf.reshape(image, [-1, 3]), fill], axis=0)
  return tf.gather(pixels, source)  # [H, W, 3]


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


def _shift(image: tf.Tensor, pixels, axis: int, fill_value) -> tf.Tensor:
  """Output index i shows input index i + round(pixels) along `axis` (0: y, 1: x)."""
  size = tf.shape(image)[axis]
  # PIL samples floor(i + .5 + t) = i + floor(t + .5): a whole-pixel shift, so a pad and
  # a slice do it exactly, without any per-pixel index arithmetic.
  shift = tf.cast(tf.floor(tf.cast(pixels, tf.float64) + 0.5), tf.int32)
  shift = tf.clip_by_value(shift, -size, size)
  paddings = [[0, 0], [0, 0], [0, 0]]
  paddings[axis] = [tf.maximum(-shift, 0), tf.maximum(shift, 0)]
  padded = tf.pad(image, paddings, constant_values=tf.cast(fill_value, tf.uint8))
  begin = [0, 0, 0]
  begin[axis] = tf.maximum(shift, 0)
  return tf.slice(padded, tf.stack(begin), tf.shape(image))


def translate_x(image: tf.Tensor, pixels, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, 0, pixels, 0, 1, 0))`: content moves left."""
  return _shift(image, pixels, 1, fill_value)


def translate_y(image: tf.Tensor, pixels, fill_value=128) -> tf.Tensor:
  """`image.transform(size, AFFINE, (1, 0, 0, 0, 1, pixels))`: content moves up."""
  return _shift(image, pixels, 0, fill_value)


@tf.autograph.experimental.do_not_convert
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
  shape = tf.shape(image)
  if seed is None:
    unit = tf.random.uniform([2], dtype=tf.float32)
  else:
    unit = tf.random.stateless_uniform([2], seed=seed, dtype=tf.float32)
  center = tf.cast(unit * tf.cast(shape[:2], tf.float32), tf.int32)
  center = tf.minimum(center, shape[:2] - 1)  # float rounding could reach the size
  pad_size = tf.maximum(tf.cast(pad_size, tf.int32), 0)
  lower = tf.clip_by_value(center - pad_size, 0, shape[:2])  # [top, left]
  upper = tf.clip_by_value(center + pad_size, 0, shape[:2])  # [bottom, right], exclusive
  inside = tf.ones(tf.concat([upper - lower, shape[2:]], axis=0), tf.bool)
  inside = tf.pad(inside, [[lower[0], shape[0] - upper[0]],
                           [lower[1], shape[1] - upper[1]], [0, 0]])
  return _select(inside, tf.fill(shape, tf.cast(fill_value, image.dtype)), image)


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
      # The official ints as TF's uint8 ops see them (module docstring).
      "Posterize": (8 - tf.minimum(tf.math.floormod(8 - as_int(4.0 * m), 256), 7),),
      "Solarize": (tf.math.floormod(as_int(256.0 * m), 256),),
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


@tf.autograph.experimental.do_not_convert
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


# One traced graph per process and static image shape for a layer, whatever the
# magnitude, constants or caller (they are tensor arguments): tracing the 16 branches is
# the slow part of building a pipeline (seconds). A static shape lets grappler fold the
# shape-only work (coordinate grids, channel offsets, masks) into constants.
@tf.function(autograph=False)
def _layer(image, op_index, sign, cutout_seed, magnitude, translate_const, cutout_const,
           fill_value):
  """Applies OP_NAMES[op_index]; tf.switch_case runs only the selected branch."""
  def branch(op_name):
    return lambda: apply_op(image, op_name, magnitude, sign=sign,
                            translate_const=translate_const, cutout_const=cutout_const,
                            fill_value=fill_value, seed=cutout_seed)
  return tf.switch_case(op_index, [branch(name) for name in OP_NAMES])


# No Python control flow on tensors here: skipping autograph saves seconds of tracing.
@tf.autograph.experimental.do_not_convert
def randaugment(image, num_layers: int = 2, magnitude=10, *, seed=None,
                translate_const=100, cutout_const=40, fill_value=128) -> tf.Tensor:
  """RandAugment(N=num_layers, M=magnitude) on one image.

  Each layer picks an op uniformly from `OP_NAMES`, a random sign for the geometric ops
  and (for Cutout) a random centre, then applies the op at the fixed magnitude.

  Args:
    image: [H, W, 3] uint8; static height/width may be unknown.
    num_layers: N, the number of ops applied in sequence (Python int).
    magnitude: M on the official scale (paper: 27); float or scalar tensor.
    seed: None (stateful random ops) or a shape [2] int32/int64 tensor: the same seed
      gives the same output, eagerly, in `tf.function` and in a parallel `Dataset.map`.
    translate_const: pixels TranslateX/Y move at M = 10 (ImageNet 100; 32x32: size // 8).
    cutout_const: Cutout half-size at M = 10 (ImageNet 40; 32x32: size // 8).
    fill_value: value of pixels uncovered by geometric ops and Cutout.

  Returns:
    [H, W, 3] uint8, same shape as `image`.
  """
  image = _check_image(image)
  static_shape = image.shape
  if seed is None:
    # One stateful draw, then the stateless path: a single code path for both modes.
    seed = tf.random.uniform([2], minval=-(2**31), maxval=2**31 - 1, dtype=tf.int32)
  seed = tf.cast(seed, tf.int64)
  constants = [tf.cast(v, tf.float64)
               for v in (magnitude, translate_const, cutout_const, fill_value)]
  layer_seeds = tf.random.experimental.stateless_split(seed, num=max(num_layers, 1))
  for layer in range(num_layers):
    op_seed, sign_seed, cutout_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seeds[layer], num=3))
    op_index = tf.random.stateless_uniform(
        [], op_seed, minval=0, maxval=len(OP_NAMES), dtype=tf.int32)
    sign = 2 * tf.random.stateless_uniform(
        [], sign_seed, minval=0, maxval=2, dtype=tf.int32) - 1
    image = _layer(image, op_index, sign, cutout_seed, *constants)
  return tf.ensure_shape(image, static_shape)
