"""Tests for data/input/randaugment.py: every op against PIL, eager vs Dataset.map, tiny exact
geometric cases, the pinned out-of-range magnitudes and the policy's seeding."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from data.input import randaugment as ra

FILL = (128, 128, 128)
OFFICIAL_NAMES = [
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
    "SolarizeAdd", "Cutout"]
GEOMETRIC = ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"]


@pytest.fixture(scope="module")
def photo():
  """A real photo (scikit-image's astronaut), 64 wide x 48 high so H/W mix-ups show."""
  from skimage import data as skdata
  return np.asarray(Image.fromarray(skdata.astronaut()).resize((64, 48), Image.BICUBIC))


# ----------------------------------------------------------------------------------------
# Independent reference: PIL at the official magnitude -> argument maps (official autoaugment.py).

def pil_reference(image, op_name, magnitude, sign=1, translate_const=100):
  pil = Image.fromarray(image)
  m = magnitude / 10.0
  factor = 1.8 * m + 0.1
  affine = lambda matrix: pil.transform(pil.size, Image.AFFINE, matrix, Image.NEAREST,
                                        fillcolor=FILL)
  if op_name == "AutoContrast":
    out = ImageOps.autocontrast(pil)
  elif op_name == "Equalize":
    out = ImageOps.equalize(pil)
  elif op_name == "Invert":
    out = ImageOps.invert(pil)
  elif op_name == "Posterize":
    out = ImageOps.posterize(pil, int(4 * m))
  elif op_name == "Solarize":
    out = ImageOps.solarize(pil, int(256 * m))
  elif op_name == "SolarizeAdd":
    add = int(110 * m)
    out = pil.point([min(i + add, 255) if i < 128 else i for i in range(256)] * 3)
  elif op_name == "Color":
    out = ImageEnhance.Color(pil).enhance(factor)
  elif op_name == "Contrast":
    out = ImageEnhance.Contrast(pil).enhance(factor)
  elif op_name == "Brightness":
    out = ImageEnhance.Brightness(pil).enhance(factor)
  elif op_name == "Sharpness":
    out = ImageEnhance.Sharpness(pil).enhance(factor)
  elif op_name == "Rotate":
    out = pil.rotate(sign * 30 * m, Image.NEAREST, fillcolor=FILL)
  elif op_name == "ShearX":
    out = affine((1, sign * 0.3 * m, 0, 0, 1, 0))
  elif op_name == "ShearY":
    out = affine((1, 0, 0, sign * 0.3 * m, 1, 0))
  elif op_name == "TranslateX":
    out = affine((1, 0, sign * m * translate_const, 0, 1, 0))
  elif op_name == "TranslateY":
    out = affine((1, 0, 0, 0, 1, sign * m * translate_const))
  else:
    raise ValueError(op_name)
  return np.asarray(out)


def differing_fraction(a, b):
  return float(np.mean(np.any(a != b, axis=-1)))


# PIL's valid range only: Posterize bits int(4 m) <= 8, Solarize threshold int(256 m) < 256.
# Beyond it the arguments are the official code's (test_out_of_range_arguments_...).
COLOR_CASES = [(name, magnitude) for name in
               ["AutoContrast", "Equalize", "Invert", "Posterize", "Solarize",
                "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness"]
               for magnitude in (3, 7, 10, 27)
               if not (name == "Posterize" and magnitude > 22 or
                       name == "Solarize" and magnitude >= 10)]


@pytest.mark.parametrize("op_name,magnitude", COLOR_CASES)
def test_color_ops_match_pil_exactly(photo, op_name, magnitude):
  # Exact: same integer tables, PIL's fixed-point luma, float32 blend + truncation.
  ours = ra.apply_op(photo, op_name, magnitude).numpy()
  np.testing.assert_array_equal(ours, pil_reference(photo, op_name, magnitude))


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("op_name", GEOMETRIC)
def test_geometric_ops_match_pil(photo, op_name, sign):
  # translate_const=10 keeps the shifted content inside the 64x48 image.
  ours = ra.apply_op(photo, op_name, 7, sign=sign, translate_const=10).numpy()
  ref = pil_reference(photo, op_name, 7, sign=sign, translate_const=10)
  if op_name.startswith("Translate"):
    np.testing.assert_array_equal(ours, ref)  # whole-pixel shifts: exact
  else:
    # PIL evaluates the map in 16.16 fixed point, we in float32: a sample landing within
    # ~1e-5 of a pixel edge may pick the neighbour. Allow 1% of pixels.
    assert differing_fraction(ours, ref) <= 0.01


@pytest.mark.parametrize("pixels", [0.4, 0.5, 1.5, -1.5, 2.49])
def test_fractional_translate_matches_pil(photo, pixels):
  # PIL samples floor(x + .5 + t): the shift is t rounded half up.
  ours = ra.translate_x(photo, pixels).numpy()
  pil = Image.fromarray(photo)
  ref = pil.transform(pil.size, Image.AFFINE, (1, 0, pixels, 0, 1, 0), Image.NEAREST,
                      fillcolor=FILL)
  np.testing.assert_array_equal(ours, np.asarray(ref))


def test_enhance_ops_clip_at_paper_magnitude(photo):
  # M=27 extrapolates with factor 4.96: values must saturate, not wrap.
  out = ra.apply_op(photo, "Contrast", 27).numpy()
  assert out.min() == 0 and out.max() == 255
  np.testing.assert_array_equal(out, pil_reference(photo, "Contrast", 27))


# ----------------------------------------------------------------------------------------
# Geometric ops exactly on tiny images.

def tiny(height, width):
  values = np.arange(height * width, dtype=np.uint8).reshape(height, width) * 10 + 1
  return np.repeat(values[:, :, None], 3, axis=2)


def test_rotate_3x3_by_90_is_exact():
  image = tiny(3, 3)
  np.testing.assert_array_equal(ra.rotate(image, 90.0).numpy(), np.rot90(image, 1))
  np.testing.assert_array_equal(ra.rotate(image, -90.0).numpy(), np.rot90(image, -1))
  four = tiny(4, 4)
  np.testing.assert_array_equal(ra.rotate(four, 180.0).numpy(), np.rot90(four, 2))


def test_rotate_non_square_by_90_fills_outside():
  # A 2x4 image rotated about its centre keeps only its middle two columns.
  image = tiny(2, 4)
  out = ra.rotate(image, 90.0).numpy()
  expected = np.full_like(image, 128)
  expected[:, 1:3] = np.rot90(image[:, 1:3], 1)
  np.testing.assert_array_equal(out, expected)
  pil = np.asarray(Image.fromarray(image).rotate(90, Image.NEAREST, fillcolor=FILL))
  np.testing.assert_array_equal(out, pil)


def test_translate_4x4_by_one_pixel():
  image = tiny(4, 4)
  expected = np.full_like(image, 128)
  expected[:, :3] = image[:, 1:]  # TranslateX +1: content moves left
  np.testing.assert_array_equal(
      ra.apply_op(image, "TranslateX", 10, translate_const=1).numpy(), expected)
  expected = np.full_like(image, 128)
  expected[1:] = image[:3]  # TranslateY -1: content moves down
  np.testing.assert_array_equal(
      ra.apply_op(image, "TranslateY", 10, sign=-1, translate_const=1).numpy(), expected)


def test_translate_beyond_the_image_is_all_fill():
  # M=27 with translate_const 100 moves 270 px: a 224 image becomes all fill.
  out = ra.apply_op(tiny(4, 4), "TranslateX", 27).numpy()
  np.testing.assert_array_equal(out, np.full((4, 4, 3), 128))


def test_shear_x_3x3_is_exact():
  # Output (x, y) samples input column floor(x + .5 + (y + .5)) = x + y + 1.
  image = tiny(3, 3)
  expected = np.full_like(image, 128)
  for y in range(3):
    for x in range(3):
      if x + y + 1 < 3:
        expected[y, x] = image[y, x + y + 1]
  np.testing.assert_array_equal(ra.shear_x(image, 1.0).numpy(), expected)
  transposed = np.swapaxes(image, 0, 1)
  np.testing.assert_array_equal(ra.shear_y(image, 1.0).numpy(),
                                np.swapaxes(ra.shear_x(transposed, 1.0), 0, 1))
  pil = Image.fromarray(image)
  ref = pil.transform(pil.size, Image.AFFINE, (1, 1, 0, 0, 1, 0), Image.NEAREST,
                      fillcolor=FILL)
  np.testing.assert_array_equal(expected, np.asarray(ref))


def test_geometric_fill_value_is_configurable():
  out = ra.apply_op(tiny(4, 4), "TranslateY", 27, fill_value=7).numpy()
  np.testing.assert_array_equal(out, np.full((4, 4, 3), 7))


# ----------------------------------------------------------------------------------------
# Out-of-range magnitudes (module docstring): the official code's arguments, pinned.

def official_posterize(image, magnitude):
  """The official op on the official int, executed by TF (shift converted to uint8)."""
  shift = 8 - int(magnitude / 10 * 4)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(tf.constant(image), shift), shift)


def official_solarize(image, magnitude):
  image = tf.constant(image)
  return tf.where(image < int(magnitude / 10 * 256), image, 255 - image)


@pytest.mark.parametrize("magnitude", [0, 2, 3, 9, 10, 11, 20, 22, 23, 27, 30])
def test_out_of_range_arguments_match_official_tf_ops(photo, magnitude):
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", magnitude).numpy(),
                                official_posterize(photo, magnitude).numpy())
  np.testing.assert_array_equal(ra.apply_op(photo, "Solarize", magnitude).numpy(),
                                official_solarize(photo, magnitude).numpy())


def test_posterize_and_solarize_at_paper_magnitude(photo):
  # Posterize: bits int(4 * 2.7) = 10 -> shift -2 -> uint8 254 -> clamped 7: one bit.
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", 27).numpy(), photo & 0x80)
  # Solarize: threshold int(256 * 2.7) = 691 -> uint8 179.
  expected = np.where(photo < 179, photo, 255 - photo)
  np.testing.assert_array_equal(ra.apply_op(photo, "Solarize", 27).numpy(), expected)


def test_posterize_and_solarize_boundaries(photo):
  # Posterize keeps int(4 m) bits from M=2.5 to 22.4, one bit outside.
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", 22).numpy(), photo)
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", 19).numpy(), photo & 0xFE)
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", 2).numpy(), photo & 0x80)
  np.testing.assert_array_equal(ra.apply_op(photo, "Posterize", 23).numpy(), photo & 0x80)
  # Solarize: M=9 inverts pixels >= 230; M=10 (threshold 256 -> 0) inverts all.
  expected = np.where(photo >= 230, 255 - photo, photo)
  np.testing.assert_array_equal(ra.apply_op(photo, "Solarize", 9).numpy(), expected)
  np.testing.assert_array_equal(ra.apply_op(photo, "Solarize", 10).numpy(), 255 - photo)


def test_ops_called_directly_are_pils(photo):
  # NAME_TO_OP functions take PIL's arguments; out of range they saturate like PIL.
  np.testing.assert_array_equal(ra.posterize(photo, 10).numpy(), photo)
  np.testing.assert_array_equal(ra.posterize(photo, 0).numpy(), 0 * photo)
  np.testing.assert_array_equal(ra.solarize(photo, 691).numpy(), photo)
  pil = np.asarray(ImageOps.solarize(Image.fromarray(photo), 691))
  np.testing.assert_array_equal(ra.solarize(photo, 691).numpy(), pil)
  np.testing.assert_array_equal(ra.solarize(photo, 0).numpy(), 255 - photo)


def test_solarize_add_at_paper_magnitude(photo):
  # Adds int(110 * 2.7) = 297 below 128: every dark pixel saturates to 255.
  expected = np.where(photo < 128, 255, photo)
  np.testing.assert_array_equal(ra.apply_op(photo, "SolarizeAdd", 27).numpy(), expected)


# ----------------------------------------------------------------------------------------
# Cutout.

def fill_box(out, fill=128):
  """Rows and columns spanned by the fill value in an image that had none."""
  rows, cols = np.nonzero(np.all(out == fill, axis=-1))
  return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1, len(rows)


def test_cutout_is_a_clipped_square_fixed_by_the_seed():
  image = np.full((32, 32, 3), 7, np.uint8)
  boxes = set()
  for i in range(8):
    out = ra.cutout(image, 8, seed=[i, 3]).numpy()
    np.testing.assert_array_equal(out, ra.cutout(image, 8, seed=[i, 3]).numpy())
    top, bottom, left, right, count = fill_box(out)
    assert count == (bottom - top) * (right - left)  # a filled rectangle
    assert bottom - top <= 16 and right - left <= 16
    # Sides shorter than 16 only where the square is clipped by the border.
    assert bottom - top == 16 or top == 0 or bottom == 32
    assert right - left == 16 or left == 0 or right == 32
    assert np.all(out[np.any(out != 128, axis=-1)] == 7)
    boxes.add((top, left))
  assert len(boxes) > 4  # the seed moves the centre


def test_cutout_magnitude_and_fill(photo):
  # M=5, cutout_const 8: half-size int(0.5 * 8) = 4, so at most an 8x8 square.
  blank = np.full_like(photo, 3)
  out = ra.apply_op(blank, "Cutout", 5, cutout_const=8, fill_value=200, seed=[1, 2]).numpy()
  top, bottom, left, right, count = fill_box(out, fill=200)
  assert count == (bottom - top) * (right - left) <= 64


# ----------------------------------------------------------------------------------------
# Graph modes: eagerly == inside Dataset.map with unknown static shape.

@pytest.mark.parametrize("op_name", OFFICIAL_NAMES)
def test_eager_equals_dataset_map(photo, op_name):
  kwargs = dict(sign=-1, translate_const=10, seed=tf.constant([5, 6], tf.int64))
  eager = ra.apply_op(photo, op_name, 27 if op_name != "Posterize" else 7, **kwargs)
  dataset = tf.data.Dataset.from_generator(
      lambda: iter([photo]), output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  mapped = dataset.map(lambda image: ra.apply_op(
      image, op_name, 27 if op_name != "Posterize" else 7, **kwargs))
  assert mapped.element_spec.shape.as_list() == [None, None, 3]
  np.testing.assert_array_equal(next(iter(mapped)).numpy(), eager.numpy())


def test_op_table_has_the_official_names():
  assert list(ra.NAME_TO_OP) == OFFICIAL_NAMES
  assert ra.OP_NAMES == tuple(OFFICIAL_NAMES)


def test_rejects_bad_input(photo):
  with pytest.raises(TypeError, match="uint8"):
    ra.randaugment(photo.astype(np.float32))
  with pytest.raises(ValueError, match="unknown op"):
    ra.apply_op(photo, "Identity", 10)


# ----------------------------------------------------------------------------------------
# The policy.

def test_randaugment_is_deterministic_given_a_seed(photo):
  run = lambda seed: ra.randaugment(photo, 2, 27, seed=tf.constant(seed)).numpy()
  first = run([1, 2])
  assert first.dtype == np.uint8 and first.shape == photo.shape
  np.testing.assert_array_equal(first, run([1, 2]))
  # Different seeds, different images (at M=9 and a 10 px translation: at M=27 on a
  # 64x48 image several ops collapse to the same picture, e.g. translations to all-fill).
  outputs = {ra.randaugment(photo, 2, 9, seed=[i, 2], translate_const=10).numpy().tobytes()
             for i in range(8)}
  assert len(outputs) >= 7  # seeds 0 and 5 both draw Brightness then Solarize


def test_randaugment_graph_modes_agree(photo):
  seeds = tf.constant([[i, 7] for i in range(6)], tf.int64)
  eager = [ra.randaugment(photo, 2, 27, seed=seed).numpy() for seed in seeds]
  as_function = tf.function(lambda image, seed: ra.randaugment(image, 2, 27, seed=seed))
  dataset = tf.data.Dataset.from_tensor_slices((tf.range(6), seeds)).map(
      lambda i, seed: (i, ra.randaugment(tf.constant(photo), 2, 27, seed=seed)),
      num_parallel_calls=3, deterministic=False)
  mapped = dict((int(i), image.numpy()) for i, image in dataset)
  for i in range(6):
    np.testing.assert_array_equal(as_function(photo, seeds[i]).numpy(), eager[i])
    np.testing.assert_array_equal(mapped[i], eager[i])


def test_randaugment_unknown_shape_and_unseeded(photo):
  dataset = tf.data.Dataset.from_generator(
      lambda: iter([photo, photo[:20, :30]]),
      output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  augmented = dataset.map(lambda image: ra.randaugment(image, 2, 27))
  shapes = [image.shape for image in augmented]
  assert shapes == [photo.shape, (20, 30, 3)]
  assert ra.randaugment(photo, 3, 27).shape == photo.shape  # stateful, eager
  np.testing.assert_array_equal(ra.randaugment(photo, 0, 27, seed=[1, 1]).numpy(), photo)


def test_every_layer_applies_one_listed_op(photo):
  """num_layers=1: each output is exactly one op at M (no identity branch); all ops used."""
  magnitude = 9
  candidates = {}
  for name in OFFICIAL_NAMES[:-1]:  # Cutout is random in its centre: checked separately
    for sign in (1, -1):
      out = ra.apply_op(photo, name, magnitude, sign=sign).numpy()
      candidates.setdefault(out.tobytes(), name)
  policy = tf.function(lambda seed: ra.randaugment(photo, 1, magnitude, seed=seed))
  used = set()
  for i in range(64):
    out = policy(tf.constant([i, 0])).numpy()
    if out.tobytes() in candidates:
      used.add(candidates[out.tobytes()])
    else:  # must be Cutout: differs from the photo only inside a 128-filled rectangle
      changed = np.any(out != photo, axis=-1)
      assert changed.any() and np.all(out[changed] == 128), f"seed {i}: not a listed op"
      used.add("Cutout")
  assert len(used) >= 13, used
