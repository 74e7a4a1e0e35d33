"""Randomised keras.applications EfficientNets for the weight-import tests (no downloads).

Keras and NumPy only, so the tests that use it also run on the JAX backend.
"""

from __future__ import annotations

import keras
import numpy as np

from efficientnet.weights import KERAS_APPLICATIONS

SIZE = 32  # keras.applications' minimum input size; weights do not depend on it.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def random_keras_model(name: str, classes: int = 1000, seed: int = 0,
                       mean_noise: float = 0.05) -> keras.Model:
  """A keras.applications model (logits out) with random BN statistics.

  Fresh models have BN moving mean 0 / variance 1 and an identity normalisation, which
  would let an import that skipped either go unnoticed; random values make every
  variable matter and keep the logits of order one. The input normalisation is the
  ImageNet mean (plus `mean_noise` times a normal draw) and variance.
  """
  keras.utils.set_random_seed(seed)
  model = getattr(keras.applications, KERAS_APPLICATIONS[name])(
      weights=None, input_shape=(SIZE, SIZE, 3), classes=classes, classifier_activation=None)
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                         rng.normal(0, 0.2, n), rng.uniform(0.5, 1.5, n)])
    elif isinstance(layer, keras.layers.Normalization):
      set_normalization(layer, IMAGENET_MEAN + mean_noise * rng.normal(0, 1, 3),
                        IMAGENET_STD ** 2)
  return model


def set_normalization(layer, mean, variance) -> None:
  layer.adapt_mean.assign(np.asarray(mean, "float32"))
  layer.adapt_variance.assign(np.asarray(variance, "float32"))
  layer.finalize_state()
