"""White-box adversarial attacks in pixel space (paper Sec. 3.3, Fig. 7: FGSM and PGD).

Models in this project take float32 pixels in [0, 255] and normalise internally, so the
attacks perturb the model input directly: epsilon and step sizes are in 0-255 pixel units,
every iterate is projected onto the L-infinity epsilon ball around the clean image and
clipped to the valid pixel range [0, 255].

* FGSM (Goodfellow et al. 2015): one step `x + eps * sign(grad_x CE(f(x), y))`.
* PGD (Madry et al. 2018): optional uniform random start in the ball, then `steps` signed
  gradient steps of `step_size`, projecting and clipping after each step.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

PIXEL_MIN, PIXEL_MAX = 0.0, 255.0


def default_pgd_step_size(epsilon: float, steps: int) -> float:
  """Madry et al.'s choice 2.5 * eps / steps: the walk can cross the ball and back."""
  return 2.5 * float(epsilon) / max(int(steps), 1)


def _loss_gradient(model_fn: Callable, images: tf.Tensor, labels: tf.Tensor,
                   from_logits: bool) -> tf.Tensor:
  with tf.GradientTape() as tape:
    tape.watch(images)
    outputs = tf.cast(model_fn(images), tf.float32)
    labels = tf.cast(labels, tf.int32)
    if from_logits:
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, outputs)
    else:
      # No clipping at 1 - 1e-7 (as Keras' loss does): that zeroes the gradient of every
      # confidently classified image and makes the attack look weaker than it is.
      p_true = tf.gather(outputs, labels, batch_dims=1)
      loss = -tf.math.log(tf.maximum(p_true, 1e-30))
    loss = tf.reduce_sum(loss)
  return tape.gradient(loss, images)


def _is_zero(epsilon) -> bool:
  return isinstance(epsilon, (int, float)) and epsilon == 0


def project(images: tf.Tensor, clean: tf.Tensor, epsilon: float) -> tf.Tensor:
  """Projects onto the epsilon ball around `clean`, then clips to [0, 255]."""
  images = tf.clip_by_value(images, clean - epsilon, clean + epsilon)
  return tf.clip_by_value(images, PIXEL_MIN, PIXEL_MAX)


def fgsm(model_fn: Callable, images, labels, epsilon: float, *,
         from_logits: bool = True) -> tf.Tensor:
  """Fast gradient sign method.

  Args:
    model_fn: maps [batch, h, w, 3] float32 pixels in [0, 255] to [batch, classes]
      logits (or probabilities with `from_logits=False`); called in inference mode.
    images: [batch, h, w, 3] float32 in [0, 255].
    labels: [batch] int true labels.
    epsilon: L-infinity budget in pixel units (0-255 scale).
  Returns:
    [batch, h, w, 3] float32 adversarial images in [0, 255], |x_adv - x| <= epsilon.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  labels = tf.convert_to_tensor(labels)
  if _is_zero(epsilon):
    return images
  grad = _loss_gradient(model_fn, images, labels, from_logits)
  return project(images + epsilon * tf.sign(grad), images, epsilon)


def pgd(model_fn: Callable, images, labels, epsilon: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True,
        seed: tuple[int, int] = (0, 0), from_logits: bool = True) -> tf.Tensor:
  """Projected gradient descent (L-infinity), maximising the cross entropy.

  Args:
    model_fn, images, labels, epsilon: as in `fgsm`.
    steps: number of gradient steps.
    step_size: pixel units per step; default `default_pgd_step_size(epsilon, steps)`.
    random_start: start from a uniform point of the epsilon ball (clipped to [0, 255]).
    seed: stateless RNG seed of the random start (deterministic for a given batch).
  Returns:
    [batch, h, w, 3] float32 adversarial images in [0, 255], |x_adv - x| <= epsilon.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  labels = tf.convert_to_tensor(labels)
  if _is_zero(epsilon):
    return images
  if step_size is None:
    step_size = default_pgd_step_size(epsilon, steps)
  adv = images
  if random_start:
    noise = tf.random.stateless_uniform(tf.shape(images), seed, -epsilon, epsilon)
    adv = project(images + noise, images, epsilon)

  def step(i, adv):
    grad = _loss_gradient(model_fn, adv, labels, from_logits)
    return i + 1, project(adv + step_size * tf.sign(grad), images, epsilon)

  # A while loop, not a Python loop: 100-step PGD must not unroll 100 model graphs.
  _, adv = tf.while_loop(lambda i, _: i < steps, step, (tf.constant(0), adv))
  return adv


def make_attack_fn(model_fn: Callable, attack: str, *, from_logits: bool = True,
                   steps: int = 10, step_size: float | None = None,
                   random_start: bool = True) -> Callable:
  """A compiled `(images, labels, epsilon, seed) -> adversarial images` for one attack.

  epsilon and seed are tensors, so one trace serves every epsilon (no retracing).
  """
  if attack not in ("fgsm", "pgd"):
    raise ValueError(f"unknown attack {attack!r} (fgsm or pgd)")

  @tf.function(reduce_retracing=True)
  def run(images, labels, epsilon, seed):
    if attack == "fgsm":
      return fgsm(model_fn, images, labels, epsilon, from_logits=from_logits)
    size = (epsilon * 2.5 / max(steps, 1)) if step_size is None else step_size
    return pgd(model_fn, images, labels, epsilon, steps=steps, step_size=size,
               random_start=random_start, seed=seed, from_logits=from_logits)

  def attack_fn(images, labels, epsilon: float, seed=(0, 0)):
    if float(epsilon) == 0.0:
      return tf.convert_to_tensor(images, tf.float32)
    return run(tf.convert_to_tensor(images, tf.float32), tf.convert_to_tensor(labels),
               tf.constant(float(epsilon), tf.float32),
               tf.constant(seed, tf.int32))
  return attack_fn
