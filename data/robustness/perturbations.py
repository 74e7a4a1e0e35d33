"""ImageNet-P-style perturbation sequences for any dataset (paper Sec. 3.3, Table 4).

ImageNet-P (Hendrycks & Dietterich 2019) turns each validation image into a short video
whose frames are ever more perturbed; a robust model's prediction should not flip between
frames. Its videos exist only for ImageNet, so this module builds comparable sequences
for any image, deterministically (stateless RNG seeded per image), in pure TensorFlow so
it runs inside `tf.data` on the model-sized eval image:

| name | frames | rule (robustness.flip_probability) |
|---|---|---|
| gaussian_noise | frame 0 clean, then independent draws, sigma 0.05 of full scale | vs first frame |
| shot_noise | frame 0 clean, then independent Poisson draws, 60 photons at full scale | vs first frame |
| motion_blur | blur length 0 -> size/10 px along a random direction | vs previous |
| zoom_blur | zoom-blur extent 1 -> 1.2 | vs previous |
| brightness | HSV value -0.2 -> +0.2 | vs previous |
| translate | shift of size/4 px in total along a random direction (sub-pixel) | vs previous |
| rotate | -15 -> +15 degrees about the centre | vs previous |
| tilt | the image plane turned -15 -> +15 degrees in 3D about a random axis through its centre | vs previous |
| scale | zoom 0.8 -> 1.25 (geometric) about the centre | vs previous |
| snow | a fixed field of 1-px flakes (6% of pixels, streaked 2 px) falls half the image height over a whitened image | vs previous |

`snow` follows ImageNet-C's recipe (whiten the image towards a brightened grey, add a
motion-streaked flake layer) at the scale of small images: ImageNet-C's renderer draws
flakes of several pixels, which would cover a 32x32 image. The flake field is drawn
once per sequence and slides down by whole pixels, so frames differ only where flakes
moved (hand-written: no maintained library renders a moving snow layer in TF).
Magnitudes are fixed per sequence end to end, so more frames give smaller steps between
frames (and lower flip probabilities): compare models only at the same `num_frames`.
Frames are rounded to integer pixel values (ImageNet-P stores videos of uint8 frames).
Geometric frames fill outside the image by reflection (`fill_mode`).

As in ImageNet-P's generator (`ImageNet-P/create_p/make_imagenet_p.py` in
hendrycks/robustness), a noise sequence starts with the clean image, so the first-frame
rule counts how often a noisy copy changes the clean prediction, and `tilt` turns the
image plane about its centre, seen from a camera at the image diagonal's distance (the
centre stays put). ImageNet-P turns it about x and then y by the same angle (a fixed,
roughly diagonal axis and a larger total angle); here the axis is random per image and
the angle is the whole rotation. `SEQUENCES_VERSION` numbers these definitions: flip rates of results
made with different versions are not compared.
"""

from __future__ import annotations

import math

import tensorflow as tf

PERTURBATIONS = ("gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow",
                 "brightness", "translate", "rotate", "tilt", "scale")
NOISE = ("gaussian_noise", "shot_noise")
DEFAULT_NUM_FRAMES = 31  # as ImageNet-P's videos
# 1: noise sequences noisy from frame 0 and tilt as a camera rotation (centre moved);
# 2: clean noise frame 0, tilt about the image centre (and, in noisy_student.evaluate,
# records without an id seeded by their position rather than all by "").
SEQUENCES_VERSION = 2

GAUSSIAN_SIGMA = 0.05
SHOT_PHOTONS = 60.0
MOTION_BLUR_MAX = 1 / 10     # of the image size
ZOOM_BLUR_MAX = 1.2
BRIGHTNESS_RANGE = (-0.2, 0.2)
TRANSLATE_TOTAL = 1 / 4      # of the image size
ROTATE_DEGREES = 15.0
TILT_DEGREES = 15.0
SCALE_RANGE = (0.8, 1.25)
BLUR_TAPS = 9
SNOW_DENSITY = 0.06          # fraction of pixels that start a flake
SNOW_FALL = 1 / 2            # of the image height, over the whole sequence
SNOW_WHITEN = 0.2            # ImageNet-C snow's mix towards max(x, 1.5 * grey + 0.5)


def _frame_seeds(seed: tf.Tensor, num_frames: int) -> tf.Tensor:
  return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num_frames)


def _sweep(start: float, stop: float, num_frames: int) -> tf.Tensor:
  return tf.linspace(tf.constant(start, tf.float32), stop, num_frames)


def _direction(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
  """A per-sequence random angle (radians): fixed for all frames of one image."""
  return tf.random.stateless_uniform([], tf.cast(seed, tf.int64) + 7, low, high)


# ------------------------------------------------------------------ geometric helpers


def _centre(height, width):
  return (tf.cast(width, tf.float32) - 1) / 2, (tf.cast(height, tf.float32) - 1) / 2


def affine_about_centre(a, b, c, d, tx, ty, height, width) -> tf.Tensor:
  """[n, 3, 3] output->input maps `in = M (out - centre) + centre - (tx, ty)`.

  a, b, c, d, tx, ty: [n] float32; M = [[a, b], [c, d]] acts on (x, y) = (column, row).
  """
  cx, cy = _centre(height, width)
  zero, one = tf.zeros_like(a), tf.ones_like(a)
  return tf.stack([
      tf.stack([a, b, cx - a * cx - b * cy - tx], -1),
      tf.stack([c, d, cy - c * cx - d * cy - ty], -1),
      tf.stack([zero, zero, one], -1)], 1)


def tilt_homography(angle, axis, height, width) -> tf.Tensor:
  """[n, 3, 3] output->input maps of the image plane turned by `angle` in 3D.

  The plane turns about the unit axis (cos axis, sin axis, 0) through its centre and is
  seen by a pinhole camera at distance f = the image diagonal on the optical axis (as
  ImageNet-P's tilt). A plane point (X, Y) (pixels from the centre) lands at
  K (X r1 + Y r2 + (0, 0, f)) with r1, r2 the first two columns of the rotation R and
  K = [[f, 0, cx], [0, f, cy], [0, 0, 1]]: the forward map is K [r1 r2 t] C^-1 with C the
  shift to the centre; the returned map is its inverse, scaled to end in 1. angle:
  radians, [n].
  """
  cx, cy = _centre(height, width)
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  f = tf.sqrt(h * h + w * w)
  k = tf.stack([tf.stack([f, 0.0, cx]), tf.stack([0.0, f, cy]), tf.constant([0.0, 0.0, 1.0])])
  from_centre = tf.stack([tf.stack([1.0, 0.0, -cx]), tf.stack([0.0, 1.0, -cy]),
                          tf.constant([0.0, 0.0, 1.0])])
  ux, uy = tf.cos(axis), tf.sin(axis)
  cos, sin = tf.cos(angle), tf.sin(angle)
  one_c = 1 - cos
  # Columns 1 and 2 of Rodrigues' rotation about (ux, uy, 0), then the plane's offset f.
  fz = tf.fill(tf.shape(angle), f)
  zero = tf.zeros_like(angle)
  plane = tf.stack([
      tf.stack([cos + ux * ux * one_c, ux * uy * one_c, zero], -1),
      tf.stack([ux * uy * one_c, cos + uy * uy * one_c, zero], -1),
      tf.stack([-uy * sin, ux * sin, fz], -1)], 1)
  backward = tf.linalg.inv(k[None] @ plane @ from_centre[None])
  return backward / backward[:, 2:3, 2:3]


def warp(images: tf.Tensor, matrices: tf.Tensor, fill_mode: str = "reflect") -> tf.Tensor:
  """Applies output->input projective maps with bilinear interpolation.

  Args:
    images: [n, h, w, c] float32.
    matrices: [n, 3, 3] float32 maps from output pixel (x, y, 1) to input coordinates.
    fill_mode: "reflect", "nearest", "wrap" or "constant" (zeros) outside the image.
  Returns:
    [n, h, w, c] float32.
  """
  matrices = matrices / matrices[:, 2:3, 2:3]
  transforms = tf.reshape(matrices, [-1, 9])[:, :8]
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
      fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode.upper())


# ------------------------------------------------------------------------ the frames


def _after_clean(image, noisy):
  """The clean image, then the noisy frames (ImageNet-P's noise videos start clean)."""
  return tf.concat([image[None], noisy], 0)


def _gaussian_noise(image, num_frames, seed, **_):
  seeds = _frame_seeds(seed, num_frames - 1)
  noise = tf.map_fn(lambda s: tf.random.stateless_normal(tf.shape(image), s),
                    seeds, fn_output_signature=tf.float32)
  return _after_clean(image, image[None] + noise * (GAUSSIAN_SIGMA * 255.0))


def _shot_noise(image, num_frames, seed, **_):
  seeds = _frame_seeds(seed, num_frames - 1)
  lam = image / 255.0 * SHOT_PHOTONS
  counts = tf.map_fn(lambda s: tf.random.stateless_poisson(tf.shape(image), s, lam, dtype=tf.float32),
                     seeds, fn_output_signature=tf.float32)
  return _after_clean(image, counts / SHOT_PHOTONS * 255.0)


def _blurred(image, matrices, num_frames, fill_mode):
  """Mean over BLUR_TAPS warped copies per frame; matrices: [frames * taps, 3, 3]."""
  copies = tf.tile(image[None], [num_frames * BLUR_TAPS, 1, 1, 1])
  warped = warp(copies, matrices, fill_mode)
  shape = tf.shape(image)
  return tf.reduce_mean(tf.reshape(warped, tf.concat([[num_frames, BLUR_TAPS], shape], 0)), 1)


def _motion_blur(image, num_frames, seed, fill_mode):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  length = _sweep(0.0, 1.0, num_frames) * MOTION_BLUR_MAX * tf.cast(tf.maximum(h, w), tf.float32)
  offsets = tf.reshape(length[:, None] * tf.linspace(-0.5, 0.5, BLUR_TAPS)[None], [-1])
  angle = _direction(seed, 0.0, math.pi)
  one, zero = tf.ones_like(offsets), tf.zeros_like(offsets)
  m = affine_about_centre(one, zero, zero, one, offsets * tf.cos(angle),
                          offsets * tf.sin(angle), h, w)
  return _blurred(image, m, num_frames, fill_mode)


def _zoom_blur(image, num_frames, seed, fill_mode):
  del seed
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  extent = _sweep(1.0, ZOOM_BLUR_MAX, num_frames)
  zooms = tf.reshape(1 + (extent[:, None] - 1) * tf.linspace(0.0, 1.0, BLUR_TAPS)[None], [-1])
  inv, zero = 1 / zooms, tf.zeros_like(zooms)
  m = affine_about_centre(inv, zero, zero, inv, zero, zero, h, w)
  return _blurred(image, m, num_frames, fill_mode)


def _brightness(image, num_frames, seed, **_):
  del seed
  deltas = _sweep(*BRIGHTNESS_RANGE, num_frames)
  hsv = tf.image.rgb_to_hsv(image / 255.0)
  value = tf.clip_by_value(hsv[None, ..., 2] + deltas[:, None, None], 0.0, 1.0)
  hsv = tf.concat([tf.tile(hsv[None, ..., :2], [num_frames, 1, 1, 1]), value[..., None]], -1)
  return tf.image.hsv_to_rgb(hsv) * 255.0


def snow_field(height, width, seed) -> tf.Tensor:
  """[2 * height, width] flake intensities in {0, 0.5, 1}: a flake and its fainter streak
  one pixel above (it falls downwards)."""
  field = tf.random.stateless_uniform(tf.stack([2 * height, width]), tf.cast(seed, tf.int64) + 11)
  flakes = tf.cast(field < SNOW_DENSITY, tf.float32)
  streak = tf.concat([flakes[1:], tf.zeros_like(flakes[:1])], 0)
  return tf.maximum(flakes, 0.5 * streak)


def snow_fall(height, num_frames) -> tf.Tensor:
  """[num_frames] int32 rows the flake field has fallen by at each frame."""
  fall = _sweep(0.0, SNOW_FALL, num_frames) * tf.cast(height, tf.float32)
  return tf.cast(tf.round(fall), tf.int32)


def _snow(image, num_frames, seed, **_):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  grey = tf.reduce_mean(image, -1, keepdims=True)
  base = (1 - SNOW_WHITEN) * image + SNOW_WHITEN * tf.maximum(image, 1.5 * grey + 127.5)
  field = snow_field(h, w, seed)
  # Frame k shows rows [h - f_k, 2h - f_k) of the field: its content moves down by f_k.
  layers = tf.map_fn(lambda f: field[h - f:2 * h - f], snow_fall(h, num_frames),
                     fn_output_signature=tf.float32)
  return base[None] + 255.0 * layers[..., None]


def _geometric(image, matrices, fill_mode):
  return warp(tf.tile(image[None], [tf.shape(matrices)[0], 1, 1, 1]), matrices, fill_mode)


def _translate(image, num_frames, seed, fill_mode):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  total = TRANSLATE_TOTAL * tf.cast(tf.maximum(h, w), tf.float32)
  shift = _sweep(-0.5, 0.5, num_frames) * total
  angle = _direction(seed, -math.pi, math.pi)
  one, zero = tf.ones_like(shift), tf.zeros_like(shift)
  return _geometric(image, affine_about_centre(one, zero, zero, one, shift * tf.cos(angle),
                                               shift * tf.sin(angle), h, w), fill_mode)


def _rotate(image, num_frames, seed, fill_mode):
  del seed
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  theta = _sweep(-ROTATE_DEGREES, ROTATE_DEGREES, num_frames) * (math.pi / 180)
  cos, sin, zero = tf.cos(theta), tf.sin(theta), tf.zeros_like(theta)
  return _geometric(image, affine_about_centre(cos, sin, -sin, cos, zero, zero, h, w), fill_mode)


def _tilt(image, num_frames, seed, fill_mode):
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  angle = _sweep(-TILT_DEGREES, TILT_DEGREES, num_frames) * (math.pi / 180)
  axis = _direction(seed, 0.0, math.pi)
  return _geometric(image, tilt_homography(angle, axis, h, w), fill_mode)


def _scale(image, num_frames, seed, fill_mode):
  del seed
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  log_lo, log_hi = (math.log(s) for s in SCALE_RANGE)
  inv = 1 / tf.exp(_sweep(log_lo, log_hi, num_frames))
  zero = tf.zeros_like(inv)
  return _geometric(image, affine_about_centre(inv, zero, zero, inv, zero, zero, h, w), fill_mode)


NAME_TO_SEQUENCE = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "brightness": _brightness,
    "translate": _translate,
    "rotate": _rotate,
    "tilt": _tilt,
    "scale": _scale,
}


def perturbation_sequence(image: tf.Tensor, name: str, *, num_frames: int = DEFAULT_NUM_FRAMES,
                          seed=(0, 0), fill_mode: str = "reflect") -> tf.Tensor:
  """The frames of one image's perturbation sequence.

  Args:
    image: [h, w, 3] float32 pixels in [0, 255] (the model-sized eval image).
    name: one of PERTURBATIONS.
    num_frames: frames per sequence (>= 2).
    seed: [2] int stateless seed; use `image_seed` for a per-image seed.
    fill_mode: how geometric frames fill outside the image.
  Returns:
    [num_frames, h, w, 3] float32 integer-valued pixels in [0, 255].
  """
  if name not in NAME_TO_SEQUENCE:
    raise ValueError(f"unknown perturbation {name!r}; choose from {PERTURBATIONS}")
  if num_frames < 2:
    raise ValueError(f"num_frames must be >= 2, got {num_frames}")
  image = tf.convert_to_tensor(image, tf.float32)
  frames = NAME_TO_SEQUENCE[name](image, num_frames, tf.convert_to_tensor(seed),
                                  fill_mode=fill_mode)
  return tf.clip_by_value(tf.round(frames), 0.0, 255.0)


def image_seed(image_id: tf.Tensor, seed: int) -> tf.Tensor:
  """A [2] int64 stateless seed from an image id string and a global seed.

  Depends only on (id, seed), so sequences do not change with batching or sharding and
  two models are evaluated on identical frames.
  """
  bucket = tf.strings.to_hash_bucket_fast(image_id, 2**62)
  return tf.stack([tf.constant(seed, tf.int64), bucket])
