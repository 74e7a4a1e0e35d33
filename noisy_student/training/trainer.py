"""The trainer: strategy, step counter, optimizer, EMA, checkpoints and the loop.

Model Garden's Task/Trainer split: the task (`noisy_student.training.task`) owns the model,
the inputs and the losses; this module owns everything stateful around them. One host
call runs `steps_per_loop` steps in an inner `tf.range` loop, each step one
`strategy.run` (Keras 3's `steps_per_execution` fails under MirroredStrategy).

Layout of `model_dir` (written by the chief only):
  config.json            the resolved configuration (train.py also writes flags.txt)
  ckpt/ckpt-<step>.*     checkpoints (model, EMA model, optimizer, step, dropout /
                         stochastic-depth RNG state); the last K are kept
  train/, eval/          TensorBoard event files (train/ also holds the first batch's
                         noised input images, "input/labeled" and "input/unlabeled")
  profile/               a TensorBoard profile of the steps in `profile_steps`, if set
  eval_metrics.json      the latest evaluation (EMA weights): step, top1, top5, ...
  eval_history.json      every evaluation so far, oldest first
  model.keras + model_config.json   the final EMA model (float32), via model_io
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from typing import Callable, Protocol

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from data import fileio
from data.input import pipeline
from noisy_student.common import model_io
from noisy_student.common import strategy as strategy_lib
from noisy_student.training import losses
from noisy_student.training import optimization

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
DATA_POSITIONS = ("skip", "epoch")
CKPT_DIR = model_io.CHECKPOINT_DIR
EVAL_METRICS_FILE = "eval_metrics.json"
EVAL_HISTORY_FILE = "eval_history.json"
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Everything the trainer needs besides the task.

  Attributes:
    model_dir: output directory (see the module docstring).
    train_steps: total optimizer steps.
    schedule: the learning-rate schedule.
    steps_per_loop: steps per host call (also the logging period).
    checkpoint_every_steps: checkpoint period (a checkpoint is always written at the end).
    keep_checkpoints: how many recent checkpoints to keep.
    eval_every_steps: evaluation period with the EMA weights; 0 = only at the end.
    optimizer: "rmsprop" (official), "momentum" or "sgd".
    rmsprop_rho, rmsprop_momentum, rmsprop_epsilon: RMSprop settings (momentum is also
      the SGD momentum).
    weight_decay: L2 coefficient on non-BN weights (loss += wd * sum(v^2) / 2).
    moving_average_decay: EMA decay; <= 0 disables the EMA (evaluation then uses the
      raw weights).
    precision: "float32", "bfloat16" or "float16" (dynamic loss scaling).
    data_position: how a resumed run finds its place in the input: "skip" replays
      the stream and drops the consumed batches (exact with `deterministic`; costs
      their preprocessing, fine for small datasets); "epoch" restarts at the labeled
      epoch in progress (cheap; ImageNet-size data).
    seed: global seed (weights, dropout, input order).
    deterministic: enable TF op determinism (bit-reproducible runs on one host).
    init_from: warm start (paper Study #8): a model_dir or .keras file (weights matched
      by variable path and shape) or a trainer checkpoint (its EMA weights).
    max_eval_batches: evaluate on at most this many batches (0 = the whole split).
    summary_images: images of each kind (labeled, unlabeled) of the first training
      batch written to TensorBoard, as noised as the model sees them (0 = none).
    profile_steps: (first, last) or (step,): trace these steps with the TensorFlow
      profiler into `profile_dir` (default model_dir/profile); () = no profile.
  """
  model_dir: str
  train_steps: int
  schedule: optimization.ScheduleConfig = optimization.ScheduleConfig()
  steps_per_loop: int = 100
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 5
  eval_every_steps: int = 0
  optimizer: str = "rmsprop"
  rmsprop_rho: float = 0.9
  rmsprop_momentum: float = 0.9
  rmsprop_epsilon: float = 1e-3
  weight_decay: float = 1e-5
  moving_average_decay: float = 0.9999
  precision: str = "float32"
  data_position: str = "skip"
  seed: int = 0
  deterministic: bool = False
  init_from: str | None = None
  max_eval_batches: int = 0
  summary_images: int = 8
  profile_steps: tuple[int, ...] = ()
  profile_dir: str = ""

  def __post_init__(self):
    if self.train_steps <= 0:
      raise ValueError(f"train_steps must be > 0, got {self.train_steps}")
    if self.precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
    if self.data_position not in DATA_POSITIONS:
      raise ValueError(f"data_position must be one of {DATA_POSITIONS}")
    for name in ("steps_per_loop", "checkpoint_every_steps", "keep_checkpoints"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    for name in ("eval_every_steps", "max_eval_batches", "summary_images"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    steps = tuple(self.profile_steps)
    if steps and (len(steps) > 2 or steps[0] < 1 or steps[-1] < steps[0]):
      raise ValueError("profile_steps must be FIRST,LAST with 1 <= FIRST <= LAST, or one "
                       f"step, got {','.join(map(str, steps))}")

  @property
  def profile_window(self) -> tuple[int, int] | None:
    """(first, last) profiled step, or None."""
    return (self.profile_steps[0], self.profile_steps[-1]) if self.profile_steps else None


class Task(Protocol):
  """What the trainer needs from a task (see `noisy_student.training.task.ClassificationTask`)."""

  metric_names: tuple[str, ...]
  has_eval: bool
  global_batch_images: int

  def build_model(self, *, for_training: bool) -> keras.Model:
    """A fresh model; for_training=False gives the EMA / export copy (no sync BN)."""

  def setup(self) -> None:
    """Called once inside the strategy scope (e.g. to load a frozen teacher)."""

  def train_dataset(self, input_context: tf.distribute.InputContext, seed: int,
                    initial_epoch: int = 0) -> tf.data.Dataset:
    """Infinite per-replica batches, starting at labeled epoch `initial_epoch`."""

  def initial_epoch(self, step: int) -> int:
    """The labeled epoch in progress at `step`."""

  def eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset | None:
    """Finite per-replica batches with "image", "label", "mask"; None = no evaluation."""

  def train_loss(self, model: keras.Model, batch: dict,
                 num_replicas: int) -> tuple[tf.Tensor, dict]:
    """(this replica's data loss scaled by global counts, metrics summing to globals)."""

  def export_config(self) -> dict:
    """model_config.json contents."""

  def input_files(self) -> list[str]:
    """Every TFRecord file the task reads (searched for the broken one on data loss)."""


def set_precision(precision: str) -> None:
  keras.mixed_precision.set_global_policy(PRECISIONS[precision])


def set_seed(seed: int, deterministic: bool) -> None:
  """Seeds Python, NumPy and Keras (weights, dropout); optionally TF op determinism.

  TensorFlow's global seed is left unset: every random op here takes an explicit seed
  (Keras' stateless ops, the input pipeline's per-example seeds), and tf.data rejects a
  tensor shuffle seed when the global seed is 0.
  """
  keras.utils.set_random_seed(seed)
  tf.random.set_seed(None)
  if deterministic:
    tf.config.experimental.enable_op_determinism()


# ---------------------------------------------------------------------------------------
# Warm start


def _copy_matching(src: keras.Model, dst: keras.Model, source: str) -> None:
  by_path = {v.path: v for v in src.variables}
  copied, skipped = 0, []
  for v in dst.variables:
    s = by_path.get(v.path)
    if s is not None and tuple(s.shape) == tuple(v.shape) and s.dtype == v.dtype:
      v.assign(s.value)
      copied += 1
    elif "float" in str(v.dtype):
      skipped.append(v.path)
  if not copied:
    raise ValueError(f"init_from={source}: no variable matches the model by path and shape")
  logging.info("warm start from %s: %d variables copied, %d kept (%s)", source, copied,
               len(skipped), ", ".join(skipped[:10]))


def warm_start(model: keras.Model, path: str) -> None:
  """Initialises `model` from a model_dir / .keras file or a trainer checkpoint's EMA."""
  model_file, _ = model_io.model_files(path)
  if model_file.endswith(".keras") and tf.io.gfile.exists(model_file):
    src, _ = model_io.load_model(path)
    _copy_matching(src, model, path)
    return
  ckpt = model_io.find_checkpoint(path)
  if ckpt is None:
    raise FileNotFoundError(f"init_from={path}: neither a model.keras nor a checkpoint")
  # A trainer checkpoint's "ema_model" is the teacher's EMA weights (paper: teachers are
  # always the EMA weights); mapping it onto this model needs the same architecture.
  status = tf.train.Checkpoint(ema_model=model).restore(ckpt).expect_partial()
  status.assert_existing_objects_matched()
  logging.info("warm start from checkpoint %s (EMA weights)", ckpt)


# ---------------------------------------------------------------------------------------
# The trainer


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Trainer:
  """Owns the step counter, optimizer, EMA, checkpoints and the loops."""

  def __init__(self, config: TrainerConfig, task: Task,
               strategy: tf.distribute.Strategy | None = None):
    self.config = config
    self.task = task
    self.strategy = strategy or tf.distribute.get_strategy()
    self.is_chief = strategy_lib.is_chief(self.strategy)
    self.num_replicas = self.strategy.num_replicas_in_sync
    with self.strategy.scope():
      self.task.setup()
      self.model = task.build_model(for_training=True)
      self.ema_model = task.build_model(for_training=False)
      self.global_step = tf.Variable(
          0, dtype=tf.int64, trainable=False, name="global_step",
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.optimizer = optimization.build_optimizer(
          config.optimizer, self.current_learning_rate, rho=config.rmsprop_rho,
          momentum=config.rmsprop_momentum, epsilon=config.rmsprop_epsilon,
          loss_scale=config.precision == "float16")
      self.optimizer.build(self.model.trainable_variables)
      self.ema = None
      if config.moving_average_decay > 0:
        self.ema = optimization.ExponentialMovingAverage(
            self.model, self.ema_model, config.moving_average_decay)
    self._decayed = losses.decayed_variables(self.model)
    # One device draws its masks as it always did; replicas get masks of their own.
    self._seed_states = (strategy_lib.seed_states(self.model) if self.num_replicas > 1
                         else [])
    # Without an EMA copy (which averages them) the model itself is evaluated and
    # exported: its replicas' BN statistics are kept equal.
    self._replica_statistics = (optimization.moving_statistics(self.model)
                                if self.ema is None and self.num_replicas > 1 else [])
    self.skipped_records = 0  # Bad training records skipped by the input, this process.
    self._ckpt_dir = os.path.join(config.model_dir, CKPT_DIR)
    self._iterator = None
    self._train_loop_fn = None
    self._eval_step_fn = None
    self._writers = {}
    self._first_input = None  # The first input pipeline (for the image summary).
    self._profiling = False

  # -- state --------------------------------------------------------------------------

  @property
  def eval_model(self) -> keras.Model:
    return self.ema_model if self.ema is not None else self.model

  def current_learning_rate(self) -> tf.Tensor:
    return optimization.learning_rate_at(self.global_step, self.config.schedule)

  def _checkpoint(self) -> tf.train.Checkpoint:
    # Keras does not track the random-number state of dropout / stochastic depth
    # (SeedGenerator) for tf.train.Checkpoint; add it so that a resumed run draws the
    # same noise as an uninterrupted one.
    rng = {f"state_{i}": v for i, v in enumerate(
        v for v in self.model.variables if "float" not in str(v.dtype))}
    objects = dict(model=self.model, ema_model=self.ema_model, optimizer=self.optimizer,
                   step=self.global_step, model_rng=rng)
    return tf.train.Checkpoint(**objects)

  def _restore_or_initialize(self) -> int:
    """Restores the latest checkpoint, or warm-starts a fresh run; returns the step."""
    latest = tf.train.latest_checkpoint(self._ckpt_dir)
    if latest is None:
      if self.config.init_from:
        warm_start(self.model, self.config.init_from)
        if self.ema is not None:
          self.ema.copy_from_model()
      return 0
    self._checkpoint().restore(latest).assert_existing_objects_matched()
    logging.info("resumed from %s at step %d", latest, int(self.global_step.numpy()))
    return int(self.global_step.numpy())

  def _make_iterator(self, step: int):
    """The distributed training input, positioned for a run resumed at `step`.

    "skip" rebuilds the stream from its start and drops the `step` batches already
    consumed (each step takes one element per local replica): exact with
    --deterministic, but their preprocessing is redone. "epoch" starts the stream at
    the labeled epoch in progress instead (cheap; part of an epoch is seen again; the
    unlabeled stream starts a fresh pass, see data.input.pipeline).
    tf.data iterators are not checkpointed: tf.distribute's are not trackable, and a
    shuffle inside a per-epoch flat_map cannot be serialized.
    """
    seed = self.config.seed
    epoch = self.task.initial_epoch(step) if self.config.data_position == "epoch" else 0

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
      dataset = self.task.train_dataset(ctx, seed, epoch)
      self._first_input = self._first_input or dataset
      if step and self.config.data_position == "skip":
        dataset = dataset.skip(step * (ctx.num_replicas_in_sync // ctx.num_input_pipelines))
      return dataset

    if step:
      logging.info("input resumes at step %d (%s)", step, f"labeled epoch {epoch}"
                   if self.config.data_position == "epoch" else "skipping consumed batches")
    return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

  def save_checkpoint(self) -> str:
    """Atomic (CheckpointManager writes then renames); every worker must call it."""
    directory = strategy_lib.write_dir(self._ckpt_dir, self.strategy)
    manager = tf.train.CheckpointManager(
        self._checkpoint(), directory,
        max_to_keep=self.config.keep_checkpoints, checkpoint_name="ckpt")
    path = manager.save(checkpoint_number=int(self.global_step.numpy()))
    strategy_lib.cleanup_write_dir(self._ckpt_dir, self.strategy)
    return path

  # -- the compiled functions ---------------------------------------------------------

  def _replica_step(self, batch: dict) -> dict:
    n = self.num_replicas
    with strategy_lib.distinct_replica_noise(self._seed_states), tf.GradientTape() as tape:
      data_loss, metrics = self.task.train_loss(self.model, batch, n)
      # Weight decay is computed identically on every replica; the gradient all-reduce
      # sums the replicas, so each contributes 1/n of it.
      decay = (self.config.weight_decay * losses.l2_loss(self._decayed) / n
               if self.config.weight_decay else tf.constant(0.0))
      loss = data_loss + decay
      scaled = (self.optimizer.scale_loss(loss)
                if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) else loss)
    grads = tape.gradient(scaled, self.model.trainable_variables)
    if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
      grads = optimization.skip_non_finite_together(grads)
    self.optimizer.apply(grads, self.model.trainable_variables)
    if self.ema is not None:
      self.ema.update(self.global_step + 1)
    optimization.average_across_replicas(self._replica_statistics)
    skipped = (tf.reduce_sum(batch["skipped"]) if "skipped" in batch
               else tf.constant(0.0))  # Counted on the row that follows them.
    outputs = dict(metrics, loss=loss, weight_decay=decay, skipped_records=skipped)
    return {k: tf.cast(v, tf.float32) for k, v in outputs.items()}

  def _build_train_loop(self):
    names = tuple(self.task.metric_names) + ("loss", "weight_decay", "skipped_records")

    @tf.function
    def train_loop(iterator, num_steps):
      sums = {k: tf.constant(0.0) for k in names}
      for _ in tf.range(num_steps):
        outputs = self.strategy.run(self._replica_step, args=(next(iterator),))
        sums = {k: sums[k] + self.strategy.reduce(tf.distribute.ReduceOp.SUM, outputs[k],
                                                  axis=None) for k in names}
        self.global_step.assign_add(1)
      return sums

    return train_loop

  def _replica_eval(self, batch: dict) -> dict:
    logits = tf.cast(self.eval_model(batch["image"], training=False), tf.float32)
    mask = tf.cast(batch["mask"], tf.float32)
    skipped = tf.constant(0.0)
    if "ok" in batch:  # Records that did not decode, or with a bad label, are not scored.
      skipped = tf.reduce_sum(mask * (1.0 - tf.cast(batch["ok"], tf.float32)))
      mask *= tf.cast(batch["ok"], tf.float32)
    num_classes = logits.shape[-1]
    labels = tf.clip_by_value(tf.cast(batch["label"], tf.int32), 0, num_classes - 1)
    top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    top5 = tf.cast(tf.math.in_top_k(labels, logits, min(5, num_classes)), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return {"top1": tf.reduce_sum(top1 * mask), "top5": tf.reduce_sum(top5 * mask),
            "loss": tf.reduce_sum(ce * mask), "count": tf.reduce_sum(mask),
            "skipped": skipped}

  def _build_eval_step(self):
    @tf.function
    def eval_step(batch):
      out = self.strategy.run(self._replica_eval, args=(batch,))
      return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
              for k, v in out.items()}
    return eval_step

  # -- outputs ------------------------------------------------------------------------

  def _writer(self, name: str):
    if name not in self._writers:
      logdir = os.path.join(self.config.model_dir, name)
      self._writers[name] = (tf.summary.create_file_writer(logdir) if self.is_chief
                             else tf.summary.create_noop_writer())
    return self._writers[name]

  def _write_scalars(self, name: str, scalars: dict, step: int) -> None:
    with self._writer(name).as_default(step=step):
      for key, value in scalars.items():
        tf.summary.scalar(key, value)
    self._writer(name).flush()

  def write_input_images(self) -> None:
    """The first batch of the first replica, as noised as the model sees it, to TensorBoard.

    A second iterator over the first input pipeline's dataset (the training iterator's
    elements are not peeked at) reads one batch, once, at the start of a fresh run; the
    dataset is the training one, so nothing is built or traced again, and `train` runs
    this in a thread while the first steps trace and compile. Images go to train/ at
    step 0 as "input/labeled" and "input/unlabeled" (the unlabeled part of a student's
    batch).
    """
    k = self.config.summary_images
    if not (k and self.is_chief and self._first_input is not None):
      return
    try:
      batch = next(iter(self._first_input))
    except tf.errors.OpError as e:  # The training input reports the same error itself.
      logging.warning("no input image summary: %s", e.message.splitlines()[0])
      return
    images = tf.cast(tf.clip_by_value(tf.round(batch["image"]), 0, 255), tf.uint8)
    unlabeled = (tf.cast(batch["is_unlabeled"], tf.bool) if "is_unlabeled" in batch
                 else tf.zeros(tf.shape(images)[:1], tf.bool))
    with self._writer("train").as_default(step=0):
      for tag, rows in (("input/labeled", ~unlabeled), ("input/unlabeled", unlabeled)):
        if bool(tf.reduce_any(rows)):
          tf.summary.image(tag, tf.boolean_mask(images, rows)[:k], max_outputs=k)
    self._writer("train").flush()

  def _profile_dir(self) -> str:
    return self.config.profile_dir or os.path.join(self.config.model_dir, "profile")

  def _update_profiler(self, step: int) -> None:
    """Traces steps first..last of `profile_steps`: on before step `first` (the loop
    boundaries stop at first - 1 and last), off after step `last` or at the end."""
    window = self.config.profile_window
    if window is None or not self.is_chief:
      return
    first, last = window
    if not self._profiling and first - 1 <= step < min(last, self.config.train_steps):
      tf.profiler.experimental.start(self._profile_dir())
      self._profiling = True
    elif self._profiling and (step >= last or step >= self.config.train_steps):
      tf.profiler.experimental.stop()
      self._profiling = False
      print(f"profiled steps {first}-{min(last, step)} into {self._profile_dir()}",
            flush=True)

  def evaluate(self) -> dict | None:
    """Top-1 / top-5 / CE on the eval split with the EMA weights; None without one."""
    dataset = self.strategy.distribute_datasets_from_function(self.task.eval_dataset)
    if self._eval_step_fn is None:
      self._eval_step_fn = self._build_eval_step()
    totals = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0, "skipped": 0.0}
    with self._naming_broken_files():
      for i, batch in enumerate(dataset):
        if self.config.max_eval_batches and i >= self.config.max_eval_batches:
          break
        for k, v in self._eval_step_fn(batch).items():
          totals[k] += float(v)
    count = max(totals["count"], 1.0)
    step = int(self.global_step.numpy())
    result = {"step": step, "top1": totals["top1"] / count, "top5": totals["top5"] / count,
              "loss": totals["loss"] / count, "num_examples": int(totals["count"]),
              "num_skipped": int(totals["skipped"]),
              "weights": "ema" if self.ema is not None else "raw"}
    logging.info("eval at step %d: top1 %.4f top5 %.4f (%d examples)", step,
                 result["top1"], result["top5"], result["num_examples"])
    skipped = (f", {result['num_skipped']} unreadable or out-of-range records skipped"
               if result["num_skipped"] else "")
    print(f"eval step {step}: top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  "
          f"loss {result['loss']:.4f}  ({result['num_examples']} images{skipped})",
          flush=True)
    if self.is_chief:
      self._write_scalars("eval", {"top1": result["top1"], "top5": result["top5"],
                                   "loss": result["loss"]}, step)
      history_path = os.path.join(self.config.model_dir, EVAL_HISTORY_FILE)
      history = fileio.read_json(history_path) if tf.io.gfile.exists(history_path) else []
      history = [h for h in history if h["step"] < step] + [result]
      fileio.write_json_atomic(history_path, history)
      fileio.write_json_atomic(os.path.join(self.config.model_dir, EVAL_METRICS_FILE), result)
    return result

  def export(self) -> str | None:
    """Saves the EMA model as float32 `model.keras` + `model_config.json` (chief only)."""
    if not self.is_chief:
      return None
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
      exported = self.task.build_model(for_training=False)
      exported.set_weights([np.asarray(w) for w in self.eval_model.get_weights()])
    finally:
      keras.mixed_precision.set_global_policy(policy)
    config = dict(self.task.export_config(), train_steps=int(self.global_step.numpy()),
                  weights="ema" if self.ema is not None else "raw")
    return model_io.save_model(exported, self.config.model_dir, config)

  # -- the loop -----------------------------------------------------------------------

  def _progress(self, step: int, sums: dict, num_steps: int, seconds: float,
                seconds_per_step: float) -> None:
    """The console line and the TensorBoard scalars of one host loop."""
    c = self.config
    means = {k: v / num_steps for k, v in sums.items() if k != "skipped_records"}
    self.skipped_records += int(sums["skipped_records"])
    lr = float(optimization.learning_rate_at(step - 1, c.schedule))
    steps_per_sec = num_steps / max(seconds, 1e-9)
    rate = steps_per_sec * self.task.global_batch_images
    eta = (c.train_steps - step) * seconds_per_step
    parts = "  ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "loss")
    skipped = (f"  {self.skipped_records} bad records skipped" if self.skipped_records
               else "")
    print(f"step {step}/{c.train_steps}  loss {means['loss']:.4f}  {parts}  lr {lr:.3g}  "
          f"{rate:.1f} img/s  ETA {_format_duration(eta)}{skipped}", flush=True)
    if self.is_chief:
      scalars = {f"loss/{k}" if "ce" in k or "loss" in k or k == "weight_decay" else k: v
                 for k, v in means.items()}
      scalars.update({"learning_rate": lr, "images_per_sec": rate,
                      "steps_per_sec": steps_per_sec,
                      "input/skipped_records": self.skipped_records})
      self._write_scalars("train", scalars, step)

  def _next_boundary(self, step: int) -> int:
    c = self.config
    ends = [c.train_steps, step + c.steps_per_loop,
            (step // c.checkpoint_every_steps + 1) * c.checkpoint_every_steps]
    if c.eval_every_steps:
      ends.append((step // c.eval_every_steps + 1) * c.eval_every_steps)
    if c.profile_window:
      ends += [s for s in (c.profile_window[0] - 1, c.profile_window[1]) if s > step]
    return min(ends)

  def train(self, on_loop_end: Callable[[int], None] | None = None) -> dict | None:
    """Trains to `train_steps` (resuming if checkpoints exist), evaluates, exports.

    Args:
      on_loop_end: optional callback(step) after every host loop (tests use it to
        simulate a crash).

    Returns:
      The final evaluation result, or None without an eval split.
    """
    c = self.config
    fileio.makedirs(c.model_dir)
    step = self._restore_or_initialize()
    self._iterator = self._make_iterator(step)
    images = threading.Thread(target=self.write_input_images, daemon=True)
    if step == 0:
      self._writer("train")
      images.start()
    if self._train_loop_fn is None:
      self._train_loop_fn = self._build_train_loop()
    clock = None  # (time, step) after the first loop, which includes tracing.
    has_eval = self.task.has_eval
    last_eval = None
    if has_eval and self._is_periodic_eval(step) and not self._evaluated(step):
      # The run was stopped after this step's checkpoint, before its evaluation.
      last_eval = self.evaluate()
    while step < c.train_steps:
      self._update_profiler(step)
      n = self._next_boundary(step) - step
      t0 = time.time()
      with self._naming_broken_files():
        sums = self._train_loop_fn(self._iterator, tf.constant(n, tf.int32))
        sums = {k: float(v) for k, v in sums.items()}
      step = int(self.global_step.numpy())
      now = time.time()
      # Wall time per step since the first loop: checkpoints and evaluations included.
      per_step = (now - clock[0]) / (step - clock[1]) if clock else (now - t0) / n
      clock = clock or (now, step)
      self._progress(step, sums, n, now - t0, per_step)
      if not np.isfinite(sums["loss"]):
        raise FloatingPointError(f"loss is {sums['loss']} at step {step}")
      self._update_profiler(step)
      if step % c.checkpoint_every_steps == 0 or step == c.train_steps:
        self.save_checkpoint()
      if has_eval and self._is_periodic_eval(step):
        last_eval = self.evaluate()
      if on_loop_end is not None:
        on_loop_end(step)
    if images.is_alive():
      images.join()
    if has_eval:
      last_eval = self._stored_eval(step) or self.evaluate()
    if not self._already_exported(step):
      self.export()
    return last_eval

  @contextlib.contextmanager
  def _naming_broken_files(self):
    """Input errors as one line: the truncated file by name, too many bad records."""
    try:
      yield
    except tf.errors.DataLossError as e:
      files = self.task.input_files() if hasattr(self.task, "input_files") else []
      raise fileio.data_loss_error(files, e) from None
    except tf.errors.InvalidArgumentError as e:
      message = pipeline.bad_records_message(e)
      if message is None:
        raise
      raise ValueError(message) from None

  def _is_periodic_eval(self, step: int) -> bool:
    """An evaluation step inside the run (the final one is done after the loop)."""
    every = self.config.eval_every_steps
    return bool(every) and 0 < step < self.config.train_steps and step % every == 0

  def _evaluated(self, step: int) -> bool:
    path = os.path.join(self.config.model_dir, EVAL_HISTORY_FILE)
    return tf.io.gfile.exists(path) and any(
        h["step"] == step for h in fileio.read_json(path))

  def _stored_eval(self, step: int) -> dict | None:
    """The stored evaluation of `step` (a rerun of a finished run re-evaluates nothing)."""
    path = os.path.join(self.config.model_dir, EVAL_METRICS_FILE)
    if tf.io.gfile.exists(path):
      stored = fileio.read_json(path)
      if stored.get("step") == step:
        return stored
    return None

  def _already_exported(self, step: int) -> bool:
    path = os.path.join(self.config.model_dir, model_io.CONFIG_FILE)
    return (tf.io.gfile.exists(os.path.join(self.config.model_dir, model_io.MODEL_FILE))
            and tf.io.gfile.exists(path)
            and fileio.read_json(path).get("train_steps") == step)


def write_config(model_dir: str, config: dict) -> None:
  fileio.write_json_atomic(os.path.join(model_dir, CONFIG_FILE), config)


def config_to_dict(config) -> dict:
  """A (nested) frozen config dataclass as JSON-ready dict."""
  return json.loads(json.dumps(dataclasses.asdict(config), default=str))
