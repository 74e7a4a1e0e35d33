"""Every driver flagfile parses with `noisy_student.run`'s flags and yields a plan."""
import glob
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER_COMMAND = "python -m noisy_student.run --flagfile="

# One subprocess for all files: run.py defines its flags on absl's global FLAGS.
CHECK = r"""
import sys

import pytest
from absl import flags
from data import config_flags
from noisy_student import run
from noisy_student import settings
from noisy_student.experiment import iterate
config_flags.define(settings.ExperimentSettings)
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["run", f"--flagfile={path}", "--workdir=/tmp/unused"])
  config = run.config_from_flags()
  stages = iterate.plan(config)
  print(path, config.iterations, len(stages))
"""


def _driver_flagfiles():
  files = []
  for path in sorted(glob.glob(os.path.join(REPO, "flags", "run", "*.flags"))):
    with open(path) as f:
      head = f.read().split("\n--", 1)[0]
    assert head.startswith("#")
    assert DRIVER_COMMAND + os.path.relpath(path, REPO) in head, path
    files.append(os.path.relpath(path, REPO))
  return files


def test_driver_flagfiles_parse_and_plan():
  files = _driver_flagfiles()
  assert "flags/run/fashion_mnist_demo.flags" in files and len(files) >= 7
  result = subprocess.run([sys.executable, "-c", CHECK, *files], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  iterations = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()}
  assert iterations["flags/run/fashion_mnist_demo.flags"] == 1
  assert iterations["flags/run/fashion_mnist.flags"] == 1


def test_unknown_driver_flag_is_rejected(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--flagfile=flags/run/fashion_mnist_demo.flags\n--studnet_noise\n")
  result = subprocess.run([sys.executable, "-c", CHECK, str(bad)], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode != 0 and "studnet_noise" in result.stderr


PLAN = r"""
import sys

import pytest
from absl import flags
from data import config_flags
from noisy_student import run
from noisy_student import settings
from noisy_student.experiment import driver
from noisy_student.experiment import iterate
config_flags.define(settings.ExperimentSettings)
flags.FLAGS(["run", *sys.argv[1:]])
for stage in iterate.plan(run.config_from_flags()):
  for command in stage.commands:
    print(stage.name, driver.display(command))
"""


def _plan(*args):
  result = subprocess.run([sys.executable, "-c", PLAN, *args], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.splitlines()


def test_demo_abbreviates_the_headline():
  """The demo runs the headline's stages with the same settings except the step counts
  (and the evaluation period), so what it shows is a shortened headline run."""
  demo = _plan("--flagfile=flags/run/fashion_mnist_demo.flags", "--workdir=runs/x", "--seed=1")
  headline = _plan("--flagfile=flags/run/fashion_mnist.flags", "--workdir=runs/x", "--seed=1")
  assert [l.split()[0] for l in demo] == [l.split()[0] for l in headline]
  differ = lambda a, b: sorted({x.split("=")[0] for x in set(a.split()) ^ set(b.split())})
  changed = {l.split()[0]: differ(l, h) for l, h in zip(demo, headline) if l != h}
  assert changed == {name: ["--eval_every_steps", "--train_steps"] for name in (
      "iter0/teacher", "iter1/student", "iter1/control")}
  assert "--train_steps=1000" in next(l for l in demo if l.startswith("iter1/student "))
  assert "--init_from" not in " ".join(headline)  # students start from scratch


def test_the_all_labels_bound_stretches_the_teachers_schedule_extra_flags_included():
  """The bound's warmup and decay periods are the teacher's, as it trains, scaled to the
  bound's length: an extra --warmup_epochs reaches the bound stretched, not as given."""
  from data import config_flags
  from noisy_student import settings

  def periods(*extra):
    lines = _plan("--flagfile=flags/run/fashion_mnist_all_labels.flags", "--workdir=runs/x",
                  *extra)
    parse = lambda name: config_flags.parse_args(settings.TrainSettings, shlex.split(
        next(l for l in lines if l.startswith(name + " ")))[4:])
    teacher, bound = parse("iter0/teacher"), parse("upper_bound/train")
    return (teacher.warmup_epochs, teacher.lr_decay_epochs,
            bound.warmup_epochs, bound.lr_decay_epochs)

  default = config_flags.default(settings.TrainSettings, "warmup_epochs")
  t_warm, t_decay, b_warm, b_decay = periods()
  assert t_warm == default and 0 < b_warm < t_warm
  t_warm2, t_decay2, b_warm2, b_decay2 = periods(
      "--extra_train_flags=--warmup_epochs=2,--lr_decay_epochs=1.2")
  assert (t_warm2, t_decay2) == (2.0, 1.2)
  assert b_warm2 == pytest.approx(b_warm * 2 / default, rel=1e-5)
  assert b_decay2 == pytest.approx(b_decay * 1.2 / t_decay, rel=1e-5)


def test_control_is_the_student_without_pseudo_labels():
  """The compute-matched control differs from its student only in the pseudo-labeled
  images (and its own directories): same model, initialisation, steps, noise, seed."""
  lines = _plan("--flagfile=flags/run/fashion_mnist.flags", "--workdir=runs/x", "--seed=2",
                "--iterations=3")
  import dataclasses

  from data import config_flags
  from noisy_student import settings
  parse = lambda name: config_flags.parse_args(settings.TrainSettings, shlex.split(
      next(l for l in lines if l.startswith(name + " ")))[4:])
  for i in (1,):
    student, control = parse(f"iter{i}/student"), parse(f"iter{i}/control")
    assert student.unlabeled_pattern == f"runs/x/iter{i}/selected/*.tfrecord"
    assert (student.unlabeled_ratio, student.label_type) == (3.0, "soft")
    assert control.unlabeled_pattern is None
    assert dataclasses.replace(
        student, model_dir=control.model_dir, unlabeled_pattern=None,
        unlabeled_augment=None, unlabeled_ratio=control.unlabeled_ratio) == control
  warm = _plan("--flagfile=flags/run/fashion_mnist.flags", "--workdir=runs/x", "--iterations=2",
               "--init_student_from_teacher")
  for i in (1, 2):
    init = f"--init_from=runs/x/iter{i - 1}/{'teacher' if i == 1 else 'student'}"
    assert all(init in l for l in warm if l.startswith((f"iter{i}/student ",
                                                         f"iter{i}/control ")))
  no_noise = _plan("--flagfile=flags/run/fashion_mnist_demo.flags", "--workdir=runs/x",
                   "--nostudent_noise")
  assert "--dropout_rate=0.0" in next(l for l in no_noise if l.startswith("iter1/control "))
  assert not any(l.startswith("iter1/control") for l in _plan(
      "--flagfile=flags/run/fashion_mnist_demo.flags", "--workdir=runs/x", "--notrain_controls"))


def test_temperature_is_applied_once_by_the_student():
  lines = _plan("--flagfile=flags/run/fashion_mnist.flags", "--workdir=runs/x",
                "--teacher_temperature=0.5")
  assert not any("temperature" in l for l in lines if l.startswith("iter1/label "))
  assert "--teacher_temperature=0.5" in next(l for l in lines if l.startswith("iter1/student "))
  assert "temperature" not in next(l for l in lines if l.startswith("iter1/control "))


def test_from_scratch_students_of_one_model_share_a_control():
  """A from-scratch control never sees the teacher, so iterations with the same student
  model share one; a growing student gets its own, and warm starts get one each."""
  from noisy_student.experiment import iterate
  c = iterate.ExperimentConfig(workdir="w", iterations=3, students=(
      iterate.ModelSpec(width=0.25), iterate.ModelSpec(width=0.25), iterate.ModelSpec(width=0.5)))
  names = [s.name for s in iterate.plan(c)]
  assert [n for n in names if n.endswith("/control")] == ["iter1/control", "iter3/control"]
  assert [c.control_dir(i) for i in (1, 2, 3)] == [
      "w/iter1/control", "w/iter1/control", "w/iter3/control"]
  warm = iterate.ExperimentConfig(workdir="w", iterations=2, init_student_from_teacher=True)
  assert [warm.control_dir(i) for i in (1, 2)] == ["w/iter1/control", "w/iter2/control"]


def test_existing_records_replace_the_data_stages():
  """With --labeled_pattern the plan makes no records and no split: every stage reads
  the given patterns, and a stage lists no data stage among its inputs."""
  from absl import flags

  from data import config_flags
  from noisy_student import run
  from noisy_student import settings
  from noisy_student.experiment import iterate
  fv = flags.FlagValues()
  config_flags.define(settings.ExperimentSettings, fv)
  fv(["run", "--workdir=w", "--labeled_pattern=L/*", "--unlabeled_pattern=U/*",
      "--test_pattern=T/*", "--num_classes=7", "--images_per_class=50", "--iterations=2",
      "--label_offset=1"])
  stages = iterate.plan(run.config_from_settings(config_flags.read(
      settings.ExperimentSettings, fv)))
  names = [s.name for s in stages]
  assert not any(n.startswith("data/") for n in names)
  assert all(not i.startswith("data/") for s in stages for i in s.inputs)
  text = {s.name: " ".join(" ".join(c) for c in s.commands) for s in stages}
  assert "--train_pattern=L/*" in text["iter0/teacher"]
  assert "--eval_pattern" not in text["iter0/teacher"]  # no dev set given: no dev eval
  assert "--label_offset=1" in text["iter2/student"]
  assert "--unlabeled_pattern=U/*" in text["iter1/label"]
  assert "--label_offset=1" in text["iter1/label"]
  assert "--label_offset=1" in text["iter1/select"]
  assert "--eval_pattern=T/*" in text["iter2/student_test"]
  assert "--label_offset=1" in text["iter2/student_test"]


def test_records_mode_refuses_incomplete_or_mixed_data_flags():
  from data import config_flags
  from noisy_student import run
  from noisy_student import settings
  base = ["--workdir=w", "--num_classes=3"]
  def config(*args):
    return run.config_from_settings(config_flags.parse_args(
        settings.ExperimentSettings, base + list(args)))
  records = ["--labeled_pattern=L", "--unlabeled_pattern=U", "--test_pattern=T"]
  with pytest.raises(ValueError, match="--labeled_pattern needs --test_pattern"):
    config("--labeled_pattern=L", "--unlabeled_pattern=U")
  with pytest.raises(ValueError, match="--unlabeled_pattern needs --labeled_pattern"):
    config("--unlabeled_pattern=U")
  with pytest.raises(ValueError, match="needs --images_per_class"):
    config(*records)
  with pytest.raises(ValueError, match="--train_upper_bound needs the whole labeled pool"):
    config(*records, "--images_per_class=5", "--train_upper_bound")
  assert config(*records, "--images_per_class=5").from_records


def test_models_noise_and_ratio_per_iteration():
  """A growing chain (the paper's B7 -> L2 -> L2 -> L2): model variant, input sizes,
  noise and unlabeled ratio per iteration, the last value repeating."""
  lines = _plan("--flagfile=flags/run/imagenet.flags", "--workdir=w")
  student = lambda i: next(l for l in lines if l.startswith(f"iter{i}/student "))
  teacher = next(l for l in lines if l.startswith("iter0/teacher "))
  assert "--model_name=efficientnet-b7" in teacher and "--image_size" not in teacher
  assert "--width_coefficient" not in teacher  # 0: the variant's own width
  for i, ratio in ((1, "14.0"), (2, "14.0"), (3, "28.0")):
    line = student(i)
    assert "--model_name=efficientnet-l2" in line and "--image_size=475" in line
    assert "--eval_image_size=800" in line and f"--unlabeled_ratio={ratio}" in line
    assert "--strategy=tpu --tpu=local" in line
    assert "--strategy=tpu --tpu=local" in next(
        l for l in lines if l.startswith(f"iter{i}/student_test "))
  assert not any("/control" in l for l in lines)
  noisy = _plan("--flagfile=flags/run/fashion_mnist_demo.flags", "--workdir=w",
                "--iterations=3", "--student_randaugment_magnitudes=5,9",
                "--student_dropout_rates=0.3")
  line = lambda name: next(l for l in noisy if l.startswith(name + " "))
  assert "--randaugment_magnitude=5.0" in line("iter0/teacher")
  assert "--dropout_rate=0.2" in line("iter0/teacher")
  assert "--randaugment_magnitude=5.0" in line("iter1/student")
  assert "--randaugment_magnitude=9.0" in line("iter2/student")
  assert "--randaugment_magnitude=9.0" in line("iter3/student")
  assert all("--dropout_rate=0.3" in line(f"iter{i}/student") for i in (1, 2, 3))
  # A control is the student without pseudo labels: new noise, new control.
  controls = [l.split()[0] for l in noisy if l.split()[0].endswith("/control")]
  assert controls == ["iter1/control", "iter2/control"]
  assert "--randaugment_magnitude=9.0" in line("iter2/control")
