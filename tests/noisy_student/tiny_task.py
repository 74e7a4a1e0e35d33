"""A tiny task for the trainer tests: a 2-layer conv net on random 8x8 images.

Same interface as `noisy_student.training.task.ClassificationTask`; data from
`from_tensor_slices`, so the tests need neither TFRecords nor EfficientNet.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from noisy_student.training import losses


@dataclasses.dataclass(frozen=True)
class TinyConfig:
  num_classes: int = 4
  image_size: int = 8
  labeled_batch: int = 8
  unlabeled_ratio: float = 0.0
  num_examples: int = 64
  sync_batch_norm: bool = False
  dropout_rate: float = 0.0
  with_eval: bool = True
  shuffle: bool = True
  loss: losses.LossConfig = losses.LossConfig()

  def __post_init__(self):
    object.__setattr__(self, "loss", dataclasses.replace(
        self.loss, unlabeled_ratio=self.unlabeled_ratio))


def make_data(c: TinyConfig, seed: int = 1):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, (c.num_examples, c.image_size, c.image_size, 3)).astype("float32")
  labels = rng.integers(0, c.num_classes, c.num_examples).astype("int32")
  probs = rng.dirichlet(np.ones(c.num_classes), c.num_examples).astype("float32")
  return images, labels, probs


class TinyTask:
  metric_names = ("labeled_ce", "unlabeled_ce", "accuracy")

  def __init__(self, c: TinyConfig):
    self.c = c
    self.images, self.labels, self.probs = make_data(c)
    self.unlabeled_batch = math.ceil(c.unlabeled_ratio * c.labeled_batch)
    self.global_batch_images = c.labeled_batch + self.unlabeled_batch
    self.has_eval = c.with_eval

  def setup(self):
    pass

  def build_model(self, *, for_training: bool) -> keras.Model:
    c = self.c
    sync = c.sync_batch_norm and for_training
    inputs = keras.Input((c.image_size, c.image_size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(synchronized=sync, name="bn1")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(c.dropout_rate)(x)
    out = keras.layers.Dense(c.num_classes, name="head", dtype="float32")(x)
    return keras.Model(inputs, out)

  def _per_replica(self, n, ctx):
    if n % ctx.num_replicas_in_sync:
      raise ValueError("batch not divisible by replicas")
    return n // ctx.num_replicas_in_sync

  def initial_epoch(self, step: int) -> int:
    return step * self.c.labeled_batch // self.c.num_examples

  def train_dataset(self, ctx: tf.distribute.InputContext, seed: int,
                    initial_epoch: int = 0) -> tf.data.Dataset:
    c = self.c
    b = self._per_replica(c.labeled_batch, ctx)
    u = self._per_replica(self.unlabeled_batch, ctx) if self.unlabeled_batch else 0
    def pipe(images, targets, batch, shift):
      ds = tf.data.Dataset.from_tensor_slices((images, targets))
      ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
      ds = ds.repeat()
      if c.shuffle:
        ds = ds.shuffle(16, seed=seed + shift)
      return ds.batch(batch, drop_remainder=True)
    lab = pipe(self.images, tf.one_hot(self.labels, c.num_classes), b, 0)
    if not u:
      return lab.map(lambda x, t: {"image": x, "target": t,
                                   "is_unlabeled": tf.zeros([b])})
    unl = pipe(self.images[::-1].copy(), self.probs, u, 1)
    def merge(l, v):
      return {"image": tf.concat([l[0], v[0]], 0), "target": tf.concat([l[1], v[1]], 0),
              "is_unlabeled": tf.concat([tf.zeros([b]), tf.ones([u])], 0)}
    return tf.data.Dataset.zip(lab, unl).map(merge)

  def eval_dataset(self, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    b = self._per_replica(self.c.labeled_batch, ctx)
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": self.images, "label": self.labels,
         "mask": np.ones(len(self.labels), "float32")})
    return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).batch(b)

  def train_loss(self, model, batch, num_replicas):
    logits = model(batch["image"], training=True)
    parts = losses.data_loss(logits, batch["target"], batch["is_unlabeled"], self.c.loss,
                             num_replicas)
    labeled = 1.0 - batch["is_unlabeled"]
    correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(batch["target"], -1)),
                      tf.float32)
    acc = tf.reduce_sum(correct * labeled) / (tf.reduce_sum(labeled) * num_replicas)
    return parts["loss"], {"labeled_ce": parts["labeled_ce"],
                           "unlabeled_ce": parts["unlabeled_ce"], "accuracy": acc}

  def export_config(self):
    return {"model_name": "tiny", "num_classes": self.c.num_classes,
            "image_size": self.c.image_size, "small_image": True}
