r"""Trains a Noisy Student teacher or student (paper Sec. 2-3, Algorithm 1 steps 1 and 3).

  python -m noisy_student.train --flagfile=flags/train/svhn_teacher.flags --model_dir=runs/t

A teacher trains on labeled data only. A student also gets U = ceil(r * B) pseudo-labeled
images per batch of B labeled ones: offline (default) from TFRecords written by
`noisy_student.label` / `noisy_student.select` (--unlabeled_pattern), or online from a
frozen teacher (--teacher=MODEL_DIR) that labels clean copies in-graph. Restarting the
same command resumes from the last checkpoint in --model_dir. See docs/training.md.
"""

from __future__ import annotations

import math

from absl import flags
import tensorflow as tf

import efficientnet
from data import cli
from data import config_flags
from data import fileio
from data.input import pipeline
from noisy_student import settings as settings_lib
from noisy_student.training import losses
from noisy_student.training import optimization
from noisy_student.training import task as task_lib
from noisy_student.training import trainer as trainer_lib

FLAG_NAMES = [f.name for f, _, _ in config_flags.fields(settings_lib.TrainSettings)]


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """Defines the trainer's flags on `flag_values` (tests use a fresh FlagValues).

  They are made from `settings.TrainSettings`, which holds each one's default and help.
  """
  config_flags.define(settings_lib.TrainSettings, flag_values)
  return flag_values


def _train_steps(fv: settings_lib.TrainSettings, num_labeled: int) -> int:
  if fv.train_steps > 0:
    return fv.train_steps
  if fv.train_epochs <= 0:
    raise ValueError("set --train_steps or --train_epochs")
  return math.ceil(fv.train_epochs * num_labeled / fv.train_batch_size)


def _schedule(fv: settings_lib.TrainSettings, num_labeled: int,
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


def _check_counts(fv: settings_lib.TrainSettings) -> None:
  """Sizes and ratios that make no sense, each named (before any division by them)."""
  for name in ("train_batch_size", "eval_batch_size"):
    if getattr(fv, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(fv, name)}")
  for name in ("unlabeled_ratio", "max_bad_records", "train_steps", "train_epochs",
               "num_labeled_examples"):
    if getattr(fv, name) < 0:
      raise ValueError(f"--{name} must be >= 0, got {getattr(fv, name)}")


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> task_lib.TrainConfig:
  """The frozen run configuration of the parsed flags (`config_from_settings`)."""
  return config_from_settings(config_flags.read(settings_lib.TrainSettings, flag_values))


def config_from_settings(fv: settings_lib.TrainSettings) -> task_lib.TrainConfig:
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
      max_eval_batches=fv.max_eval_batches, summary_images=fv.summary_images,
      profile_steps=fv.profile_steps, profile_dir=fv.profile_dir)
  return task_lib.TrainConfig(task=task, trainer=trainer, strategy=fv.strategy,
                              tpu=fv.tpu)


def resolved_flags(flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The trainer's flags with their values (defaults included), one per line."""
  settings = config_flags.read(settings_lib.TrainSettings, flag_values)
  return "".join(arg + "\n" for arg in sorted(
      config_flags.to_args(settings, all_fields=True)))


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  # Bad inputs fail in validation, before anything is written (data.cli: one line, 2).
  task_lib.run(config_from_flags(), flags_text=resolved_flags())


if __name__ == "__main__":
  define_flags()
  cli.run(main, prog="noisy_student.train")
