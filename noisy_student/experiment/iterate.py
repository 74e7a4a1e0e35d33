"""The whole method as a list of stages: data, teacher, then K x (label, select, student).

Paper Sec. 2 / Algorithm 1, with the iterations of Sec. 3.1 (the student becomes the next
teacher, optionally growing). The test split is only ever evaluated, never used to pick
anything: the trainer's periodic evaluation runs on a dev split held out from the labels.

The data are any image source of `data.make_tfrecords` (Fashion-MNIST's IDX files by
default, a class-folder tree, a TFDS dataset): its training pool is split into labeled,
dev and unlabeled images, its test split only evaluates. Or they are existing TFRecords
(`labeled_pattern`, `unlabeled_pattern`, `dev_pattern`, `test_pattern`, e.g. ImageNet
and a large unlabeled set on gs://): then there are no data stages.

Layout of `workdir`:
  data/records/{train,test}-*.tfrecord      the train and test sources as TFRecords
  data/split/{labeled,dev,unlabeled}-*      the semi-supervised split (labels of
                                            `unlabeled` hidden)
  iter0/teacher/                            supervised baseline = first teacher
  iterK/{predictions,selected,student}/     pseudo labels, filtered+balanced set, student
  iterK/control/                            the student's compute-matched control: same
                                            model, initialisation, steps, schedule, noise
                                            and labeled batch, no pseudo-labeled images
                                            (from-scratch students of one model share the
                                            first such iteration's control)
  */test/                                   test-set evaluation of that model
  report.{md,json,png}
"""

from __future__ import annotations

import dataclasses
import os

from data import config_flags
from noisy_student import settings as settings_lib
from noisy_student.experiment import driver

FASHION_MNIST_TRAIN_IMAGES = 60000


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model variant, with optional width / depth overrides (None: the variant's own)."""
  name: str = "efficientnet-b0"
  width: float | None = 0.25
  depth: float | None = 0.5
  image_size: int | None = None  # None: the experiment's --image_size; 0: the variant's
  eval_image_size: int = 0  # 0: the training size


@dataclasses.dataclass(frozen=True)
class NoiseSpec:
  augment: str = "randaugment"  # randaugment | standard (crop, flip) | none
  randaugment_magnitude: float = 5.0
  randaugment_layers: int = 2
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2


NO_NOISE = NoiseSpec(augment="none", randaugment_magnitude=0.0, randaugment_layers=0, dropout_rate=0.0,
                     stochastic_depth_rate=0.0)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Everything that defines one Noisy Student experiment."""
  workdir: str
  fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
  train_source: str = "fashion_mnist:train"  # data.make_tfrecords --source
  test_source: str = "fashion_mnist:test"
  train_source_images: int = FASHION_MNIST_TRAIN_IMAGES  # images in train_source
  small_image: bool = True
  seed: int = 0
  num_classes: int = 10
  image_size: int = 32
  record_shards: int = 4
  max_train_images: int = 0  # 0: all of train_source; smaller for smoke runs
  max_test_images: int = 0  # 0: all 10,000
  labeled_per_class: int = 100
  dev_per_class: int = 10
  iterations: int = 3
  teacher: ModelSpec = ModelSpec()
  students: tuple[ModelSpec, ...] = (ModelSpec(),)  # per iteration; the last repeats
  noise: NoiseSpec = NoiseSpec()  # the teacher's, and the students' unless below
  student_noises: tuple[NoiseSpec, ...] = ()  # per iteration; the last repeats
  student_unlabeled_ratios: tuple[float, ...] = ()  # likewise; default unlabeled_ratio
  # Existing TFRecords instead of the sources (no data stages); see the module docstring.
  labeled_pattern: str | None = None
  unlabeled_pattern: str | None = None
  dev_pattern: str | None = None
  test_pattern: str | None = None
  label_offset: int = 0
  strategy: str = "auto"
  tpu: str | None = None
  student_noise: bool = True
  unlabeled_augment: str = "randaugment"
  batch_size: int = 64
  unlabeled_ratio: float = 3.0
  teacher_train_steps: int = 1000
  student_train_steps: int = 2000
  eval_every_steps: int = 500
  label_type: str = "soft"
  teacher_temperature: float = 1.0
  noised_teacher: bool = False
  init_student_from_teacher: bool = False
  train_controls: bool = True
  label_shards: int = 2
  parallel_jobs: int = 2
  min_threshold: float = 0.3
  images_per_class: int = 0  # 0: as many as the unlabeled set has per class on average
  balancing: str = "down_up"  # noisy_student.select --balancing
  train_upper_bound: bool = False
  upper_bound_train_steps: int = 0  # 0: student_train_steps
  upper_bound_batch_size: int = 0  # 0: batch_size
  extra_train_flags: tuple[str, ...] = ()

  @property
  def num_labeled(self) -> int:
    """Labeled training images (the dev split excluded)."""
    return (self.labeled_per_class - self.dev_per_class) * self.num_classes

  @property
  def num_train_images(self) -> int:
    return self.max_train_images or self.train_source_images

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def student(self, iteration: int) -> ModelSpec:
    return per_iteration(self.students, iteration)

  def student_noise_spec(self, iteration: int) -> NoiseSpec:
    """The student's noise in `iteration` (none with student_noise off)."""
    if not self.student_noise:
      return NO_NOISE
    return per_iteration(self.student_noises, iteration, self.noise)

  def student_unlabeled_ratio(self, iteration: int) -> float:
    return per_iteration(self.student_unlabeled_ratios, iteration, self.unlabeled_ratio)

  @property
  def from_records(self) -> bool:
    """The data are existing TFRecords: no records or split stages."""
    return bool(self.labeled_pattern)

  def data(self, kind: str) -> str | None:
    """The pattern of one data set: labeled, unlabeled, dev or test."""
    if self.from_records:
      return getattr(self, f"{kind}_pattern")
    folder = ("data", "records") if kind == "test" else ("data", "split")
    return f"{self.path(*folder)}/{kind}-*"

  def data_stage(self, kind: str) -> tuple[str, ...]:
    """The stage that writes one data set (none for existing TFRecords)."""
    if self.from_records:
      return ()
    return ("data/records_test",) if kind == "test" else ("data/split",)

  def model_dir(self, iteration: int) -> str:
    """The teacher of iteration i+1 is the model trained in iteration i."""
    return self.path("iter0", "teacher") if iteration == 0 else self.path(
        f"iter{iteration}", "student")

  def control_iteration(self, iteration: int) -> int:
    """The iteration whose control serves `iteration`'s student.

    A control sees no pseudo labels, so a from-scratch control depends only on the
    student's model: one control serves every iteration with the same student model.
    A warm-started control starts from that iteration's teacher and is its own.
    """
    if self.init_student_from_teacher:
      return iteration
    same = lambda j: (self.student(j), self.student_noise_spec(j))
    return next(j for j in range(1, iteration + 1) if same(j) == same(iteration))

  def control_dir(self, iteration: int) -> str:
    return self.path(f"iter{self.control_iteration(iteration)}", "control")


def per_iteration(values: tuple, iteration: int, default=None):
  """values[iteration - 1], the last value for later iterations, `default` if empty."""
  if not values:
    return default
  return values[min(iteration, len(values)) - 1]


def model_stage(iteration: int) -> str:
  """Name of the stage that trains `model_dir(iteration)`."""
  return "iter0/teacher" if iteration == 0 else f"iter{iteration}/student"


def data_stages(c: ExperimentConfig) -> list[driver.Stage]:
  if c.from_records:
    return []
  records = c.path("data", "records")
  source = {"train": c.train_source, "test": c.test_source}
  make = lambda split, limit: (
      "data.make_tfrecords", f"--source={source[split]}",
      f"--fashion_mnist_dir={c.fashion_mnist_dir}", f"--output_dir={records}",
      f"--split_name={split}", f"--num_shards={c.record_shards}", f"--seed={c.seed}",
      f"--max_examples={limit}")
  outputs = lambda split: (f"{records}/{split}-*", f"{records}/{split}_summary.json")
  return [
      driver.Stage("data/records_train", (make("train", c.max_train_images),),
                   outputs=outputs("train")),
      driver.Stage("data/records_test", (make("test", c.max_test_images),),
                   outputs=outputs("test")),
      driver.Stage("data/split", ((
          "data.split", f"--input_pattern={records}/train-*",
          f"--output_dir={c.path('data', 'split')}",
          # The dev split is held out of the N labels, so N labels are used in all.
          f"--labeled_per_class={c.labeled_per_class - c.dev_per_class}",
          f"--dev_per_class={c.dev_per_class}", f"--num_shards={c.record_shards}",
          f"--seed={c.seed}"),), inputs=("data/records_train",),
          outputs=(c.path("data", "split"),)),
  ]


def _command(module: str, settings) -> tuple[str, ...]:
  return (module, *config_flags.to_args(settings))


def _with_extra_flags(c: ExperimentConfig, settings: settings_lib.TrainSettings
                      ) -> settings_lib.TrainSettings:
  """`settings` with --extra_train_flags applied (parsed here, so a mistyped one fails
  before any stage runs)."""
  if not c.extra_train_flags:
    return settings
  args = config_flags.to_args(settings) + list(c.extra_train_flags)
  return config_flags.parse_args(settings_lib.TrainSettings, args)


def _train_command(c: ExperimentConfig, settings: settings_lib.TrainSettings
                   ) -> tuple[str, ...]:
  """`python -m noisy_student.train` arguments of `settings` plus --extra_train_flags."""
  return _command("noisy_student.train", _with_extra_flags(c, settings))


def _train_settings(c: ExperimentConfig, model_dir: str, model: ModelSpec,
                    noise: NoiseSpec, steps: int, train_pattern: str, batch_size: int = 0,
                    **changes) -> settings_lib.TrainSettings:
  """One model's training: this experiment's data, model, noise and schedule."""
  image_size = c.image_size if model.image_size is None else model.image_size
  return settings_lib.TrainSettings(
      model_dir=model_dir, train_pattern=train_pattern, eval_pattern=c.data("dev"),
      num_classes=c.num_classes, label_offset=c.label_offset, strategy=c.strategy,
      tpu=c.tpu, image_size=image_size, eval_image_size=model.eval_image_size,
      small_image=c.small_image, model_name=model.name,
      width_coefficient=model.width, depth_coefficient=model.depth,
      train_batch_size=batch_size or c.batch_size, train_steps=steps,
      eval_every_steps=c.eval_every_steps, augment=noise.augment,
      randaugment_magnitude=noise.randaugment_magnitude,
      randaugment_layers=noise.randaugment_layers, dropout_rate=noise.dropout_rate,
      stochastic_depth_rate=noise.stochastic_depth_rate, seed=c.seed, **changes)


def test_dir(model_dir: str) -> str:
  """Where a model's clean test-set evaluation (results.json) goes."""
  return os.path.join(model_dir, "test")


def _train_stage(name: str, command: tuple[str, ...], model_dir: str,
                 inputs: tuple[str, ...]) -> driver.Stage:
  return driver.Stage(name, (command,), inputs=inputs, outputs=(model_dir,))


def _test_stage(c: ExperimentConfig, name: str, model_dir: str,
                train_stage: str) -> driver.Stage:
  """A model's clean test-set evaluation."""
  settings = settings_lib.EvalSettings(
      model=model_dir, suite="clean", output_dir=test_dir(model_dir),
      eval_pattern=c.data("test"), label_offset=c.label_offset, strategy=c.strategy,
      tpu=c.tpu)
  return driver.Stage(name, (_command("noisy_student.evaluate", settings),),
                      inputs=(train_stage,) + c.data_stage("test"),
                      outputs=(test_dir(model_dir),))


def teacher_stages(c: ExperimentConfig) -> list[driver.Stage]:
  teacher = c.model_dir(0)
  return [
      _train_stage("iter0/teacher", _train_command(c, _train_settings(
          c, teacher, c.teacher, c.noise, c.teacher_train_steps, c.data("labeled"))),
          teacher, c.data_stage("labeled")),
      _test_stage(c, "iter0/teacher_test", teacher, "iter0/teacher"),
  ]


def upper_bound_stages(c: ExperimentConfig) -> list[driver.Stage]:
  """The teacher recipe on all training labels (none unless --train_upper_bound)."""
  if not c.train_upper_bound:
    return []
  # The bound follows the teacher's schedule stretched over its own length: the
  # trainer counts warmup and decay in epochs of its labeled set, which are
  # num_train_images / num_labeled times longer on all the labels, so the periods are
  # scaled back to the teacher's, then stretched by the ratio of training images seen.
  # (Unstretched, the 0.97 decay every ~34 steps leaves a long bound no learning rate.)
  # Everything is read from the two trainings as they run, --extra_train_flags included
  # (an extra --warmup_epochs is stretched too, not passed on as it is; an extra
  # --num_labeled_examples sets both epochs).
  teacher = _with_extra_flags(c, _train_settings(
      c, c.model_dir(0), c.teacher, c.noise, c.teacher_train_steps, c.data("labeled")))
  bound_dir = c.path("upper_bound")
  bound = _with_extra_flags(c, _train_settings(
      c, bound_dir, c.teacher, c.noise, c.upper_bound_train_steps or c.student_train_steps,
      f"{c.path('data', 'records')}/train-*", c.upper_bound_batch_size or c.batch_size))
  stretch = (bound.train_steps * bound.train_batch_size
             / (teacher.train_steps * teacher.train_batch_size))
  scale = ((teacher.num_labeled_examples or c.num_labeled)
           / (bound.num_labeled_examples or c.num_train_images) * stretch)
  return [
      # The stretched periods go in after the extra flags, which cannot undo them.
      _train_stage("upper_bound/train", _command("noisy_student.train", dataclasses.replace(
          bound, warmup_epochs=float(f"{teacher.warmup_epochs * scale:.6g}"),
          lr_decay_epochs=float(f"{teacher.lr_decay_epochs * scale:.6g}"))),
          bound_dir, ("data/records_train", "data/split")),
      _test_stage(c, "upper_bound/test", bound_dir, "upper_bound/train"),
  ]


def iteration_stages(c: ExperimentConfig, i: int) -> list[driver.Stage]:
  """Label with the previous model, select, train the student and its control, test."""
  teacher, student = c.model_dir(i - 1), c.model_dir(i)
  predictions, selected = c.path(f"iter{i}", "predictions"), c.path(f"iter{i}", "selected")
  label = tuple(_command("noisy_student.label", settings_lib.LabelSettings(
      teacher=teacher, unlabeled_pattern=c.data("unlabeled"),
      output_dir=predictions, shard_index=str(s), num_shards=c.label_shards,
      num_classes=c.num_classes, label_offset=c.label_offset, noised=c.noised_teacher,
      strategy=c.strategy, tpu=c.tpu))
      for s in range(c.label_shards))
  select = tuple(_command("noisy_student.select", settings_lib.SelectSettings(
      predictions_dir=predictions, output_dir=selected, min_threshold=c.min_threshold,
      images_per_class=c.images_per_class, seed=c.seed + i, shard_index=str(s),
      num_shards=c.label_shards, balancing=c.balancing, label_offset=c.label_offset))
      for s in range(c.label_shards))
  pseudo_labeled = dict(
      unlabeled_pattern=f"{selected}/*.tfrecord",
      unlabeled_ratio=c.student_unlabeled_ratio(i),
      label_type=c.label_type, teacher_temperature=c.teacher_temperature,
      unlabeled_augment=c.unlabeled_augment if c.student_noise else "none")
  stages = [
      driver.Stage(f"iter{i}/label", label, parallel=c.parallel_jobs,
                   inputs=(model_stage(i - 1),) + c.data_stage("unlabeled"),
                   outputs=(predictions,)),
      driver.Stage(f"iter{i}/select", select, parallel=c.parallel_jobs,
                   inputs=(f"iter{i}/label",), outputs=(selected,)),
      _train_stage(f"iter{i}/student", _student_command(c, i, student, pseudo_labeled),
                   student, _student_inputs(c, i) + (f"iter{i}/select",)),
      _test_stage(c, f"iter{i}/student_test", student, f"iter{i}/student"),
  ]
  if c.train_controls and c.control_iteration(i) == i:
    control = c.control_dir(i)
    stages += [
        _train_stage(f"iter{i}/control", _student_command(c, i, control),
                     control, _student_inputs(c, i)),
        _test_stage(c, f"iter{i}/control_test", control, f"iter{i}/control"),
    ]
  return stages


def _student_command(c: ExperimentConfig, i: int, model_dir: str,
                     pseudo_labeled: dict | None = None) -> tuple[str, ...]:
  """The student's training command; without `pseudo_labeled`, its control's.

  One function for both, so the control differs from the student only in the
  pseudo-labeled images: same model, initialisation, steps, schedule (in labeled
  epochs), noise on the labeled images, labeled batch and seed.
  """
  init = {"init_from": c.model_dir(i - 1)} if c.init_student_from_teacher else {}
  return _train_command(c, _train_settings(
      c, model_dir, c.student(i), c.student_noise_spec(i), c.student_train_steps,
      c.data("labeled"), **(pseudo_labeled or {}), **init))


def _student_inputs(c: ExperimentConfig, i: int) -> tuple[str, ...]:
  return c.data_stage("labeled") + (
      (model_stage(i - 1),) if c.init_student_from_teacher else ())


def plan(c: ExperimentConfig) -> list[driver.Stage]:
  """Every stage in running order; the all-labels bound, which nothing reads, comes last."""
  stages = data_stages(c) + teacher_stages(c)
  for i in range(1, c.iterations + 1):
    stages += iteration_stages(c, i)
  return stages + upper_bound_stages(c)
