r"""Runs the whole Noisy Student method end to end (paper Algorithm 1 with iterations).

  python -m noisy_student.run --flagfile=flags/fashion_mnist_demo.flags --workdir=runs/demo

Stages: TFRecords from the Fashion-MNIST IDX files, the semi-supervised split, the
teacher (= supervised baseline), then per iteration: label the unlabeled set (N shard
jobs), filter and balance, train the noised student, evaluate it on the test split. The
student becomes the next teacher. Each student also gets a compute-matched control
(labeled images only, everything else the same) evaluated beside it. Rerunning the
same command skips finished stages and resumes the unfinished one; a stage whose
settings changed reruns, with everything downstream of it. `--print_only` lists the
stage commands without running them.
"""

from __future__ import annotations

import sys

from absl import flags

from data import cli
from noisy_student import driver
from noisy_student import iterate
from noisy_student import report

F = flags
F.DEFINE_string("workdir", None, "Where every stage writes its outputs.", required=True)
F.DEFINE_string("fashion_mnist_dir", "/usr/share/datasets/fashion-mnist",
                "Directory with the four Fashion-MNIST IDX files.")
F.DEFINE_integer("seed", 0, "Seed of the split, the training runs and the selection.")
F.DEFINE_integer("max_train_images", 0,
                 "Use a seeded subset of the 60,000 training images (0: all).")
F.DEFINE_integer("max_test_images", 0, "Likewise for the 10,000 test images.")
F.DEFINE_integer("record_shards", 4, "TFRecord shards per split.")
F.DEFINE_integer("labeled_per_class", 100, "Labeled training images per class.")
F.DEFINE_integer("dev_per_class", 10,
                 "Of those, held out per class as the dev split (evaluation during "
                 "training); the test split is never used to choose anything.")
F.DEFINE_integer("iterations", 3, "Noisy Student iterations after the first teacher.")
F.DEFINE_string("model_name", "efficientnet-b0", "Base EfficientNet variant.")
F.DEFINE_float("teacher_width", 0.25, "Width coefficient of the first teacher.")
F.DEFINE_float("teacher_depth", 0.5, "Depth coefficient of the first teacher.")
F.DEFINE_list("student_widths", ["0.25"],
              "Width coefficient of the student per iteration (the last repeats); "
              "growing values reproduce the paper's growing students.")
F.DEFINE_list("student_depths", ["0.5"], "Depth coefficient per iteration, likewise.")
F.DEFINE_integer("batch_size", 64, "Labeled images per training step.")
F.DEFINE_float("unlabeled_ratio", 3.0, "Unlabeled images per labeled image in a batch.")
F.DEFINE_integer("teacher_train_steps", 1000, "Training steps of the first teacher.")
F.DEFINE_integer("student_train_steps", 2000, "Training steps of each student.")
F.DEFINE_integer("eval_every_steps", 500, "Dev-set evaluation period.")
F.DEFINE_float("randaugment_magnitude", 5.0, "RandAugment magnitude (official scale).")
F.DEFINE_integer("randaugment_layers", 2, "RandAugment ops per image.")
F.DEFINE_float("dropout_rate", 0.2, "Head dropout of teacher and student.")
F.DEFINE_float("stochastic_depth_rate", 0.2, "Maximum stochastic-depth drop rate.")
F.DEFINE_bool("student_noise", True,
              "Noise the student (ablation: --nostudent_noise trains it un-noised).")
F.DEFINE_enum("unlabeled_augment", "randaugment", ["randaugment", "standard", "none"],
              "Augmentation of the unlabeled images only (paper's ablation).")
F.DEFINE_enum("label_type", "soft", ["soft", "hard"], "Pseudo-label type.")
F.DEFINE_float("teacher_temperature", 1.0,
               "Softmax temperature of soft pseudo labels, applied once, by the "
               "student's loss; labelling and selection use the teacher's T = 1 "
               "distribution, as the official code does.")
F.DEFINE_bool("noised_teacher", False,
              "Ablation: the teacher labels with its model noise on (dropout and "
              "stochastic depth; the images stay clean) instead of un-noised.")
F.DEFINE_bool("init_student_from_teacher", False,
              "Warm-start each student from its teacher (paper Study #8).")
F.DEFINE_bool("train_controls", True,
              "Also train each student's compute-matched control: the same model, "
              "initialisation, steps, schedule, noise and labeled batch on the labeled "
              "images alone, so a student's gain is measured against extra training "
              "without pseudo labels (--notrain_controls skips them).")
F.DEFINE_integer("label_shards", 2, "Labelling / selection jobs per iteration.")
F.DEFINE_integer("parallel_jobs", 2, "How many of those jobs run at once here.")
F.DEFINE_float("min_threshold", 0.3, "Lowest confidence threshold of the selection.")
F.DEFINE_integer("images_per_class", 0,
                 "Pseudo-labeled images per class after balancing (0: the unlabeled "
                 "set's size / num_classes).")
F.DEFINE_bool("balance", True, "Balance classes (ablation: --nobalance).")
F.DEFINE_bool("upsample", True, "Duplicate images of under-represented classes.")
F.DEFINE_bool("train_upper_bound", False,
              "Also train the teacher architecture on all training labels.")
F.DEFINE_integer("upper_bound_train_steps", 0,
                 "Training steps of that upper bound (0: --student_train_steps).")
F.DEFINE_integer("upper_bound_batch_size", 0,
                 "Its images per step (0: --batch_size); the learning rate scales with "
                 "it as the trainer's does, and its schedule stretches to its length.")
F.DEFINE_list("extra_train_flags", [], "More flags for every noisy_student.train run.")
F.DEFINE_bool("print_only", False, "Print the stage commands and exit.")
F.DEFINE_string("results_dir", None,
                "Also copy report.{json,md,png} here when the run is complete, e.g. "
                "results/<experiment>/seed<N> (the README's tables are printed from "
                "these files by noisy_student.summarize).")
FLAGS = F.FLAGS

NUM_CLASSES = 10


def config_from_flags() -> iterate.ExperimentConfig:
  widths = [float(w) for w in FLAGS.student_widths]
  depths = [float(d) for d in FLAGS.student_depths]
  depths += depths[-1:] * (len(widths) - len(depths))
  widths += widths[-1:] * (len(depths) - len(widths))
  # Default K: the unlabeled images per class, so balancing keeps the set's size.
  train_images = FLAGS.max_train_images or iterate.FASHION_MNIST_TRAIN_IMAGES
  images_per_class = FLAGS.images_per_class or max(
      1, train_images // NUM_CLASSES - FLAGS.labeled_per_class)
  return iterate.ExperimentConfig(
      workdir=FLAGS.workdir, fashion_mnist_dir=FLAGS.fashion_mnist_dir, seed=FLAGS.seed,
      num_classes=NUM_CLASSES, max_train_images=FLAGS.max_train_images,
      max_test_images=FLAGS.max_test_images, record_shards=FLAGS.record_shards,
      labeled_per_class=FLAGS.labeled_per_class, dev_per_class=FLAGS.dev_per_class,
      iterations=FLAGS.iterations,
      teacher=iterate.ModelSpec(FLAGS.model_name, FLAGS.teacher_width, FLAGS.teacher_depth),
      students=tuple(iterate.ModelSpec(FLAGS.model_name, w, d) for w, d in zip(widths, depths)),
      noise=iterate.NoiseSpec("randaugment", FLAGS.randaugment_magnitude, FLAGS.randaugment_layers,
                              FLAGS.dropout_rate, FLAGS.stochastic_depth_rate),
      student_noise=FLAGS.student_noise, unlabeled_augment=FLAGS.unlabeled_augment,
      batch_size=FLAGS.batch_size, unlabeled_ratio=FLAGS.unlabeled_ratio,
      teacher_train_steps=FLAGS.teacher_train_steps,
      student_train_steps=FLAGS.student_train_steps,
      eval_every_steps=FLAGS.eval_every_steps, label_type=FLAGS.label_type,
      teacher_temperature=FLAGS.teacher_temperature, noised_teacher=FLAGS.noised_teacher,
      init_student_from_teacher=FLAGS.init_student_from_teacher,
      train_controls=FLAGS.train_controls,
      label_shards=FLAGS.label_shards, parallel_jobs=FLAGS.parallel_jobs,
      min_threshold=FLAGS.min_threshold, images_per_class=images_per_class,
      balance=FLAGS.balance, upsample=FLAGS.upsample,
      train_upper_bound=FLAGS.train_upper_bound,
      upper_bound_train_steps=FLAGS.upper_bound_train_steps,
      upper_bound_batch_size=FLAGS.upper_bound_batch_size,
      extra_train_flags=tuple(FLAGS.extra_train_flags))


def main(argv):
  del argv
  config = config_from_flags()
  stages = iterate.plan(config)
  if FLAGS.print_only:
    for stage in stages:
      print(f"# {stage.name}")
      for command in stage.commands:
        print(driver.display(command))
    return
  runner = driver.StageRunner(config.workdir)
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
  }
  report.write(config, provenance, FLAGS.results_dir)


if __name__ == "__main__":
  cli.run(main)
