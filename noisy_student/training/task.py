"""The image-classification task of Noisy Student: model, inputs and losses.

Paper Sec. 2 (Algorithm 1): a teacher is this task without unlabeled data; a student
adds U = ceil(r * B) pseudo-labeled images to each batch of B labeled images, noised
with RandAugment, dropout and stochastic depth, in one forward pass. Offline (the
default) the pseudo labels are stored in the unlabeled TFRecords (`noisy_student.label`
+ `noisy_student.select`); online (`teacher`) a frozen teacher computes them in-graph
from clean, eval-preprocessed copies of the same images.

`run` wires a strategy, this task and `noisy_student.training.trainer.Trainer` together.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf
from absl import logging

import efficientnet
from data import fileio
from data.input import pipeline
from data.input.preprocessing import PreprocessConfig
from data.records import schema
from noisy_student.common import model_io
from noisy_student.common import strategy as strategy_lib
from noisy_student.selection import selector
from noisy_student.training import losses
from noisy_student.training import trainer as trainer_lib

# Records checked per pattern before training (labels in range, pseudo keys present).
_CHECK_FILES = 4
_CHECK_RECORDS = 256


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Model, data and loss of one training run.

  Attributes:
    model_name, width_coefficient, depth_coefficient, small_image: the EfficientNet
      (None coefficients: the variant's).
    num_classes: C. label_offset: subtracted from stored labels (1: ImageNet TPU files).
    image_size: training input side; eval_image_size: evaluation side (0: the same).
    preprocess_mode: "imagenet" (crops) or "small" (32x32 datasets).
    dropout_rate (None: the variant's), stochastic_depth_rate: model noise.
    augment / unlabeled_augment: input noise of the labeled / unlabeled images
      ("randaugment", "standard", "none"); randaugment_layers, randaugment_magnitude.
    flip: random horizontal flips in training (off for digits).
    train_pattern, unlabeled_pattern, eval_pattern: TFRecord globs.
    train_batch_size: labeled images per step (global); the unlabeled part adds
      ceil(unlabeled_ratio * train_batch_size). eval_batch_size: global.
    teacher: model_dir of a frozen teacher for online pseudo labels ("" = offline).
    sync_batch_norm: cross-replica BN statistics.
    loss: the loss configuration (ratio, label type, weighting, smoothing, ...).
    num_labeled_examples: size of the labeled set (epochs are labeled epochs).
    shuffle_buffer: records in each shuffle buffer.
    freeze_until: FixRes-style fine-tuning (paper Sec. 3.1): every layer before the
      first one whose name starts with this prefix (e.g. "block6") is frozen, its BN in
      inference mode ("" = train everything).
    max_bad_records: training records that do not decode, or whose label (pseudo label)
      is out of range or missing, are skipped and counted; more than this many in one
      input stream stops the run with an error saying how many of each.
  """
  train_pattern: str
  num_classes: int
  image_size: int
  model_name: str = "efficientnet-b0"
  width_coefficient: float | None = None
  depth_coefficient: float | None = None
  small_image: bool = False
  eval_image_size: int = 0
  preprocess_mode: str = "imagenet"
  label_offset: int = 0
  dropout_rate: float | None = None
  stochastic_depth_rate: float = 0.2
  augment: str = "randaugment"
  unlabeled_augment: str = "randaugment"
  # The input-noise defaults are the preprocessing's (train.py's flags read these).
  randaugment_layers: int = PreprocessConfig.randaugment_layers
  randaugment_magnitude: float = PreprocessConfig.randaugment_magnitude
  flip: bool = PreprocessConfig.flip
  unlabeled_pattern: str = ""
  eval_pattern: str = ""
  train_batch_size: int = 2048
  eval_batch_size: int = 1024
  teacher: str = ""
  sync_batch_norm: bool = False
  loss: losses.LossConfig = losses.LossConfig()
  num_labeled_examples: int = 0
  shuffle_buffer: int = 16384
  freeze_until: str = ""
  seed: int = 0
  deterministic: bool = False
  max_bad_records: int = pipeline.DEFAULT_MAX_BAD_RECORDS

  @property
  def unlabeled_batch_size(self) -> int:
    return pipeline.unlabeled_batch_size(self.loss.unlabeled_ratio, self.train_batch_size,
                                         self.unlabeled_pattern)

  def preprocess(self, augment: str) -> PreprocessConfig:
    """The training preprocessing (evaluation: model_io.eval_preprocess)."""
    return PreprocessConfig(
        image_size=self.image_size, mode=self.preprocess_mode,
        augment=augment, randaugment_layers=self.randaugment_layers,
        randaugment_magnitude=self.randaugment_magnitude, flip=self.flip)


class ClassificationTask:
  """EfficientNet + TFRecord pipelines + the Noisy Student loss (see trainer.Task)."""

  metric_names = ("labeled_ce", "unlabeled_ce", "accuracy")

  def __init__(self, config: TaskConfig):
    self.config = config
    self.teacher = None
    self.teacher_config = None
    self._num_eval_batches = None

  @property
  def has_eval(self) -> bool:
    return bool(self.config.eval_pattern)

  @property
  def global_batch_images(self) -> int:
    return self.config.train_batch_size + self.config.unlabeled_batch_size

  # -- checks ---------------------------------------------------------------------------

  def validate(self) -> None:
    """Fails with a clear message on bad inputs, before anything is built or trained."""
    c = self.config
    r = c.loss.unlabeled_ratio
    pipeline.unlabeled_batch_size(r, c.train_batch_size, c.unlabeled_pattern)  # Checks r.
    if c.unlabeled_pattern and r <= 0:
      raise ValueError("--unlabeled_pattern is set but unlabeled_ratio is 0: set "
                       "--unlabeled_ratio > 0 (paper: 1 for B0, 3 for B1..B7, 14/28 for L2)")
    if c.teacher and not c.unlabeled_pattern:
      raise ValueError("--teacher (online pseudo labels) needs --unlabeled_pattern")
    self._check_labels(c.train_pattern, allow_unlabeled=False, what="train_pattern")
    if c.eval_pattern:
      self._check_labels(c.eval_pattern, allow_unlabeled=True, what="eval_pattern")
    if c.unlabeled_pattern:
      files = fileio.list_record_files(c.unlabeled_pattern)
      if not c.teacher:
        selector.check_complete(files)
        self._check_pseudo_labels(files)
    if c.teacher:
      teacher_config = model_io.read_config(c.teacher)
      if int(teacher_config["num_classes"]) != c.num_classes:
        raise ValueError(f"teacher {c.teacher} has {teacher_config['num_classes']} "
                         f"classes, this run num_classes={c.num_classes}")

  def _first_records(self, files, **parse_kwargs) -> dict:
    ds = tf.data.TFRecordDataset(files[:_CHECK_FILES]).take(_CHECK_RECORDS)
    ds = ds.map(lambda x: schema.parse_example(x, label_offset=self.config.label_offset,
                                               **parse_kwargs))
    # Records that do not parse (and a truncated tail) are the pipeline's to skip.
    return next(iter(ds.ignore_errors().batch(_CHECK_RECORDS)), None)

  def _check_labels(self, pattern: str, *, allow_unlabeled: bool, what: str) -> None:
    files = fileio.list_record_files(pattern)
    batch = self._first_records(files)
    if batch is None:
      raise ValueError(f"{what}={pattern!r}: the files hold no records")
    labels = batch["label"].numpy()
    low = schema.UNLABELED if allow_unlabeled else 0
    bad = labels[(labels < low) | (labels >= self.config.num_classes)]
    if bad.size:
      hint = (" (-1 = an unlabeled record in labeled data)" if (bad == -1).any() else "")
      raise ValueError(
          f"{what}={pattern!r}: label {int(bad[0])} outside [0, {self.config.num_classes})"
          f"{hint}; check --num_classes and --label_offset={self.config.label_offset} "
          "(ImageNet TFRecords from the TPU script are 1-based: --label_offset=1)")

  def _check_pseudo_labels(self, files) -> None:
    batch = self._first_records(files, with_pseudo=True, num_classes=self.config.num_classes)
    if batch is None:
      raise ValueError(f"unlabeled_pattern={self.config.unlabeled_pattern!r}: no records")
    if (batch["pseudo_label"].numpy() < 0).any():
      raise ValueError(
          f"unlabeled_pattern={self.config.unlabeled_pattern!r} has records without pseudo "
          "labels: run noisy_student.label + noisy_student.select first, or use --teacher "
          "for online pseudo labels")

  # -- model ----------------------------------------------------------------------------

  def _input_shape(self):
    c = self.config
    if c.eval_image_size and c.eval_image_size != c.image_size:
      return (None, None, 3)
    return (c.image_size, c.image_size, 3)

  def build_model(self, *, for_training: bool) -> keras.Model:
    c = self.config
    model = efficientnet.build_model(
        c.model_name, num_classes=c.num_classes, input_shape=self._input_shape(),
        dropout_rate=c.dropout_rate, stochastic_depth_rate=c.stochastic_depth_rate,
        small_image=c.small_image, sync_batch_norm=c.sync_batch_norm and for_training,
        width_coefficient=c.width_coefficient, depth_coefficient=c.depth_coefficient)
    if c.freeze_until:
      freeze_layers_before(model, c.freeze_until)
    return model

  def setup(self) -> None:
    """Loads the frozen online teacher (inside the strategy scope)."""
    if self.config.teacher:
      self.teacher, self.teacher_config = model_io.load_model(self.config.teacher)
      self.teacher.trainable = False
      logging.info("online teacher %s: %s", self.config.teacher, self.teacher_config)

  def export_config(self) -> dict:
    c = self.config
    return {
        "model_name": c.model_name, "num_classes": c.num_classes,
        "image_size": c.eval_image_size or c.image_size, "train_image_size": c.image_size,
        "small_image": c.small_image, "preprocess_mode": c.preprocess_mode,
        "width_coefficient": c.width_coefficient, "depth_coefficient": c.depth_coefficient,
        "dropout_rate": c.dropout_rate, "stochastic_depth_rate": c.stochastic_depth_rate,
    }

  # -- inputs ---------------------------------------------------------------------------

  def train_dataset(self, input_context: tf.distribute.InputContext, seed: int,
                    initial_epoch: int = 0) -> tf.data.Dataset:
    c = self.config
    common = dict(preprocess=c.preprocess(c.augment), num_classes=c.num_classes,
                  input_context=input_context, seed=seed, deterministic=c.deterministic,
                  label_offset=c.label_offset, shuffle_buffer=c.shuffle_buffer,
                  initial_epoch=initial_epoch, max_bad_records=c.max_bad_records)
    if not c.unlabeled_pattern:
      return pipeline.train_dataset(c.train_pattern, global_batch_size=c.train_batch_size,
                                    **common)
    online = bool(c.teacher)
    clean = model_io.eval_preprocess(self.teacher_config) if online else None
    return pipeline.labeled_unlabeled_dataset(
        c.train_pattern, c.unlabeled_pattern, labeled_batch_size=c.train_batch_size,
        unlabeled_ratio=c.loss.unlabeled_ratio,
        unlabeled_preprocess=c.preprocess(c.unlabeled_augment),
        label_type=c.loss.label_type, pseudo_labels=not online,
        with_clean_unlabeled=online, clean_preprocess=clean, **common)

  def initial_epoch(self, step: int) -> int:
    """The labeled epoch in progress at `step` (resuming without an iterator state)."""
    if not self.config.num_labeled_examples:
      return 0
    return step * self.config.train_batch_size // self.config.num_labeled_examples

  def eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    c = self.config
    if self._num_eval_batches is None and input_context.num_replicas_in_sync > 1:
      # Every replica of every host must run the same number of eval steps.
      self._num_eval_batches = pipeline.num_eval_batches(
          c.eval_pattern, global_batch_size=c.eval_batch_size, input_context=input_context)
    # The preprocessing noisy_student.evaluate will give the exported model.
    preprocess = model_io.eval_preprocess(self.export_config())
    return pipeline.eval_dataset(
        c.eval_pattern, global_batch_size=c.eval_batch_size,
        preprocess=preprocess, num_classes=c.num_classes,
        input_context=input_context, label_offset=c.label_offset,
        num_batches=self._num_eval_batches, flag_bad_labels=True)

  def input_files(self) -> list[str]:
    c = self.config
    patterns = [p for p in (c.train_pattern, c.unlabeled_pattern, c.eval_pattern) if p]
    return [f for p in patterns for f in fileio.list_record_files(p)]

  # -- loss -----------------------------------------------------------------------------

  def train_loss(self, model: keras.Model, batch: dict,
                 num_replicas: int) -> tuple[tf.Tensor, dict]:
    """This replica's data loss (already divided by global counts) and metrics."""
    loss_config = self.config.loss
    targets = batch["target"]
    if self.teacher is not None:
      # Online: the frozen teacher labels clean copies of this replica's unlabeled rows.
      num_unlabeled = tf.shape(batch["clean_image"])[0]
      num_labeled = tf.shape(targets)[0] - num_unlabeled
      teacher_logits = self.teacher(batch["clean_image"], training=False)
      pseudo = losses.teacher_targets(teacher_logits, loss_config.label_type,
                                      loss_config.teacher_temperature)
      targets = tf.concat([targets[:num_labeled], pseudo], axis=0)
      # The temperature is already in `pseudo`.
      loss_config = dataclasses.replace(loss_config, teacher_temperature=1.0)
    logits = tf.cast(model(batch["image"], training=True), tf.float32)
    parts = losses.data_loss(logits, targets, batch["is_unlabeled"], loss_config,
                             num_replicas)
    labeled = 1.0 - tf.cast(batch["is_unlabeled"], tf.float32)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                               tf.cast(batch["label"], tf.int32)), tf.float32)
    accuracy = tf.reduce_sum(correct * labeled) / tf.maximum(
        tf.reduce_sum(labeled) * num_replicas, 1.0)
    return parts["loss"], {"labeled_ce": parts["labeled_ce"],
                           "unlabeled_ce": parts["unlabeled_ce"], "accuracy": accuracy}


def freeze_layers_before(model: keras.Model, prefix: str) -> list[str]:
  """Freezes every layer before the first whose name starts with `prefix`.

  Returns the frozen layer names. Frozen BatchNormalization layers run in inference
  mode (Keras 3), as the fixed shallow layers of FixRes fine-tuning should.
  """
  names = [layer.name for layer in model.layers]
  first = next((i for i, name in enumerate(names) if name.startswith(prefix)), None)
  if first is None:
    raise ValueError(f"freeze_until={prefix!r}: no layer name starts with it "
                     f"(layers are named like {names[1]!r} .. {names[-1]!r})")
  for layer in model.layers[:first]:
    layer.trainable = False
  return names[:first]


# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One `python -m noisy_student.train` run."""
  task: TaskConfig
  trainer: trainer_lib.TrainerConfig
  strategy: str = "auto"
  tpu: str | None = None


def run(config: TrainConfig, flags_text: str | None = None,
        validate: bool = True) -> dict | None:
  """Validates, trains (resuming if possible), evaluates and exports; returns the eval.

  Args:
    config: the run.
    flags_text: written to model_dir/flags.txt (the entry module's resolved flags).
    validate: check the inputs first (the entry module has already done it).
  """
  task = ClassificationTask(config.task)
  if validate:
    task.validate()
  strategy = strategy_lib.get_strategy(config.strategy, config.tpu)
  trainer_lib.set_precision(config.trainer.precision)
  trainer_lib.set_seed(config.trainer.seed, config.trainer.deterministic)
  model_dir = config.trainer.model_dir
  if strategy_lib.is_chief(strategy):
    fileio.makedirs(model_dir)
    trainer_lib.write_config(model_dir, trainer_lib.config_to_dict(config))
    if flags_text is not None:
      fileio.write_text_atomic(os.path.join(model_dir, "flags.txt"), flags_text)
  trainer = trainer_lib.Trainer(config.trainer, task, strategy)
  return trainer.train()
