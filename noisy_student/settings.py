"""The settings of each command, one frozen dataclass per stage (its flags are made from it).

`python -m noisy_student.train` defines its flags from `TrainSettings`, label and select
from `LabelSettings` / `SelectSettings` (`data.config_flags`); the experiment driver builds
the same objects and writes them as flagfiles. So a setting's name, type, default and help
live here once. Names are shared across commands: `*_pattern` for TFRecord globs,
`eval_batch_size` for every inference batch, `num_shards` / `shard_index` for parallel
jobs, `num_output_shards` for output files, `teacher_temperature` for the softmax T.
The official code's flag names are aliases (docs/flags.md has the table).

Defaults that a library config also holds are read from it (`config_flags.default`), so that the
library and the command line cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from data import config_flags
from data.config_flags import setting
from data.input import pipeline
from data.records import shards
from noisy_student import evaluate
from noisy_student.common import strategy as strategy_lib
from noisy_student.labeling import labeller
from noisy_student.training import losses
from noisy_student.training import optimization
from noisy_student.training import task as task_lib
from noisy_student.training import trainer as trainer_lib

AUGMENTS = ("randaugment", "standard", "none")
PREPROCESS_MODES = ("imagenet", "small")
OPTIMIZERS = ("rmsprop", "momentum", "sgd")  # optimization.build_optimizer's names
SCHEDULES = ("exponential", "cosine", "constant")  # optimization.learning_rate_at's kinds


def _task(field):
  return config_flags.default(task_lib.TaskConfig, field)


def _trainer(field):
  return config_flags.default(trainer_lib.TrainerConfig, field)


def _loss(field):
  return config_flags.default(losses.LossConfig, field)


def _schedule(field):
  return config_flags.default(optimization.ScheduleConfig, field)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """`noisy_student.train`: a teacher, or a student with pseudo-labeled images."""
  # Output and run.
  model_dir: str = setting(None, "Output directory; rerunning resumes from it.",
                           required=True)
  strategy: str = setting(
      "auto", "tf.distribute strategy; auto: TPU if reachable, else all GPUs, else the "
      "multi-worker cluster in TF_CONFIG, else the CPU.",
      choices=strategy_lib.STRATEGIES)
  tpu: str | None = setting(None, "TPU name or grpc:// address (implies --strategy=tpu "
                            "under auto); 'local' on a TPU VM.")
  precision: str = setting(
      _trainer("precision"), "bfloat16 (TPU) or float16 (GPU, with dynamic loss scaling) "
      "mixed precision; logits, losses and variables stay float32.",
      choices=trainer_lib.PRECISIONS)
  steps_per_loop: int = setting(_trainer("steps_per_loop"),
                                "Steps per host call (and per progress line).",
                                aliases=["iterations_per_loop"], operational=True)
  checkpoint_every_steps: int = setting(_trainer("checkpoint_every_steps"),
                                        "Checkpoint period (and at the end).",
                                        aliases=["save_checkpoints_steps"], operational=True)
  keep_checkpoints: int = setting(_trainer("keep_checkpoints"), "Checkpoints kept.",
                                  aliases=["keep_checkpoint_max"], operational=True)
  eval_every_steps: int = setting(_trainer("eval_every_steps"),
                                  "Evaluation period (EMA weights); 0: at the end only.",
                                  aliases=["steps_per_eval"])
  max_eval_batches: int = setting(_trainer("max_eval_batches"),
                                  "Evaluate on at most this many batches (0: all).")
  data_position: str = setting(
      _trainer("data_position"), "Where a resumed run restarts its input: 'skip' replays "
      "it and drops the consumed batches (exact with --deterministic; redoes their "
      "preprocessing); 'epoch' restarts at the labeled epoch in progress and a fresh "
      "unlabeled pass (cheap; ImageNet-size data).", choices=trainer_lib.DATA_POSITIONS)
  seed: int = setting(0, "Seed of weights, noise and input order.")
  deterministic: bool = setting(False, "TF op determinism and a fixed input order "
                                "(bit-reproducible; slower).")
  summary_images: int = setting(
      _trainer("summary_images"), "Images of the first training batch, labeled and "
      "unlabeled, written to TensorBoard (train/, input/*) as noised as the model sees "
      "them; 0: none.")
  profile_steps: tuple[int, ...] = setting(
      _trainer("profile_steps"), "FIRST,LAST (or one step): trace these training steps "
      "with the TensorFlow profiler (TensorBoard's Profile tab); empty: off.",
      operational=True)
  profile_dir: str = setting(_trainer("profile_dir"), "Where the profile goes; empty: "
                             "MODEL_DIR/profile.", operational=True)

  # Model.
  model_name: str = setting(_task("model_name"), "efficientnet-b0 .. b8, efficientnet-l2.")
  width_coefficient: float | None = setting(None, "Overrides the variant's width.")
  depth_coefficient: float | None = setting(None, "Overrides the variant's depth.")
  small_image: bool = setting(False, "32x32 variant (block groups 2, 3 with stride 1).",
                              aliases=["small_image_model"])
  image_size: int = setting(0, "Training input size; 0: the variant's training size.",
                            aliases=["input_image_size"])
  eval_image_size: int = setting(0, "Evaluation / export input size; 0: --image_size.")
  num_classes: int = setting(1000, "Number of classes.", aliases=["num_label_classes"])
  dropout_rate: float | None = setting(None, "Head dropout (noise); default: the "
                                       "variant's.")
  stochastic_depth_rate: float = setting(_task("stochastic_depth_rate"),
                                         "Maximum stochastic-depth rate (noise).")
  sync_batch_norm: bool = setting(_task("sync_batch_norm"),
                                  "Batch statistics across replicas.")

  # Data.
  train_pattern: str = setting(None, "Labeled training TFRecords (glob, comma-separated, "
                               "or a directory).", required=True,
                               aliases=["label_data_dir"])
  eval_pattern: str | None = setting(None, "Evaluation TFRecords; none: no evaluation.")
  unlabeled_pattern: str | None = setting(
      None, "Unlabeled TFRecords: pseudo-labeled (offline) or raw (with --teacher).",
      aliases=["unlabel_data_dir"])
  label_offset: int = setting(_task("label_offset"),
                              "Subtracted from stored labels (1: ImageNet TPU files).")
  train_batch_size: int = setting(_task("train_batch_size"),
                                  "LABELED images per step (global).")
  eval_batch_size: int = setting(_task("eval_batch_size"), "Evaluation batch (global).")
  num_labeled_examples: int = setting(
      0, "Labeled set size (defines epochs); 0: counted from --train_pattern.")
  preprocess_mode: str | None = setting(
      None, "Input path; default: small with --small_image, else imagenet.",
      choices=PREPROCESS_MODES)
  augment: str = setting(_task("augment"), "Input noise of labeled images: randaugment, "
                         "standard (crop + flip), none.", choices=AUGMENTS)
  unlabeled_augment: str | None = setting(
      None, "Input noise of unlabeled images only (default: --augment); 'none' is the "
      "paper's ablation without noise on unlabeled images.", choices=AUGMENTS)
  randaugment_magnitude: float = setting(_task("randaugment_magnitude"),
                                         "RandAugment magnitude M (official scale).",
                                         aliases=["randaug_mag"])
  randaugment_layers: int = setting(_task("randaugment_layers"),
                                    "RandAugment ops per image N.",
                                    aliases=["randaug_layer"])
  flip: bool = setting(_task("flip"), "Random horizontal flips (off for digits, e.g. "
                       "SVHN).")
  shuffle_buffer: int = setting(_task("shuffle_buffer"), "Records per shuffle buffer.")
  max_bad_records: int = setting(
      _task("max_bad_records"), "Training records that do not decode, or whose label is "
      "out of range, are skipped and counted; more than this many in one input stream "
      "stop the run.")

  # Student.
  unlabeled_ratio: float = setting(_loss("unlabeled_ratio"), "r: unlabeled images per "
                                   "labeled image in a batch.", aliases=["unlabel_ratio"])
  label_type: str = setting(_loss("label_type"), "Pseudo labels: soft (teacher "
                            "distribution) or hard (one-hot argmax, smoothed like labels).",
                            choices=losses.LABEL_TYPES)
  teacher_temperature: float = setting(
      _loss("teacher_temperature"), "Soft labels: online softmax(z / T); offline "
      "p^(1/T) renormalised (stored labels are at T = 1).",
      aliases=["teacher_softmax_temp"])
  loss_weighting: str = setting(
      _loss("weighting"), "official: mean labeled CE + r * mean unlabeled CE (released "
      "code); mean: the plain mean over the concatenated batch (what the paper's Sec. 3 "
      "text says).", choices=losses.WEIGHTINGS)
  teacher: str | None = setting(None, "Online mode: frozen teacher model_dir labelling "
                                "clean copies of the unlabeled images in-graph.",
                                aliases=["teacher_model_path"])
  freeze_until: str = setting("", "FixRes fine-tuning: freeze every layer before the "
                              "first whose name starts with this prefix (e.g. block6).")
  init_from: str | None = setting(None, "Warm start (paper Study #8): a model_dir / "
                                  ".keras file or a trainer checkpoint (its EMA weights).",
                                  aliases=["init_model_path"])

  # Optimisation (official defaults).
  train_steps: int = setting(0, "Total steps; 0: from --train_epochs.")
  train_epochs: float = setting(0.0, "Total labeled epochs (if --train_steps is 0).")
  optimizer: str = setting(_trainer("optimizer"), "rmsprop: official (rho 0.9, momentum "
                           "0.9, eps 1e-3, slots start at 1).",
                           choices=OPTIMIZERS)
  base_learning_rate: float = setting(_schedule("base_lr"),
                                      "Learning rate per 256 labeled images.")
  final_base_lr: float | None = setting(
      None, "Solve the decay period so training ends at this base learning rate "
      "(official SVHN: 2e-4); overrides --lr_decay_epochs.")
  lr_schedule: str = setting(_schedule("kind"), "After warmup: exponential staircase "
                             "(official), cosine or constant.",
                             choices=SCHEDULES)
  warmup_epochs: float = setting(_schedule("warmup_epochs"),
                                 "Linear warmup, labeled epochs.")
  lr_decay_epochs: float = setting(_schedule("decay_epochs"),
                                   "Staircase period in labeled epochs (4.8 for 700).")
  lr_decay_factor: float = setting(_schedule("decay_factor"), "Staircase factor.")
  weight_decay: float = setting(_trainer("weight_decay"),
                                "L2 on non-BN weights: wd * sum(v^2) / 2.")
  label_smoothing: float = setting(_loss("label_smoothing"),
                                   "Label smoothing of labels and hard pseudo labels.")
  moving_average_decay: float = setting(_trainer("moving_average_decay"),
                                        "EMA decay (num_updates warmup); 0 disables the "
                                        "EMA.")

  @property
  def pseudo_labeled(self) -> bool:
    """Whether this run is a student (it reads pseudo-labeled or raw unlabeled images)."""
    return bool(self.unlabeled_pattern)


@dataclasses.dataclass(frozen=True)
class LabelSettings:
  """`noisy_student.label`: one shard of the un-noised teacher's pseudo labels."""
  teacher: str = setting(None, "Teacher model_dir or .keras file.", required=True,
                         aliases=["teacher_model_path"])
  unlabeled_pattern: str = setting(None, "Unlabeled TFRecords (glob, comma-separated, "
                                   "or a directory).", required=True,
                                   aliases=["input_pattern", "unlabel_data_dir"])
  output_dir: str = setting(None, "Where to write.", required=True)
  shard_index: str = setting("0", shards.SHARD_INDEX_HELP)
  num_shards: int = setting(1, "Number of labelling jobs.")
  eval_batch_size: int = setting(64, "Images per teacher call (global).",
                                 aliases=["batch_size"])
  teacher_temperature: float = setting(
      1.0, "Only 1 is accepted: labels are stored at T = 1; sharpen with "
      "noisy_student.train --teacher_temperature.", aliases=["temperature"])
  soft_label_top_k: int = setting(0, "Store only the k most probable classes (0: the "
                                  "full vector).")
  storage: str = setting("float32", "Precision of the stored full soft-label vector.",
                         choices=labeller.STORAGES)
  num_classes: int | None = setting(None, "Expected class count; a teacher with another "
                                    "is an error.", aliases=["num_label_classes"])
  label_offset: int = setting(0, "1 for ImageNet TPU TFRecords.")
  noised: bool = setting(False, "Ablation: keep dropout and stochastic depth on while "
                         "labelling (not reproducible).")
  strategy: str = setting("auto", "tf.distribute strategy, one host (multi_worker is "
                          "refused: use --num_shards).", choices=strategy_lib.STRATEGIES)
  tpu: str | None = setting(None, "TPU name or address (strategy tpu/auto).")


# --balancing: (balance, upsample) of selection.SelectionConfig.
BALANCINGS = {"down_up": (True, True), "down": (True, False), "none": (False, True)}


@dataclasses.dataclass(frozen=True)
class SelectSettings:
  """`noisy_student.select`: filter and balance the pseudo labels (paper Sec. 3.1)."""
  predictions_dir: str = setting(
      None, "Labelling output directory, or a glob of its prediction TFRecords (their "
      "stats files must lie beside them).", required=True, aliases=["predictions"])
  output_dir: str = setting(None, "Where to write.", required=True)
  min_threshold: float = setting(0.3, "Lowest confidence threshold (multiple of 0.01).")
  images_per_class: int | None = setting(
      None, "K, target images per class (required unless --balancing=none).")
  balancing: str = setting(
      "down_up", "down_up: classes above K keep about K of their most confident images (those "
      "at or above the class threshold, each with probability K / their count), classes "
      "below are duplicated up to K (official); down: no duplication (copy factor "
      "capped at 1); none: a plain filter, confidence >= min_threshold, one copy each.",
      choices=BALANCINGS)
  seed: int = setting(0, "Seeds stochastic rounding and the shuffle.")
  shard_index: str = setting("0", shards.SHARD_INDEX_HELP)
  num_shards: int = setting(1, "Number of pass-2 jobs.")
  num_output_shards: int = setting(1, "Output files per job (files in all: num_shards "
                                   "* this).")
  shuffle_buffer: int = setting(10000, "Records held for the output shuffle (bounds "
                                "memory).")
  plan_only: bool = setting(False, "Pass 1 only: write selection.json and selection.png.")
  label_offset: int = setting(0, "Subtracted from the hidden labels, for samples.png's "
                              "right/wrong frames only: 1 for ImageNet TPU TFRecords.")

  @property
  def balance(self) -> bool:
    return BALANCINGS[self.balancing][0]

  @property
  def upsample(self) -> bool:
    return BALANCINGS[self.balancing][1]


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
  """`noisy_student.run`: the whole method on Fashion-MNIST (noisy_student/experiment/iterate.py)."""
  workdir: str = setting(None, "Where every stage writes its outputs.", required=True)
  fashion_mnist_dir: str = setting("/usr/share/datasets/fashion-mnist",
                                   "Directory with the four Fashion-MNIST IDX files.")
  train_source: str = setting(
      "fashion_mnist:train", "The pool split into labeled, dev and unlabeled images: "
      "fashion_mnist:train, folder:PATH (PATH/<class>/<image>) or tfds:NAME/SPLIT "
      "(data.make_tfrecords --source).")
  test_source: str = setting("fashion_mnist:test", "The test images, likewise; only "
                             "ever evaluated.")
  train_source_images: int = setting(
      0, "Images in --train_source (0: Fashion-MNIST's 60,000); sets the default "
      "--images_per_class and the all-labels bound's schedule.")
  labeled_pattern: str | None = setting(
      None, "Existing labeled TFRecords (data/records/schema.py's format, glob or "
      "comma-separated globs): the teacher's training set. With it the driver makes no "
      "records and no split: --unlabeled_pattern and --test_pattern name the other "
      "sets, --dev_pattern the optional dev set, and the --*_source flags are unused.")
  unlabeled_pattern: str | None = setting(
      None, "With --labeled_pattern: the unlabeled TFRecords the teachers label.")
  dev_pattern: str | None = setting(
      None, "With --labeled_pattern: the dev TFRecords evaluated during training (none: "
      "no evaluation during training).")
  test_pattern: str | None = setting(
      None, "With --labeled_pattern: the test TFRecords every model is evaluated on.")
  label_offset: int = setting(0, "Subtracted from stored labels: 1 for the 1-based "
                              "ImageNet TFRecords of the TPU conversion script.")
  num_classes: int = setting(0, "Classes of the data; 0: read from the data (10 for "
                             "Fashion-MNIST, the class folders of folder:PATH, TFDS's "
                             "label feature, or the labels of --labeled_pattern).",
                             aliases=["num_label_classes"])
  image_size: int = setting(32, "Training and evaluation input side; 0: each model "
                            "variant's own (efficientnet/config.py).")
  small_image: bool = setting(True, "The 32x32 EfficientNet variant (block groups 2, 3 "
                              "with stride 1) for every model.")
  seed: int = setting(0, "Seed of the split, the training runs and the selection.")
  max_train_images: int = setting(0, "Use a seeded subset of the 60,000 training images "
                                  "(0: all).")
  max_test_images: int = setting(0, "Likewise for the 10,000 test images.")
  record_shards: int = setting(4, "TFRecord shards per split.")
  labeled_per_class: int = setting(100, "Labeled training images per class.")
  dev_per_class: int = setting(10, "Of those, held out per class as the dev split "
                               "(evaluation during training); the test split is never "
                               "used to choose anything.")
  iterations: int = setting(3, "Noisy Student iterations after the first teacher.")
  model_name: str = setting("efficientnet-b0", "Base EfficientNet variant.")
  teacher_width: float = setting(0.25, "Width coefficient of the first teacher.")
  teacher_depth: float = setting(0.5, "Depth coefficient of the first teacher.")
  student_widths: tuple[float, ...] = setting(
      (0.25,), "Width coefficient of the student per iteration (the last repeats); "
      "growing values reproduce the paper's growing students.")
  student_depths: tuple[float, ...] = setting(
      (0.5,), "Depth coefficient per iteration, likewise.")
  teacher_model_name: str | None = setting(None, "Variant of the first teacher; default: "
                                           "--model_name.")
  student_model_names: tuple[str, ...] = setting(
      (), "Variant of the student per iteration (the last repeats), e.g. efficientnet-l2; "
      "default: --model_name. With a named variant, give --student_widths=0 and "
      "--student_depths=0 to keep its own width and depth.")
  student_image_sizes: tuple[int, ...] = setting(
      (), "Training input side of the student per iteration (the last repeats; 0: the "
      "variant's own); default: --image_size.")
  student_eval_image_sizes: tuple[int, ...] = setting(
      (), "Evaluation input side of the student per iteration (0: its training side).")
  student_randaugment_magnitudes: tuple[float, ...] = setting(
      (), "The student's RandAugment magnitude per iteration (the last repeats); "
      "default: --randaugment_magnitude.")
  student_dropout_rates: tuple[float, ...] = setting(
      (), "The student's head dropout per iteration; default: --dropout_rate.")
  student_stochastic_depth_rates: tuple[float, ...] = setting(
      (), "The student's stochastic depth per iteration; default: "
      "--stochastic_depth_rate.")
  student_unlabeled_ratios: tuple[float, ...] = setting(
      (), "Unlabeled images per labeled image per iteration (paper Table 7's L2 "
      "iterations: 14, 14, 28); default: --unlabeled_ratio.")
  strategy: str = setting("auto", "Distribution strategy of every training, labelling "
                          "and evaluation job (noisy_student.train --strategy).",
                          choices=strategy_lib.STRATEGIES)
  tpu: str | None = setting(None, "TPU of those jobs (noisy_student.train --tpu), e.g. "
                            "local on a TPU VM.")
  batch_size: int = setting(64, "Labeled images per training step.",
                            aliases=["train_batch_size"])
  unlabeled_ratio: float = setting(3.0, "Unlabeled images per labeled image in a batch.",
                                   aliases=["unlabel_ratio"])
  teacher_train_steps: int = setting(1000, "Training steps of the first teacher.")
  student_train_steps: int = setting(2000, "Training steps of each student.")
  eval_every_steps: int = setting(500, "Dev-set evaluation period.")
  randaugment_magnitude: float = setting(5.0, "RandAugment magnitude (official scale).",
                                         aliases=["randaug_mag"])
  randaugment_layers: int = setting(2, "RandAugment ops per image.",
                                    aliases=["randaug_layer"])
  dropout_rate: float = setting(0.2, "Head dropout of teacher and student.")
  stochastic_depth_rate: float = setting(0.2, "Maximum stochastic-depth drop rate.")
  student_noise: bool = setting(True, "Noise the student (ablation: --nostudent_noise "
                                "trains it un-noised).")
  unlabeled_augment: str = setting("randaugment", "Augmentation of the unlabeled images "
                                   "only (paper's ablation).", choices=AUGMENTS)
  label_type: str = setting("soft", "Pseudo-label type.", choices=losses.LABEL_TYPES)
  teacher_temperature: float = setting(
      1.0, "Softmax temperature of soft pseudo labels, applied once, by the student's "
      "loss; labelling and selection use the teacher's T = 1 distribution, as the "
      "official code does.", aliases=["teacher_softmax_temp"])
  noised_teacher: bool = setting(False, "Ablation: the teacher labels with its model "
                                 "noise on (dropout and stochastic depth; the images "
                                 "stay clean) instead of un-noised.")
  init_student_from_teacher: bool = setting(False, "Warm-start each student from its "
                                            "teacher (paper Study #8).")
  train_controls: bool = setting(
      True, "Also train each student's compute-matched control: the same model, "
      "initialisation, steps, schedule, noise and labeled batch on the labeled images "
      "alone, so a student's gain is measured against extra training without pseudo "
      "labels (--notrain_controls skips them).")
  label_shards: int = setting(2, "Labelling / selection jobs per iteration.")
  parallel_jobs: int = setting(2, "How many of those jobs run at once here.")
  min_threshold: float = setting(0.3, "Lowest confidence threshold of the selection.")
  images_per_class: int = setting(0, "Pseudo-labeled images per class after balancing "
                                  "(0: the unlabeled set's size / num_classes).")
  balancing: str = setting("down_up", "Class balancing of the selection (noisy_student."
                           "select --balancing; ablation: none).", choices=BALANCINGS)
  train_upper_bound: bool = setting(False, "Also train the teacher architecture on all "
                                    "training labels.")
  upper_bound_train_steps: int = setting(0, "Training steps of that upper bound (0: "
                                         "--student_train_steps).")
  upper_bound_batch_size: int = setting(
      0, "Its images per step (0: --batch_size); the learning rate scales with it as "
      "the trainer's does, and its schedule stretches to its length.")
  extra_train_flags: tuple[str, ...] = setting((), "More flags for every "
                                               "noisy_student.train run (the all-labels "
                                               "bound's warmup and decay periods are "
                                               "stretched from the teacher's).")
  print_only: bool = setting(False, "Print the stage commands and exit.")
  results_dir: str | None = setting(
      None, "Also copy report.{json,md,png} here when the run is complete, e.g. "
      "results/<experiment>/seed<N> (the README's tables are printed from these files "
      "by noisy_student.summarize).")


# `noisy_student.evaluate`: its settings are its library config (noisy_student/evaluate.py).
EvalSettings = evaluate.EvalConfig


# The commands whose flags are made from a settings class (the driver keys its stages
# on these settings and runs them from flagfiles).
COMMANDS = {"noisy_student.train": TrainSettings, "noisy_student.label": LabelSettings,
            "noisy_student.select": SelectSettings,
            "noisy_student.evaluate": EvalSettings}
