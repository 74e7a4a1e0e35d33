"""The Noisy Student loss (paper Algorithm 1 step 3; official main.py).

One forward pass over the concatenation of B labeled and U = ceil(r * B) unlabeled
images. Per-example cross entropy against:
  * labeled rows: the one-hot label with label smoothing 0.1;
  * unlabeled rows, soft labels: the teacher's distribution q = p^(1/T) / sum p^(1/T)
    (online: softmax(teacher_logits / T)), unsmoothed. `apply_temperature` is the ONE
    function that applies a temperature: here with T = `teacher_temperature`; the
    labeller (noisy_student.label) stores the teacher's T = 1 distribution p through it
    and selection filters on p's confidence, as the official code does
    (filter_unlabel.py on p, main.py sharpening while training);
  * unlabeled rows, hard labels: one-hot argmax of the teacher, smoothed like labels.

Two weightings of the parts:
  * "official" (the released code): mean labeled CE + r * mean unlabeled CE.
  * "mean": the plain mean over the concatenated batch, which is what the paper's text
    says (Sec. 3, "Labeled images and unlabeled images are concatenated together to
    compute the average cross entropy loss"). It equals official / (1 + r) when
    U = r * B: the same direction, a (1 + r)-times smaller gradient (and relatively
    stronger weight decay).

Every function works on one replica's rows and divides by GLOBAL counts, so summing
the replicas' losses (what the gradient all-reduce does) gives the global loss.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from data.input import pipeline

WEIGHTINGS = ("official", "mean")
LABEL_TYPES = pipeline.LABEL_TYPES  # One tuple: the pipeline builds the offline targets.


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.1
  label_type: str = "soft"          # of the unlabeled targets
  unlabeled_ratio: float = 0.0      # r
  weighting: str = "official"
  teacher_temperature: float = 1.0

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"loss weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
    pipeline.check_label_type(self.label_type)
    if self.teacher_temperature <= 0:
      raise ValueError(f"teacher_temperature must be > 0, got {self.teacher_temperature}")


def smooth(one_hot: tf.Tensor, epsilon: float) -> tf.Tensor:
  """[N, C] one-hot -> (1 - eps) * one_hot + eps / C (tf.losses' label smoothing)."""
  num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
  return one_hot * (1.0 - epsilon) + epsilon / num_classes


def cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """[N, C] float32 targets and logits -> [N] float32 per-example cross entropy."""
  logits = tf.cast(logits, tf.float32)
  return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def apply_temperature(values: tf.Tensor, temperature: float, *,
                      from_logits: bool) -> tf.Tensor:
  """The teacher's distribution at temperature T: the one place T is applied.

  Args:
    values: [..., C] float32 logits (or log-probabilities) when `from_logits`, else
      probabilities p.
    temperature: T > 0.
  Returns:
    [..., C] float32: softmax(values / T) from logits; p^(1/T) / sum p^(1/T) from
    probabilities (the same distribution; the official offline soft labels), p itself
    when T = 1.
  """
  if from_logits:
    return tf.nn.softmax(values / temperature, axis=-1)
  if temperature == 1.0:
    return values
  scaled = tf.pow(tf.maximum(values, 0.0), 1.0 / temperature)
  return scaled / tf.maximum(tf.reduce_sum(scaled, axis=-1, keepdims=True), 1e-30)


def teacher_targets(teacher_logits: tf.Tensor, label_type: str,
                    temperature: float) -> tf.Tensor:
  """[U, C] teacher logits -> [U, C] float32 targets (soft: softmax(z / T); hard: one-hot)."""
  teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
  if label_type == "hard":
    return tf.one_hot(tf.argmax(teacher_logits, axis=-1), tf.shape(teacher_logits)[-1])
  return apply_temperature(teacher_logits, temperature, from_logits=True)


def student_targets(targets: tf.Tensor, is_unlabeled: tf.Tensor,
                    config: LossConfig) -> tf.Tensor:
  """The cross-entropy targets of a concatenated batch.

  Args:
    targets: [N, C] float32: one-hot labels for labeled rows; the pseudo label (soft
      distribution or one-hot) for unlabeled rows.
    is_unlabeled: [N] float32 or bool, 1 for unlabeled rows.

  Returns:
    [N, C] float32: labeled rows smoothed; unlabeled rows smoothed for hard labels,
    temperature-sharpened for soft labels.
  """
  targets = tf.cast(targets, tf.float32)
  unlabeled = tf.cast(is_unlabeled, tf.bool)[:, None]
  smoothed = smooth(targets, config.label_smoothing)
  if config.label_type == "hard":
    unlabeled_targets = smoothed
  else:
    unlabeled_targets = apply_temperature(targets, config.teacher_temperature,
                                          from_logits=False)
  return tf.where(unlabeled, unlabeled_targets, smoothed)


def example_weights(is_unlabeled: tf.Tensor, num_replicas: int,
                    config: LossConfig) -> tf.Tensor:
  """[N] per-example weights whose sum over ALL replicas' rows gives the loss weighting.

  Global counts are this replica's counts times the number of replicas (every replica
  gets an equal share of both parts of the batch).
  """
  unlabeled = tf.cast(is_unlabeled, tf.float32)
  labeled = 1.0 - unlabeled
  n = float(num_replicas)
  global_labeled = tf.reduce_sum(labeled) * n
  global_unlabeled = tf.reduce_sum(unlabeled) * n
  if config.weighting == "mean":
    return tf.fill(tf.shape(unlabeled), 1.0) / (global_labeled + global_unlabeled)
  return (labeled / tf.maximum(global_labeled, 1.0)
          + unlabeled * config.unlabeled_ratio / tf.maximum(global_unlabeled, 1.0))


def data_loss(logits: tf.Tensor, targets: tf.Tensor, is_unlabeled: tf.Tensor,
              config: LossConfig, num_replicas: int = 1) -> dict:
  """This replica's share of the data loss and its labeled / unlabeled parts.

  Args:
    logits: [N, C] student logits (any float dtype; computed in float32).
    targets: [N, C] raw targets (see `student_targets`).
    is_unlabeled: [N].
    num_replicas: replicas in sync.

  Returns:
    dict of float32 scalars, each already divided by global counts (sum them over
    replicas for the global value): "loss" (weighted data loss), "labeled_ce" (mean
    smoothed CE on labeled rows), "unlabeled_ce" (mean CE on unlabeled rows).
  """
  ce = cross_entropy(student_targets(targets, is_unlabeled, config), logits)
  unlabeled = tf.cast(is_unlabeled, tf.float32)
  labeled = 1.0 - unlabeled
  n = float(num_replicas)
  return {
      "loss": tf.reduce_sum(example_weights(is_unlabeled, num_replicas, config) * ce),
      "labeled_ce": tf.reduce_sum(labeled * ce) / tf.maximum(tf.reduce_sum(labeled) * n, 1.0),
      "unlabeled_ce": tf.reduce_sum(unlabeled * ce) / tf.maximum(
          tf.reduce_sum(unlabeled) * n, 1.0),
  }


def decayed_variables(model: keras.Model) -> list:
  """Trainable variables that get L2 weight decay: all but batch-norm gamma / beta."""
  bn_ids = set()
  # pylint: disable-next=protected-access
  for layer in model._flatten_layers(include_self=True, recursive=True):
    if isinstance(layer, keras.layers.BatchNormalization):
      bn_ids.update(id(v) for v in layer.weights)
  return [v for v in model.trainable_variables if id(v) not in bn_ids]


def l2_loss(variables) -> tf.Tensor:
  """sum(v^2) / 2 over the variables (tf.nn.l2_loss), float32."""
  if not variables:
    return tf.constant(0.0)
  return tf.add_n([tf.nn.l2_loss(tf.cast(v.value, tf.float32)) for v in variables])
