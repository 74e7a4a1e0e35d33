"""Preprocessing paths: exact crops and pads, PIL-compatible bicubic, seeded noise."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.input import preprocessing
from data.input.preprocessing import PreprocessConfig

SEED = tf.constant([3, 4], tf.int64)


def _random_image(h, w, seed=0, low=0, high=256):
  return np.random.default_rng(seed).integers(low, high, (h, w, 3), dtype=np.uint8)


def _pil_bicubic(array, size):
  return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), np.float32)


def test_center_crop_window_exact():
  # side = int(16 / 48 * min(100, 120)) = 33; offsets (100 - 33 + 1) // 2, (120 - 33 + 1) // 2.
  window = preprocessing.center_crop_window(tf.constant([100, 120, 3]), 16)
  assert window.numpy().tolist() == [34, 44, 33, 33]
  assert preprocessing.center_crop_window(tf.constant([2, 2, 3]), 4).numpy().tolist() == [
      1, 1, 1, 1]  # Never an empty crop.


# Pixel values in [64, 192): bicubic overshoot stays inside [0, 255]. (PIL resizes in two
# separable passes and rounds/clips to uint8 in between; where the first pass overshoots,
# e.g. on full-range noise, it differs from TF's float computation by up to ~20.)
@pytest.mark.parametrize("shape,antialias,tolerance", [
    # Upsampling (13 -> 16): the kernels agree; PIL rounds to uint8 (twice), so < 1.
    ((40, 48), False, 1.0),
    ((40, 48), True, 1.0),
    # Downsampling (33 -> 16) of noise: only antialias=True is PIL's filter.
    ((100, 120), True, 1.0),
])
def test_eval_path_is_center_crop_and_pil_bicubic(shape, antialias, tolerance):
  image = _random_image(*shape, low=64, high=192)
  config = PreprocessConfig(16, augment="none", antialias=antialias)
  out = preprocessing.preprocess_image(tf.io.encode_png(image), config).numpy()
  y, x, h, w = preprocessing.center_crop_window(tf.constant(shape + (3,)), 16).numpy()
  expected = _pil_bicubic(image[y:y + h, x:x + w], 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  assert np.abs(out - expected).max() < tolerance


def test_without_antialias_downsampling_is_the_official_aliasing_resize():
  image = _random_image(100, 120, low=64, high=192)
  out = preprocessing.preprocess_image(
      tf.io.encode_png(image), PreprocessConfig(16, augment="none")).numpy()
  expected = _pil_bicubic(image[34:67, 44:77], 16)
  assert np.abs(out - expected).mean() > 10  # Documented: TF1 resize_bicubic semantics.
  assert 0.0 <= out.min() and out.max() <= 255.0  # Clipped after bicubic overshoot.


def test_jpeg_crop_window_decoding_equals_full_decode_then_crop():
  # Without chroma subsampling: with 4:2:0, libjpeg's chroma upsampling makes the crop's
  # edge columns differ slightly from a full decode (as in the official code).
  jpeg = tf.io.encode_jpeg(_random_image(60, 50), quality=90, chroma_downsampling=False)
  png_of_same_pixels = tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3))
  for config in (PreprocessConfig(24, augment="none"),
                 PreprocessConfig(24, augment="standard", flip=False)):
    a = preprocessing.preprocess_image(jpeg, config, SEED)
    b = preprocessing.preprocess_image(png_of_same_pixels, config, SEED)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-3)


def test_inception_crop_windows_respect_area_and_aspect():
  config = PreprocessConfig(32)
  shape = tf.constant([200, 300, 3])
  windows = set()
  for i in range(40):
    y, x, h, w = preprocessing.inception_crop_window(
        shape, tf.constant([i, 7]), config).numpy()
    assert 0 <= y and y + h <= 200 and 0 <= x and x + w <= 300
    assert 0.08 * 0.9 <= h * w / 60000 <= 1.0
    assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1
    windows.add((y, x, h, w))
  assert len(windows) > 30
  again = preprocessing.inception_crop_window(shape, tf.constant([5, 7]), config)
  first = preprocessing.inception_crop_window(shape, tf.constant([5, 7]), config)
  assert again.numpy().tolist() == first.numpy().tolist()


def test_inception_crop_falls_back_to_center_crop():
  # A 1x200 image has no crop with area >= 8% and aspect in [3/4, 4/3].
  shape = tf.constant([1, 200, 3])
  window = preprocessing.inception_crop_window(shape, SEED, PreprocessConfig(32))
  assert window.numpy().tolist() == preprocessing.center_crop_window(
      shape, 32).numpy().tolist()


def test_small_eval_pads_fashion_mnist_28_to_32_exactly():
  grey = np.random.default_rng(0).integers(1, 256, (28, 28, 1), dtype=np.uint8)
  out = preprocessing.preprocess_image(
      tf.io.encode_png(grey), PreprocessConfig(32, mode="small", augment="none")).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[2:30, 2:30], np.repeat(grey, 3, -1))
  border = np.ones([32, 32], bool)
  border[2:30, 2:30] = False
  assert np.all(out[border] == 0)


def test_small_path_resizes_larger_images():
  out = preprocessing.preprocess_image(
      tf.io.encode_png(_random_image(40, 36)),
      PreprocessConfig(32, mode="small", augment="none"))
  assert out.shape == (32, 32, 3)


def _windows(padded, size):
  for dy in range(padded.shape[0] - size + 1):
    for dx in range(padded.shape[1] - size + 1):
      yield padded[dy:dy + size, dx:dx + size]


def test_small_standard_is_reflect_pad_crop_and_flip():
  image = _random_image(32, 32)
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode="reflect").astype(np.float32)
  encoded = tf.io.encode_png(image)
  for flip in (False, True):
    config = PreprocessConfig(32, mode="small", augment="standard", flip=flip)
    crops = []
    for i in range(6):
      out = preprocessing.preprocess_image(encoded, config, tf.constant([i, 1])).numpy()
      candidates = list(_windows(padded, 32))
      if flip:
        candidates += [c[:, ::-1] for c in candidates]
      assert any(np.array_equal(out, c) for c in candidates)
      crops.append(out.tobytes())
    assert len(set(crops)) > 1


@pytest.mark.parametrize("mode,size,augment", [
    ("small", 32, "standard"),
    ("imagenet", 24, "standard"),
    ("small", 32, "randaugment"),
    # Tracing RandAugment's 16-way switch costs seconds: one trace per test.
    pytest.param("imagenet", 24, "randaugment", marks=pytest.mark.slow),
])
def test_augmented_paths_are_seeded_in_a_parallel_map(mode, size, augment):
  config = PreprocessConfig(size, mode=mode, augment=augment, randaugment_magnitude=9)
  encoded = tf.io.encode_png(_random_image(28, 30))
  seeds = tf.constant([[3, 4]] * 4 + [[i, 9] for i in range(4)], tf.int64)
  images = np.stack(list(tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: preprocessing.preprocess_image(encoded, config, s), num_parallel_calls=4,
      deterministic=True).as_numpy_iterator()))
  assert images.shape == (8, size, size, 3) and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 255.0
  for k in range(1, 4):
    np.testing.assert_array_equal(images[k], images[0])
  assert len({im.tobytes() for im in images[4:]} - {images[0].tobytes()}) >= 2
  if augment == "standard":  # Eager and graph agree (cheap without RandAugment).
    np.testing.assert_array_equal(
        preprocessing.preprocess_image(encoded, config, seeds[0]).numpy(), images[0])


def test_randaugment_constants_follow_the_mode():
  assert PreprocessConfig(224).randaugment_constants == (100, 40)
  assert PreprocessConfig(32, mode="small").randaugment_constants == (4, 4)
  assert PreprocessConfig(32, mode="small", cutout_const=8).randaugment_constants == (4, 8)
  assert PreprocessConfig(32, augment="randaugment").for_eval().augment == "none"


def test_bad_config_is_an_error():
  with pytest.raises(ValueError, match="mode"):
    PreprocessConfig(32, mode="tiny")
  with pytest.raises(ValueError, match="augment"):
    PreprocessConfig(32, augment="autoaugment")
