"""ImageNet-P-style sequences: exact geometry on tiny images, shapes, determinism, rules."""
import numpy as np
import pytest
import tensorflow as tf

from data.robustness import perturbations as P


def _image(size=32, seed=0):
  """A smooth random image with integer pixel values (so identity frames are exact)."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (size // 4, size // 4, 3))
  return np.round(np.kron(coarse, np.ones((4, 4, 1)))).astype(np.float32)


def test_warp_rotates_a_3x3_by_90_degrees_exactly():
  x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  one, zero = tf.ones([1]), tf.zeros([1])
  m = P.affine_about_centre(zero, one, -one, zero, zero, zero, 3, 3)
  np.testing.assert_array_equal(P.warp(x, m, "constant")[0, ..., 0], np.rot90(x[0, ..., 0], -1))


def test_warp_translates_by_whole_pixels_exactly():
  x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  one, zero = tf.ones([1]), tf.zeros([1])
  m = P.affine_about_centre(one, zero, zero, one, one, zero, 3, 3)  # 1 px to the right
  np.testing.assert_array_equal(P.warp(x, m, "constant")[0, ..., 0],
                                [[0, 0, 1], [0, 3, 4], [0, 6, 7]])


def test_tilt_by_zero_is_the_identity():
  h = P.tilt_homography(tf.zeros([2]), 0.7, 32, 32)
  np.testing.assert_allclose(h, np.tile(np.eye(3), (2, 1, 1)), atol=1e-5)


def test_tilt_turns_the_image_plane_about_its_centre():
  """Against an independent construction: rotate each plane point in 3D with scipy,
  move it to the camera's distance (the image diagonal) and project it."""
  from scipy.spatial.transform import Rotation
  height, width, axis = 24, 32, 0.7
  cx, cy, f = (width - 1) / 2, (height - 1) / 2, np.hypot(height, width)
  angles = np.radians([-15.0, 4.0, 15.0])
  maps = P.tilt_homography(tf.constant(angles, tf.float32), axis, height, width).numpy()
  for angle, back in zip(angles, maps):
    turn = Rotation.from_rotvec(angle * np.array([np.cos(axis), np.sin(axis), 0.0]))
    for x, y in [(0, 0), (31, 23), (5, 17), (cx, cy)]:
      point = turn.apply([x - cx, y - cy, 0.0]) + [0.0, 0.0, f]
      seen = [f * point[0] / point[2] + cx, f * point[1] / point[2] + cy, 1.0]
      source = back @ seen
      np.testing.assert_allclose(source[:2] / source[2], [x, y], atol=1e-3)
  # The centre stays put; at 15 degrees the corners move by up to a few pixels (less
  # for corners near the axis).
  centre = maps[2] @ [cx, cy, 1.0]
  np.testing.assert_allclose(centre[:2] / centre[2], [cx, cy], atol=1e-4)
  moves = []
  for x, y in [(0, 0), (31, 0), (0, 23), (31, 23)]:
    source = maps[2] @ [x, y, 1.0]
    moves.append(np.hypot(*(source[:2] / source[2] - [x, y])))
  assert 1.0 < max(moves) < 4.0 and min(moves) < max(moves) / 2


@pytest.mark.parametrize("name", P.PERTURBATIONS)
def test_sequence_shapes_range_and_determinism(name):
  image = _image()
  frames = P.perturbation_sequence(image, name, num_frames=5, seed=(1, 2)).numpy()
  assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.float32
  assert frames.min() >= 0 and frames.max() <= 255
  np.testing.assert_array_equal(frames, np.round(frames))  # integer pixel values
  again = P.perturbation_sequence(image, name, num_frames=5, seed=(1, 2)).numpy()
  np.testing.assert_array_equal(frames, again)
  # Frames differ from each other (the sequence moves).
  assert np.abs(frames[0] - frames[-1]).mean() > 0.5


@pytest.mark.parametrize("name", ["brightness", "translate", "rotate", "tilt", "scale"])
def test_symmetric_sweeps_pass_through_the_clean_image(name):
  image = _image()
  frames = P.perturbation_sequence(image, name, num_frames=5, seed=(3, 4)).numpy()
  np.testing.assert_allclose(frames[2], image, atol=1.0)  # the middle frame is clean


@pytest.mark.parametrize("name", ["motion_blur", "zoom_blur"])
def test_blur_sweeps_start_at_the_clean_image_and_grow(name):
  image = _image()
  frames = P.perturbation_sequence(image, name, num_frames=4, seed=(3, 4)).numpy()
  np.testing.assert_allclose(frames[0], image, atol=1.0)
  dist = [np.abs(f - image).mean() for f in frames]
  assert dist == sorted(dist) and dist[-1] > 2


@pytest.mark.parametrize("name", P.NOISE)
def test_noise_starts_clean_then_independent_draws_around_the_image(name):
  image = _image()
  frames = P.perturbation_sequence(image, name, num_frames=5, seed=(5, 6)).numpy()
  # Frame 0 is the clean image (ImageNet-P's noise videos start clean: the first-frame
  # rule compares each noisy copy with it).
  np.testing.assert_array_equal(frames[0], image)
  assert all(np.abs(frames[i] - frames[j]).mean() > 1 for i in range(5) for j in range(i))
  assert abs(frames[1:].mean() - image.mean()) < 2.0
  other = P.perturbation_sequence(image, name, num_frames=5, seed=(5, 7)).numpy()
  np.testing.assert_array_equal(other[0], image)
  assert np.abs(other[1:] - frames[1:]).mean() > 1


def test_sequences_inside_dataset_map_match_eager():
  images = np.stack([_image(seed=i) for i in range(2)])
  ids = np.array([b"a", b"b"])

  def make(image, image_id):
    seed = P.image_seed(image_id, 9)
    return P.perturbation_sequence(image, "translate", num_frames=3, seed=seed)

  ds = tf.data.Dataset.from_tensor_slices((images, ids)).map(make)
  for got, image, image_id in zip(ds, images, ids):
    want = make(tf.constant(image), tf.constant(image_id))
    np.testing.assert_array_equal(got, want)


def test_image_seed_depends_only_on_id_and_seed():
  a = P.image_seed(tf.constant("img-1"), 0).numpy()
  np.testing.assert_array_equal(a, P.image_seed(tf.constant("img-1"), 0))
  assert not np.array_equal(a, P.image_seed(tf.constant("img-2"), 0))
  assert not np.array_equal(a, P.image_seed(tf.constant("img-1"), 1))


def test_snow_is_a_whitened_image_under_a_falling_flake_field():
  image, seed = _image(), (5, 6)
  frames = P.perturbation_sequence(image, "snow", num_frames=5, seed=seed).numpy()
  grey = image.mean(-1, keepdims=True)
  base = 0.8 * image + 0.2 * np.maximum(image, 1.5 * grey + 127.5)  # by hand
  field = P.snow_field(32, 32, tf.constant(seed)).numpy()
  assert 0.03 < (field == 1).mean() < 0.09 and set(np.unique(field)) <= {0, 0.5, 1}
  fall = P.snow_fall(32, 5).numpy()
  np.testing.assert_array_equal(fall, [0, 4, 8, 12, 16])  # half the height in all
  for k, f in enumerate(fall):
    layer = field[32 - f:64 - f]
    expected = np.clip(np.round(base + 255 * layer[..., None]), 0, 255)
    np.testing.assert_array_equal(frames[k], expected)
  # Snow falls: every full flake of frame 0 is white in frame 1, 4 rows lower.
  flakes0 = field[32:64] == 1
  assert flakes0[:-4].sum() > 20
  assert (frames[1][4:][flakes0[:-4]] == 255).all()


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown perturbation"):
    P.perturbation_sequence(_image(), "hail")
  with pytest.raises(ValueError, match="num_frames"):
    P.perturbation_sequence(_image(), "rotate", num_frames=1)
