"""Weight import from randomly initialised keras.applications models (no downloads)."""
import os
import uuid
import warnings

import keras
import numpy as np
import pytest

import efficientnet
from efficientnet.weights import KERAS_APPLICATIONS
from tests.efficientnet import keras_fixtures

from tests.efficientnet.keras_fixtures import IMAGENET_MEAN, IMAGENET_STD, SIZE
from tests.efficientnet.keras_fixtures import set_normalization as _set_normalization

_keras_model = keras_fixtures.random_keras_model


@pytest.fixture(scope="module")
def keras_b0():
  """One randomised keras.applications B0 (10 classes) shared by the tests: builds are slow."""
  return _keras_model("efficientnet-b0", classes=10)


@pytest.fixture
def published_normalization(keras_b0):
  """keras_b0 with the published checkpoints' normalisation (variance = std), restored after."""
  norm = [l for l in keras_b0.layers if isinstance(l, keras.layers.Normalization)][0]
  saved = [keras.ops.convert_to_numpy(v) for v in (norm.adapt_mean, norm.adapt_variance)]
  _set_normalization(norm, IMAGENET_MEAN, IMAGENET_STD)
  yield norm
  _set_normalization(norm, *saved)


def _images(n=2, seed=1):
  return np.random.RandomState(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def _ours(name, classes=1000, **kwargs):
  return efficientnet.build_model(name, num_classes=classes, input_shape=(SIZE, SIZE, 3),
                                  **kwargs)


def _assert_same_outputs(ours, theirs, x):
  """Our logits equal the source's up to float32 rounding.

  Deep random networks amplify rounding (ours and Keras' graphs round differently:
  fused "same" padding, BN on axis -1): for a random B7 a one-ulp change of the input
  alone moves Keras' own logits by ~1e-5..1e-3. The tolerance is 1e-4 or ten times that
  effect, whichever is larger; a wrong or missing weight changes logits by O(1).
  """
  run = lambda m, images: keras.ops.convert_to_numpy(m(images, training=False))
  a, b = run(ours, x), run(theirs, x)
  assert np.abs(b).max() > 0.1  # The comparison is meaningful.
  rounding = np.abs(run(theirs, x * np.float32(1 + 2 ** -23)) - b).max()
  np.testing.assert_allclose(a, b, rtol=0, atol=max(1e-4, 10 * rounding))


def test_import_b0_from_model(keras_b0):
  ours = efficientnet.load_keras_applications_weights(_ours("efficientnet-b0", 10), keras_b0)
  _assert_same_outputs(ours, keras_b0, _images())


@pytest.mark.parametrize("file_format", ["keras3", "legacy", "legacy_remote"])
def test_import_b0_from_weights_file(tmp_path, file_format, keras_b0):
  theirs = keras_b0
  if file_format == "keras3":
    path = str(tmp_path / "b0.weights.h5")
    theirs.save_weights(path)
  else:  # The layout of the files Keras publishes (efficientnetb0.h5).
    import h5py
    from keras.src.legacy.saving import legacy_h5_format
    path = str(tmp_path / "b0.h5")
    with h5py.File(path, "w") as f:
      legacy_h5_format.save_weights_to_hdf5_group(f, theirs)
  if file_format == "legacy_remote":  # On TF's in-memory filesystem, a stand-in for gs://.
    tf = pytest.importorskip("tensorflow")
    remote, path = path, f"ram://weights-{uuid.uuid4().hex[:8]}/b0.h5"
    tf.io.gfile.makedirs(os.path.dirname(path))
    tf.io.gfile.copy(remote, path)
    os.remove(remote)  # Only the remote copy can be read.
  ours = efficientnet.load_keras_applications_weights(_ours("efficientnet-b0", 10), path)
  _assert_same_outputs(ours, theirs, _images())
  if file_format == "legacy_remote":
    tf.io.gfile.rmtree(os.path.dirname(path))


def test_published_checkpoint_normalisation_is_corrected(
    tmp_path, keras_b0, published_normalization):
  # Published files store the std as the variance; weights="imagenet" divides by
  # sqrt(std) once more, i.e. computes (x / 255 - mean) / std. So must we.
  theirs, norm = keras_b0, published_normalization
  path = str(tmp_path / "published.weights.h5")
  theirs.save_weights(path)
  ours = efficientnet.load_keras_applications_weights(_ours("efficientnet-b0", 10), path)
  stats = ours.get_layer("input_normalization").get_weights()
  np.testing.assert_allclose(stats[0], IMAGENET_MEAN * 255, rtol=1e-5)
  np.testing.assert_allclose(stats[1], IMAGENET_STD * 255, rtol=1e-5)
  _set_normalization(norm, IMAGENET_MEAN, IMAGENET_STD ** 2)  # What "imagenet" computes.
  _assert_same_outputs(ours, theirs, _images())


def test_uncorrected_published_normalisation_in_a_model_warns(
    keras_b0, published_normalization):
  theirs = keras_b0
  with pytest.warns(UserWarning, match="correcting Rescaling"):
    ours = efficientnet.load_keras_applications_weights(_ours("efficientnet-b0", 10), theirs)
  _assert_same_outputs(ours, theirs, _images())  # Still reproduces the source as it is.


def test_head_can_be_skipped_for_other_class_counts(keras_b0):
  theirs = keras_b0
  ours = _ours("efficientnet-b0", 7)
  with pytest.raises(ValueError, match="include_head=False"):
    efficientnet.load_keras_applications_weights(ours, theirs)
  head = ours.get_layer("predictions").get_weights()
  efficientnet.load_keras_applications_weights(ours, theirs, include_head=False)
  np.testing.assert_array_equal(ours.get_layer("predictions").get_weights()[0], head[0])
  np.testing.assert_array_equal(ours.get_layer("top_conv").get_weights()[0],
                                theirs.get_layer("top_conv").get_weights()[0])


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_mismatched_variant_is_a_clear_error(tmp_path):
  theirs = keras.applications.EfficientNetB1(weights=None, input_shape=(SIZE, SIZE, 3))
  with pytest.raises(ValueError, match="not the same EfficientNet variant.*23 blocks"):
    efficientnet.load_keras_applications_weights(_ours("efficientnet-b0"), theirs)
  path = str(tmp_path / "b1.weights.h5")
  theirs.save_weights(path)
  # A file is read into the variant of the target model: B0 cannot hold B1 weights.
  with pytest.raises(ValueError, match="EfficientNetB0"):
    efficientnet.load_keras_applications_weights(_ours("efficientnet-b0"), path)
  with pytest.raises(ValueError, match="B0..B7 only"):
    efficientnet.load_keras_applications_weights(
        _ours("efficientnet-b0", width_coefficient=0.5), path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_APPLICATIONS)[1:])
def test_import_all_variants(name):
  theirs = _keras_model(name)
  ours = efficientnet.load_keras_applications_weights(_ours(name), theirs)
  _assert_same_outputs(ours, theirs, _images())
