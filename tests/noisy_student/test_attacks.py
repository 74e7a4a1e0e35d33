"""FGSM / PGD on a tiny model trained on a brightness task with a small margin."""
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.evaluation import attacks


def brightness_task(n: int, seed: int = 0, size: int = 32):
  """Class 0: mean brightness U(100, 120); class 1: U(135, 155); pixel noise std 4.

  The decision boundary (~127.5) is 7.5-27.5 pixel levels from every image, so an
  L-inf attack of a few pixels flips some images and 32 pixels flips all of them.
  """
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  base = np.where(labels == 0, rng.uniform(100, 120, n), rng.uniform(135, 155, n))
  images = base[:, None, None, None] + rng.normal(0, 4, (n, size, size, 3))
  return np.clip(images, 0, 255).astype(np.float32), labels.astype(np.int32)


def tiny_model(num_classes: int = 2, size: int = 32) -> keras.Model:
  """Pixels [0, 255] in, logits out; normalises internally like the project's models."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
  x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(num_classes)(x)
  return keras.Model(inputs, outputs)


@functools.lru_cache(maxsize=1)
def trained_tiny_model() -> keras.Model:
  images, labels = brightness_task(512, seed=1)
  model = tiny_model()
  model.compile(optimizer=keras.optimizers.Adam(0.05),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(images, labels, batch_size=64, epochs=6, verbose=0)
  return model


def accuracy(model, images, labels) -> float:
  return float(np.mean(np.argmax(model(images, training=False), -1) == labels))


@pytest.fixture(scope="module")
def setup():
  model = trained_tiny_model()
  images, labels = brightness_task(256, seed=2)
  model_fn = lambda x: model(x, training=False)
  assert accuracy(model, images, labels) > 0.95, "the tiny model did not learn the task"
  return model, model_fn, images, labels


def test_fgsm_accuracy_falls_as_epsilon_grows(setup):
  model, model_fn, images, labels = setup
  accs = [accuracy(model, attacks.fgsm(model_fn, images, labels, eps), labels)
          for eps in (0, 8, 12, 16, 32)]
  assert all(a >= b for a, b in zip(accs, accs[1:])), accs
  assert accs[0] > 0.95 and accs[2] < accs[0] and accs[-1] < 0.2, accs


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_attacks_stay_in_the_ball_and_pixel_range(setup, attack):
  _, model_fn, images, labels = setup
  # Put some pixels at the edges of the range so clipping matters.
  images = images.copy()
  images[:, 0, 0, :] = 0.0
  images[:, 1, 1, :] = 255.0
  eps = 8.0
  if attack == "fgsm":
    adv = attacks.fgsm(model_fn, images, labels, eps)
  else:
    adv = attacks.pgd(model_fn, images, labels, eps, steps=3, random_start=True)
  adv = adv.numpy()
  assert adv.dtype == np.float32 and adv.shape == images.shape
  assert np.abs(adv - images).max() <= eps + 1e-4
  assert adv.min() >= 0.0 and adv.max() <= 255.0
  assert np.abs(adv - images).max() > eps - 1e-3  # it did move


def test_pgd_at_least_as_strong_as_fgsm(setup):
  model, model_fn, images, labels = setup
  attack = attacks.make_attack_fn(model_fn, "pgd", steps=10)
  for eps in (12.0, 16.0):
    fgsm_acc = accuracy(model, attacks.fgsm(model_fn, images, labels, eps), labels)
    pgd_acc = accuracy(model, attack(images, labels, eps, seed=(1, 2)), labels)
    assert pgd_acc <= fgsm_acc + 1e-9, (eps, pgd_acc, fgsm_acc)


def test_compiled_attack_matches_eager_and_is_deterministic(setup):
  _, model_fn, images, labels = setup
  eager = attacks.pgd(model_fn, images[:8], labels[:8], 6.0, steps=2, seed=(3, 4))
  compiled = attacks.make_attack_fn(model_fn, "pgd", steps=2)
  once = compiled(images[:8], labels[:8], 6.0, seed=(3, 4)).numpy()
  twice = compiled(images[:8], labels[:8], 6.0, seed=(3, 4)).numpy()
  np.testing.assert_array_equal(once, twice)
  np.testing.assert_allclose(once, eager.numpy(), atol=1e-3)
  # epsilon 0 is the identity.
  np.testing.assert_array_equal(compiled(images[:2], labels[:2], 0.0), images[:2])


def test_probability_outputs_are_supported(setup):
  model, _, images, labels = setup
  probs_fn = lambda x: tf.nn.softmax(model(x, training=False))
  adv = attacks.fgsm(probs_fn, images, labels, 32.0, from_logits=False)
  assert accuracy(model, adv, labels) < 0.2


def test_default_pgd_step_size():
  assert attacks.default_pgd_step_size(8, 10) == pytest.approx(2.0)
  with pytest.raises(ValueError):
    attacks.make_attack_fn(lambda x: x, "cw")
