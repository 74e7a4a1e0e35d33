r"""Trains a Noisy Student teacher or student (paper Sec. 2-3, Algorithm 1 steps 1 and 3).

  python -m noisy_student.train --flagfile=flags/svhn_teacher.flags --model_dir=runs/t

A teacher trains on labeled data only. A student also gets U = ceil(r * B) pseudo-labeled
images per batch of B labeled ones: offline (default) from TFRecords written by
`noisy_student.label` / `noisy_student.select` (--unlabeled_pattern), or online from a
frozen teacher (--teacher=MODEL_DIR) that labels clean copies in-graph. Restarting the
same command resumes from the last checkpoint in --model_dir. See README "Training".
"""

from __future__ import annotations

import dataclasses
import functools
import math

from absl import flags
import tensorflow as tf

import efficientnet
from data import cli
from data import fileio
from data import pipeline
from noisy_student import losses
from noisy_student import optimization
from noisy_student import strategy as strategy_lib
from noisy_student import task as task_lib
from noisy_student import trainer as trainer_lib

AUGMENTS = ["randaugment", "standard", "none"]
FLAG_NAMES: list[str] = []  # Filled by define_flags.


def _default(config_class, field: str):
  """The default of a config dataclass field: a flag reads it, so it lives in one place."""
  return next(f.default for f in dataclasses.fields(config_class) if f.name == field)


of_task = functools.partial(_default, task_lib.TaskConfig)
of_trainer = functools.partial(_default, trainer_lib.TrainerConfig)
of_loss = functools.partial(_default, losses.LossConfig)
of_schedule = functools.partial(_default, optimization.ScheduleConfig)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """Defines the trainer's flags on `flag_values` (tests use a fresh FlagValues)."""
  def define(kind: str):
    def fn(name, default, *args):
      if name not in FLAG_NAMES:
        FLAG_NAMES.append(name)
      getattr(flags, f"DEFINE_{kind}")(name, default, *args, flag_values=flag_values)
    return fn
  string, enum, integer, real, boolean = (
      define(k) for k in ("string", "enum", "integer", "float", "bool"))

  # Output and run.
  string("model_dir", None, "Output directory; rerunning resumes from it.")
  enum("strategy", "auto", list(strategy_lib.STRATEGIES),
       "tf.distribute strategy; auto: TPU if reachable, else all GPUs, else the "
       "multi-worker cluster in TF_CONFIG, else the CPU.")
  string("tpu", None, "TPU name or grpc:// address (implies --strategy=tpu under "
         "auto); 'local' on a TPU VM.")
  enum("precision", of_trainer("precision"), list(trainer_lib.PRECISIONS),
       "bfloat16 (TPU) or float16 (GPU, with dynamic loss scaling) mixed precision; "
       "logits, losses and variables stay float32.")
  integer("steps_per_loop", of_trainer("steps_per_loop"),
          "Steps per host call (and per progress line).")
  integer("checkpoint_every_steps", of_trainer("checkpoint_every_steps"),
          "Checkpoint period (and at the end).")
  integer("keep_checkpoints", of_trainer("keep_checkpoints"), "Checkpoints kept.")
  integer("eval_every_steps", of_trainer("eval_every_steps"),
          "Evaluation period (EMA weights); 0: at the end only.")
  integer("max_eval_batches", of_trainer("max_eval_batches"),
          "Evaluate on at most this many batches (0: all).")
  enum("data_position", of_trainer("data_position"), list(trainer_lib.DATA_POSITIONS),
       "Where a resumed run restarts its input: 'skip' replays it and drops the "
       "consumed batches (exact with --deterministic; redoes their preprocessing); "
       "'epoch' restarts at the labeled epoch in progress (cheap; ImageNet-size data).")
  integer("seed", 0, "Seed of weights, noise and input order.")
  boolean("deterministic", False,
          "TF op determinism and a fixed input order (bit-reproducible; slower).")

  # Model.
  string("model_name", of_task("model_name"), "efficientnet-b0 .. b8, efficientnet-l2.")
  real("width_coefficient", None, "Overrides the variant's width.")
  real("depth_coefficient", None, "Overrides the variant's depth.")
  boolean("small_image", False, "32x32 variant (block groups 2, 3 with stride 1).")
  integer("image_size", 0, "Training input size; 0: the variant's training size.")
  integer("eval_image_size", 0, "Evaluation / export input size; 0: --image_size.")
  integer("num_classes", 1000, "Number of classes.")
  real("dropout_rate", None, "Head dropout (noise); default: the variant's.")
  real("stochastic_depth_rate", of_task("stochastic_depth_rate"),
       "Maximum stochastic-depth rate (noise).")
  boolean("sync_batch_norm", of_task("sync_batch_norm"),
          "Batch statistics across replicas.")

  # Data.
  string("train_pattern", None, "Labeled training TFRecords (glob, comma-separated).")
  string("eval_pattern", None, "Evaluation TFRecords; none: no evaluation.")
  string("unlabeled_pattern", None,
         "Unlabeled TFRecords: pseudo-labeled (offline) or raw (with --teacher).")
  integer("label_offset", of_task("label_offset"),
          "Subtracted from stored labels (1: ImageNet TPU files).")
  integer("train_batch_size", of_task("train_batch_size"),
          "LABELED images per step (global).")
  integer("eval_batch_size", of_task("eval_batch_size"), "Evaluation batch (global).")
  integer("num_labeled_examples", 0,
          "Labeled set size (defines epochs); 0: counted from --train_pattern.")
  enum("preprocess_mode", None, ["imagenet", "small"],
       "Input path; default: small with --small_image, else imagenet.")
  enum("augment", of_task("augment"), AUGMENTS,
       "Input noise of labeled images: randaugment, standard (crop + flip), none.")
  enum("unlabeled_augment", None, AUGMENTS,
       "Input noise of unlabeled images only (default: --augment); 'none' is the "
       "paper's ablation without noise on unlabeled images.")
  real("randaugment_magnitude", of_task("randaugment_magnitude"),
       "RandAugment magnitude M (official scale).")
  integer("randaugment_layers", of_task("randaugment_layers"),
          "RandAugment ops per image N.")
  boolean("flip", of_task("flip"), "Random horizontal flips (off for digits, e.g. SVHN).")
  integer("shuffle_buffer", of_task("shuffle_buffer"), "Records per shuffle buffer.")
  integer("max_bad_records", of_task("max_bad_records"),
          "Training records that do not decode, or whose label is out of range, are "
          "skipped and counted; more than this many in one input stream stop the run.")

  # Student.
  real("unlabeled_ratio", of_loss("unlabeled_ratio"),
       "r: unlabeled images per labeled image in a batch.")
  enum("label_type", of_loss("label_type"), list(losses.LABEL_TYPES),
       "Pseudo labels: soft (teacher distribution) or hard (one-hot argmax, "
       "smoothed like labels).")
  real("teacher_temperature", of_loss("teacher_temperature"),
       "Soft labels: online softmax(z / T); offline p^(1/T) renormalised (leave 1 "
       "when noisy_student.label already applied its --temperature).")
  enum("loss_weighting", of_loss("weighting"), list(losses.WEIGHTINGS),
       "official: mean labeled CE + r * mean unlabeled CE (released code); mean: the "
       "plain mean over the concatenated batch (what the paper's Sec. 3 text says).")
  string("teacher", None, "Online mode: frozen teacher model_dir labelling clean "
         "copies of the unlabeled images in-graph.")
  string("freeze_until", "", "FixRes fine-tuning: freeze every layer before the "
         "first whose name starts with this prefix (e.g. block6).")
  string("init_from", None, "Warm start (paper Study #8): a model_dir / .keras "
         "file or a trainer checkpoint (its EMA weights).")

  # Optimisation (official defaults).
  integer("train_steps", 0, "Total steps; 0: from --train_epochs.")
  real("train_epochs", 0.0, "Total labeled epochs (if --train_steps is 0).")
  enum("optimizer", of_trainer("optimizer"), ["rmsprop", "momentum", "sgd"],
       "rmsprop: official (rho 0.9, momentum 0.9, eps 1e-3, slots start at 1).")
  real("base_learning_rate", of_schedule("base_lr"),
       "Learning rate per 256 labeled images.")
  real("final_base_lr", None, "Solve the decay period so training ends at this "
       "base learning rate (official SVHN: 2e-4); overrides --lr_decay_epochs.")
  enum("lr_schedule", of_schedule("kind"), ["exponential", "cosine", "constant"],
       "After warmup: exponential staircase (official), cosine or constant.")
  real("warmup_epochs", of_schedule("warmup_epochs"), "Linear warmup, labeled epochs.")
  real("lr_decay_epochs", of_schedule("decay_epochs"),
       "Staircase period in labeled epochs (4.8 for 700).")
  real("lr_decay_factor", of_schedule("decay_factor"), "Staircase factor.")
  real("weight_decay", of_trainer("weight_decay"),
       "L2 on non-BN weights: wd * sum(v^2) / 2.")
  real("label_smoothing", of_loss("label_smoothing"),
       "Label smoothing of labels and hard pseudo labels.")
  real("moving_average_decay", of_trainer("moving_average_decay"),
       "EMA decay (num_updates warmup); 0 disables the EMA.")
  flags.mark_flags_as_required(["model_dir", "train_pattern"], flag_values=flag_values)
  return flag_values




def _train_steps(fv: flags.FlagValues, num_labeled: int) -> int:
  if fv.train_steps > 0:
    return fv.train_steps
  if fv.train_epochs <= 0:
    raise ValueError("set --train_steps or --train_epochs")
  return math.ceil(fv.train_epochs * num_labeled / fv.train_batch_size)


def _schedule(fv: flags.FlagValues, num_labeled: int,
              train_steps: int) -> optimization.ScheduleConfig:
  steps_per_epoch = num_labeled / fv.train_batch_size
  decay_epochs = fv.lr_decay_epochs
  if fv.final_base_lr:
    decay_epochs = optimization.decay_epochs_for_final_lr(
        base_lr=fv.base_learning_rate, final_base_lr=fv.final_base_lr,
        total_epochs=train_steps / steps_per_epoch, warmup_epochs=fv.warmup_epochs,
        decay_factor=fv.lr_decay_factor)
  return optimization.ScheduleConfig(
      base_lr=fv.base_learning_rate, labeled_batch_size=fv.train_batch_size,
      steps_per_epoch=steps_per_epoch, warmup_epochs=fv.warmup_epochs,
      decay_epochs=decay_epochs, decay_factor=fv.lr_decay_factor,
      kind=fv.lr_schedule, total_steps=train_steps)


def _check_counts(fv: flags.FlagValues) -> None:
  """Sizes and ratios that make no sense, each named (before any division by them)."""
  for name in ("train_batch_size", "eval_batch_size"):
    if fv[name].value < 1:
      raise ValueError(f"--{name} must be >= 1, got {fv[name].value}")
  for name in ("unlabeled_ratio", "max_bad_records", "train_steps", "train_epochs",
               "num_labeled_examples"):
    if fv[name].value < 0:
      raise ValueError(f"--{name} must be >= 0, got {fv[name].value}")


def config_from_flags(fv: flags.FlagValues = flags.FLAGS) -> task_lib.TrainConfig:
  """The frozen run configuration; counts the labeled records if not given."""
  _check_counts(fv)
  if tf.io.gfile.exists(fv.model_dir) and not tf.io.gfile.isdir(fv.model_dir):
    raise ValueError(f"--model_dir={fv.model_dir} is a file; give a directory")
  num_labeled = fv.num_labeled_examples or pipeline.count_records(
      fileio.list_record_files(fv.train_pattern))
  if num_labeled <= 0:
    raise ValueError(f"train_pattern={fv.train_pattern!r} holds no records")
  train_steps = _train_steps(fv, num_labeled)
  variant = efficientnet.get_variant(fv.model_name)
  image_size = fv.image_size or variant.train_resolution
  loss = losses.LossConfig(
      label_smoothing=fv.label_smoothing, label_type=fv.label_type,
      unlabeled_ratio=fv.unlabeled_ratio, weighting=fv.loss_weighting,
      teacher_temperature=fv.teacher_temperature)
  task = task_lib.TaskConfig(
      train_pattern=fv.train_pattern, num_classes=fv.num_classes,
      image_size=image_size, model_name=fv.model_name,
      width_coefficient=fv.width_coefficient, depth_coefficient=fv.depth_coefficient,
      small_image=fv.small_image,
      eval_image_size=fv.eval_image_size or (
          variant.resolution if variant.train_resolution != variant.resolution
          and not fv.image_size else 0),
      preprocess_mode=fv.preprocess_mode or ("small" if fv.small_image else "imagenet"),
      label_offset=fv.label_offset, dropout_rate=fv.dropout_rate,
      stochastic_depth_rate=fv.stochastic_depth_rate, augment=fv.augment,
      unlabeled_augment=fv.unlabeled_augment or fv.augment,
      randaugment_layers=fv.randaugment_layers,
      randaugment_magnitude=fv.randaugment_magnitude, flip=fv.flip,
      unlabeled_pattern=fv.unlabeled_pattern or "", eval_pattern=fv.eval_pattern or "",
      train_batch_size=fv.train_batch_size, eval_batch_size=fv.eval_batch_size,
      teacher=fv.teacher or "", sync_batch_norm=fv.sync_batch_norm, loss=loss,
      num_labeled_examples=num_labeled, shuffle_buffer=fv.shuffle_buffer,
      freeze_until=fv.freeze_until or "", seed=fv.seed, deterministic=fv.deterministic,
      max_bad_records=fv.max_bad_records)
  trainer = trainer_lib.TrainerConfig(
      model_dir=fv.model_dir, train_steps=train_steps,
      schedule=_schedule(fv, num_labeled, train_steps), steps_per_loop=fv.steps_per_loop,
      checkpoint_every_steps=fv.checkpoint_every_steps,
      keep_checkpoints=fv.keep_checkpoints, eval_every_steps=fv.eval_every_steps,
      optimizer=fv.optimizer, weight_decay=fv.weight_decay,
      moving_average_decay=fv.moving_average_decay, precision=fv.precision,
      data_position=fv.data_position, seed=fv.seed,
      deterministic=fv.deterministic, init_from=fv.init_from,
      max_eval_batches=fv.max_eval_batches)
  return task_lib.TrainConfig(task=task, trainer=trainer, strategy=fv.strategy,
                              tpu=fv.tpu)


def resolved_flags(fv: flags.FlagValues = flags.FLAGS) -> str:
  """The trainer's flags with their values (defaults included), one per line."""
  return "".join(fv[name].serialize() + "\n" for name in sorted(FLAG_NAMES)
                 if fv[name].value is not None)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  # Bad inputs fail in validation, before anything is written (data.cli: one line, 2).
  task_lib.run(config_from_flags(), flags_text=resolved_flags())


if __name__ == "__main__":
  define_flags()
  cli.run(main, prog="noisy_student.train")
