"""The Noisy Student loss on tiny exact examples: soft/hard x official/mean weighting."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.training import losses

C = 3
LOGITS = np.array([[2.0, 0.0, -1.0],     # labeled, label 0
                   [0.5, 0.5, 0.5],      # labeled, label 2
                   [1.0, -1.0, 0.0],     # unlabeled
                   [0.0, 3.0, 1.0],      # unlabeled
                   [-2.0, 0.0, 2.0],     # unlabeled
                   [1.0, 1.0, -3.0]],    # unlabeled
                  "float32")
LABELS = [0, 2]
PSEUDO = np.array([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]],
                  "float32")
IS_UNLABELED = np.array([0, 0, 1, 1, 1, 1], "float32")


def _log_softmax(z):
  z = z.astype("float64")
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(targets, logits):
  return -(targets * _log_softmax(logits)).sum(-1)


def _smooth(one_hot, eps=0.1):
  return one_hot * (1 - eps) + eps / C


def _targets(label_type):
  labeled = np.eye(C)[LABELS]
  unlabeled = PSEUDO if label_type == "soft" else np.eye(C)[PSEUDO.argmax(-1)]
  return np.concatenate([labeled, unlabeled]).astype("float32")


def _expected(label_type, weighting, ratio=2.0):
  lab = _ce(_smooth(np.eye(C)[LABELS]), LOGITS[:2])
  unl_targets = PSEUDO if label_type == "soft" else _smooth(np.eye(C)[PSEUDO.argmax(-1)])
  unl = _ce(unl_targets, LOGITS[2:])
  if weighting == "official":
    total = lab.mean() + ratio * unl.mean()
  else:
    total = np.concatenate([lab, unl]).mean()
  return total, lab.mean(), unl.mean()


@pytest.mark.parametrize("label_type", ["soft", "hard"])
@pytest.mark.parametrize("weighting", ["official", "mean"])
def test_loss_weighting_exact(label_type, weighting):
  config = losses.LossConfig(label_type=label_type, unlabeled_ratio=2.0,
                             weighting=weighting)
  got = losses.data_loss(tf.constant(LOGITS), tf.constant(_targets(label_type)),
                         tf.constant(IS_UNLABELED), config)
  total, lab, unl = _expected(label_type, weighting)
  assert float(got["loss"]) == pytest.approx(total, rel=1e-6)
  assert float(got["labeled_ce"]) == pytest.approx(lab, rel=1e-6)
  assert float(got["unlabeled_ce"]) == pytest.approx(unl, rel=1e-6)


def test_official_is_mean_times_one_plus_ratio():
  # With U = r * B the two weightings differ by the factor (1 + r) only.
  soft = dict(label_type="soft", unlabeled_ratio=2.0)
  args = (tf.constant(LOGITS), tf.constant(_targets("soft")), tf.constant(IS_UNLABELED))
  official = losses.data_loss(*args, losses.LossConfig(weighting="official", **soft))
  mean = losses.data_loss(*args, losses.LossConfig(weighting="mean", **soft))
  assert float(official["loss"]) == pytest.approx(3.0 * float(mean["loss"]), rel=1e-6)


@pytest.mark.parametrize("weighting", ["official", "mean"])
def test_replica_shares_sum_to_the_global_loss(weighting):
  config = losses.LossConfig(unlabeled_ratio=2.0, weighting=weighting)
  targets = _targets("soft")
  whole = losses.data_loss(tf.constant(LOGITS), tf.constant(targets),
                           tf.constant(IS_UNLABELED), config)
  # Two replicas, each with 1 labeled + 2 unlabeled rows.
  rows = [[0, 2, 3], [1, 4, 5]]
  parts = [losses.data_loss(tf.constant(LOGITS[r]), tf.constant(targets[r]),
                            tf.constant(IS_UNLABELED[r]), config, num_replicas=2)
           for r in rows]
  for key in ("loss", "labeled_ce", "unlabeled_ce"):
    assert sum(float(p[key]) for p in parts) == pytest.approx(float(whole[key]), rel=1e-6)


def test_teacher_only_batch_has_no_unlabeled_term():
  config = losses.LossConfig(unlabeled_ratio=0.0)
  got = losses.data_loss(tf.constant(LOGITS[:2]), tf.constant(np.eye(C)[LABELS], tf.float32),
                         tf.zeros([2]), config)
  lab = _ce(_smooth(np.eye(C)[LABELS]), LOGITS[:2]).mean()
  assert float(got["loss"]) == pytest.approx(lab, rel=1e-6)
  assert float(got["unlabeled_ce"]) == 0.0


def test_temperature_and_teacher_targets():
  probs = np.array([[0.5, 0.3, 0.2]], "float32")
  tempered = lambda p, t: losses.apply_temperature(tf.constant(p), t, from_logits=False)
  sharp = tempered(probs, 0.5).numpy()
  np.testing.assert_allclose(sharp, probs ** 2 / (probs ** 2).sum(), rtol=1e-6)
  np.testing.assert_array_equal(tempered(probs, 1.0).numpy(), probs)
  logits = np.array([[1.0, 2.0, 0.0]], "float32")
  soft = losses.teacher_targets(tf.constant(logits), "soft", 2.0).numpy()
  np.testing.assert_allclose(soft, np.exp(logits / 2) / np.exp(logits / 2).sum(), rtol=1e-6)
  hard = losses.teacher_targets(tf.constant(logits), "hard", 2.0).numpy()
  np.testing.assert_array_equal(hard, [[0.0, 1.0, 0.0]])
  # Offline soft targets with T != 1 are sharpened before the cross entropy.
  config = losses.LossConfig(label_type="soft", teacher_temperature=0.5)
  targets = losses.student_targets(tf.constant(probs), tf.ones([1]), config).numpy()
  np.testing.assert_allclose(targets, sharp, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_is_applied_once_in_the_loss(temperature):
  """noisy_student.label stores the teacher's T = 1 distribution; the loss sharpens it
  with teacher_temperature, matching the online teacher's softmax(z / T)."""
  logits = np.array([[1.0, 2.0, 0.0], [0.3, -1.0, 2.5]], "float32")
  stored = tf.nn.softmax(logits).numpy()                     # what labelling writes
  config = losses.LossConfig(label_type="soft", teacher_temperature=temperature)
  offline = losses.student_targets(tf.constant(stored), tf.ones([2]), config).numpy()
  online = losses.teacher_targets(tf.constant(logits), "soft", temperature).numpy()
  np.testing.assert_allclose(offline, online, rtol=1e-5)
  np.testing.assert_allclose(online, np.exp(logits / temperature)
                             / np.exp(logits / temperature).sum(-1, keepdims=True),
                             rtol=1e-5)


def test_weight_decay_skips_batch_norm():
  inputs = keras.Input((4, 4, 3))
  x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.Flatten()(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
  decayed = sorted(v.path for v in losses.decayed_variables(model))
  assert decayed == ["conv/bias", "conv/kernel", "head/bias", "head/kernel"]
  for v in model.trainable_variables:
    v.assign(tf.fill(v.shape, 2.0))
  n = sum(int(np.prod(v.shape)) for v in losses.decayed_variables(model))
  assert float(losses.l2_loss(losses.decayed_variables(model))) == pytest.approx(n * 4 / 2)


def test_config_rejects_unknown_choices():
  with pytest.raises(ValueError, match="weighting"):
    losses.LossConfig(weighting="sum")
  with pytest.raises(ValueError, match="label_type"):
    losses.LossConfig(label_type="soft-ish")
  assert dataclasses.replace(losses.LossConfig(), unlabeled_ratio=3).unlabeled_ratio == 3
