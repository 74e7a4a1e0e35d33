r"""Runs the whole Noisy Student method end to end (paper Algorithm 1 with iterations).

  python -m noisy_student.run --flagfile=flags/run/fashion_mnist_demo.flags --workdir=runs/demo
  python -m noisy_student.run --flagfile=flags/run/svhn.flags --workdir=runs/svhn

Stages: TFRecords from the sources (Fashion-MNIST's IDX files by default; any
`data.make_tfrecords --source`: a class-folder tree, a TFDS dataset), the
semi-supervised split, the
teacher (= supervised baseline), then per iteration: label the unlabeled set (N shard
jobs), filter and balance, train the noised student, evaluate it on the test split. The
student becomes the next teacher. Each student also gets a compute-matched control
(labeled images only, everything else the same) evaluated beside it. Rerunning the
same command skips finished stages and resumes the unfinished one; a stage whose
settings changed reruns, with everything downstream of it, so an ablation can start from a
copy of another experiment's workdir: its report.json names the stages it took finished
from there (`reused_stages`). The report (report.json/.md/.png in the workdir) is
deleted when the driver starts and written when every stage has finished, so it never
describes other stages than the workdir's. `--print_only` lists the
stage commands without running them. The flags are `settings.ExperimentSettings`.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from data import cli
from data import config_flags
from data.records import classes
from noisy_student import settings as settings_lib
from noisy_student.experiment import driver
from noisy_student.experiment import iterate
from noisy_student.experiment import report

def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                      ) -> iterate.ExperimentConfig:
  """The experiment the parsed flags (`settings.ExperimentSettings`) describe."""
  return config_from_settings(
      config_flags.read(settings_lib.ExperimentSettings, flag_values))


def config_from_settings(s: settings_lib.ExperimentSettings) -> iterate.ExperimentConfig:
  from_records = _check_data_flags(s)
  each = iterate.per_iteration  # values[i - 1], the last one repeating; default if none
  model_lists = (s.student_widths, s.student_depths, s.student_model_names,
                 s.student_image_sizes, s.student_eval_image_sizes)
  students = tuple(iterate.ModelSpec(
      each(s.student_model_names, i, s.model_name),
      _override(each(s.student_widths, i)), _override(each(s.student_depths, i)),
      each(s.student_image_sizes, i), each(s.student_eval_image_sizes, i, 0))
      for i in range(1, max(map(len, model_lists)) + 1))
  noise = iterate.NoiseSpec("randaugment", s.randaugment_magnitude, s.randaugment_layers,
                            s.dropout_rate, s.stochastic_depth_rate)
  noise_lists = (s.student_randaugment_magnitudes, s.student_dropout_rates,
                 s.student_stochastic_depth_rates)
  student_noises = tuple(dataclasses.replace(
      noise, randaugment_magnitude=each(noise_lists[0], i, noise.randaugment_magnitude),
      dropout_rate=each(noise_lists[1], i, noise.dropout_rate),
      stochastic_depth_rate=each(noise_lists[2], i, noise.stochastic_depth_rate))
      for i in range(1, max(map(len, noise_lists)) + 1))
  num_classes = s.num_classes or data_classes(s)
  source_images = 0 if from_records else (
      s.train_source_images or _fashion_mnist_images(s))
  # Default K: the unlabeled images per class, so balancing keeps the set's size.
  images_per_class = s.images_per_class or max(
      1, (s.max_train_images or source_images) // num_classes - s.labeled_per_class)
  return iterate.ExperimentConfig(
      workdir=s.workdir, fashion_mnist_dir=s.fashion_mnist_dir,
      train_source=s.train_source, test_source=s.test_source,
      train_source_images=source_images, small_image=s.small_image,
      image_size=s.image_size, seed=s.seed,
      num_classes=num_classes, max_train_images=s.max_train_images,
      max_test_images=s.max_test_images, record_shards=s.record_shards,
      labeled_per_class=s.labeled_per_class, dev_per_class=s.dev_per_class,
      iterations=s.iterations,
      teacher=iterate.ModelSpec(s.teacher_model_name or s.model_name,
                                _override(s.teacher_width), _override(s.teacher_depth)),
      students=students, noise=noise, student_noises=student_noises,
      student_unlabeled_ratios=s.student_unlabeled_ratios,
      labeled_pattern=s.labeled_pattern, unlabeled_pattern=s.unlabeled_pattern,
      dev_pattern=s.dev_pattern, test_pattern=s.test_pattern,
      label_offset=s.label_offset, strategy=s.strategy, tpu=s.tpu,
      student_noise=s.student_noise, unlabeled_augment=s.unlabeled_augment,
      batch_size=s.batch_size, unlabeled_ratio=s.unlabeled_ratio,
      teacher_train_steps=s.teacher_train_steps,
      student_train_steps=s.student_train_steps,
      eval_every_steps=s.eval_every_steps, label_type=s.label_type,
      teacher_temperature=s.teacher_temperature, noised_teacher=s.noised_teacher,
      init_student_from_teacher=s.init_student_from_teacher,
      train_controls=s.train_controls, label_shards=s.label_shards,
      parallel_jobs=s.parallel_jobs, min_threshold=s.min_threshold,
      images_per_class=images_per_class, balancing=s.balancing,
      train_upper_bound=s.train_upper_bound,
      upper_bound_train_steps=s.upper_bound_train_steps,
      upper_bound_batch_size=s.upper_bound_batch_size,
      extra_train_flags=s.extra_train_flags)


def _override(coefficient: float | None) -> float | None:
  """A width / depth override; 0 keeps the variant's own."""
  return coefficient or None


def _check_data_flags(s: settings_lib.ExperimentSettings) -> bool:
  """Whether the data are existing TFRecords; raises on an incomplete or mixed set."""
  patterns = {"unlabeled_pattern": s.unlabeled_pattern, "test_pattern": s.test_pattern,
              "dev_pattern": s.dev_pattern}
  if not s.labeled_pattern:
    given = [name for name, value in patterns.items() if value]
    if given:
      raise ValueError(f"--{given[0]} needs --labeled_pattern (the data are either "
                       "existing TFRecords or made from --train_source/--test_source)")
    return False
  missing = [n for n in ("unlabeled_pattern", "test_pattern") if not patterns[n]]
  if missing:
    raise ValueError(f"--labeled_pattern needs --{missing[0]}")
  if s.train_upper_bound:
    raise ValueError("--train_upper_bound needs the whole labeled pool, which existing "
                     "TFRecords do not name: it runs only with --train_source")
  if not s.images_per_class:
    raise ValueError("--labeled_pattern needs --images_per_class (K of the selection; "
                     "the unlabeled set is not counted)")
  return True


def data_classes(s: settings_lib.ExperimentSettings) -> int:
  """The number of classes, read from the data (for --num_classes=0)."""
  if s.labeled_pattern:
    return classes.count_classes(f"records:{s.labeled_pattern}",
                                 label_offset=s.label_offset)
  return classes.count_classes(s.train_source)


def _fashion_mnist_images(s: settings_lib.ExperimentSettings) -> int:
  if s.train_source != "fashion_mnist:train":
    raise ValueError(f"--train_source={s.train_source}: give its size, "
                     "--train_source_images (it sets the default --images_per_class and "
                     "the all-labels bound's schedule)")
  return iterate.FASHION_MNIST_TRAIN_IMAGES


def main(argv):
  del argv
  config = config_from_flags()
  stages = iterate.plan(config)
  if flags.FLAGS.print_only:
    for stage in stages:
      print(f"# {stage.name}")
      for command in stage.commands:
        print(driver.display(command))
    return
  runner = driver.StageRunner(config.workdir)
  # A report left by an earlier run (or by the experiment this workdir was copied from)
  # must not stand for the stages about to run: it is written again when they finish.
  report.remove(config.workdir)
  for n, stage in enumerate(stages, 1):
    print(f"=== stage {n}/{len(stages)}: {stage.name}", flush=True)
    runner.run(stage)
  markers = [runner.marker(s.name) for s in stages]
  provenance = {
      "command": driver.display(("noisy_student.run",) + tuple(sys.argv[1:])),
      "git_commit": driver.git_commit(),
      # The code each stage ran with (a resumed experiment may span several commits).
      "stage_commits": sorted({m.get("git_commit") or "unrecorded" for m in markers}),
      "stage_seconds": round(sum(m.get("seconds", 0) for m in markers), 1),
      # Each stage's own time, as its marker recorded it (None: from before markers did);
      # a stage stopped and resumed counts every attempt (driver.StageRunner.run).
      "stage_times": {s.name: m.get("seconds") for s, m in zip(stages, markers)},
      # Stages taken finished from the workdir this one was copied from (their times and
      # commits above are that run's): stage name -> the workdir they ran in.
      "reused_stages": {s.name: m["workdir"] for s, m in zip(stages, markers)
                        if m.get("workdir") and not driver.same_path(m["workdir"],
                                                                     config.workdir)},
  }
  report.write(config, provenance, flags.FLAGS.results_dir)


if __name__ == "__main__":
  config_flags.define(settings_lib.ExperimentSettings)
  cli.run(main)
