"""Every driver flagfile parses with `noisy_student.run`'s flags and yields a plan."""
import glob
import os
import shlex
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER_COMMAND = "python -m noisy_student.run --flagfile=flags/"

# One subprocess for all files: run.py defines its flags on absl's global FLAGS.
CHECK = r"""
import sys
from absl import flags
from noisy_student import iterate, run
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["run", f"--flagfile={path}", "--workdir=/tmp/unused"])
  config = run.config_from_flags()
  stages = iterate.plan(config)
  print(path, config.iterations, len(stages))
"""


def _driver_flagfiles():
  files = []
  for path in sorted(glob.glob(os.path.join(REPO, "flags", "*.flags"))):
    with open(path) as f:
      head = f.read().split("\n--", 1)[0]
    if DRIVER_COMMAND in head:
      assert head.startswith("#")
      assert DRIVER_COMMAND + os.path.basename(path) in head, path
      files.append(os.path.relpath(path, REPO))
  return files


def test_driver_flagfiles_parse_and_plan():
  files = _driver_flagfiles()
  assert "flags/fashion_mnist_demo.flags" in files and len(files) >= 7
  result = subprocess.run([sys.executable, "-c", CHECK, *files], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  iterations = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()}
  assert iterations["flags/fashion_mnist_demo.flags"] == 1
  assert iterations["flags/fashion_mnist.flags"] == 3


def test_unknown_driver_flag_is_rejected(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--flagfile=flags/fashion_mnist_demo.flags\n--studnet_noise\n")
  result = subprocess.run([sys.executable, "-c", CHECK, str(bad)], cwd=REPO,
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode != 0 and "studnet_noise" in result.stderr


PLAN = r"""
import sys
from absl import flags
from noisy_student import driver, iterate, run
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


def test_headline_continues_the_demo():
  """The headline's first iteration is the demo, command for command, so a finished demo
  workdir is a valid start of a headline workdir; the headline adds iterations 2 and 3
  and the all-labels bound at its own step count."""
  demo = _plan("--flagfile=flags/fashion_mnist_demo.flags", "--workdir=runs/x", "--seed=1")
  headline = _plan("--flagfile=flags/fashion_mnist.flags", "--workdir=runs/x", "--seed=1")
  bound = [line for line in headline if line.startswith("upper_bound/")]
  assert [line for line in headline if line not in bound][:len(demo)] == demo
  assert {line.split()[0] for line in headline[len(demo) + len(bound):]} == {
      f"iter{i}/{s}" for i in (2, 3)
      for s in ("label", "select", "student", "student_test", "control", "control_test")}
  assert "--train_steps=3250" in bound[0] and "--train_batch_size=256" in bound[0]
  assert "--train_pattern=runs/x/data/records/train-*" in bound[0]
  # 900 of 60,000 images labeled; 3,250 x 256 bound images vs 1,000 x 64 teacher images:
  # the teacher's schedule stretched 13x (5 and 2.4 epochs * 900/60000 * 13).
  assert "--warmup_epochs=0.975 --lr_decay_epochs=0.468" in bound[0]
  assert "--init_from=runs/x/iter2/student" in next(
      line for line in headline if line.startswith("iter3/student "))


def test_driver_schedule_constants_are_the_trainers_defaults():
  from absl import flags
  from noisy_student import iterate
  from noisy_student import train
  fv = train.define_flags(flags.FlagValues())
  assert fv["warmup_epochs"].default == iterate.WARMUP_EPOCHS
  assert fv["lr_decay_epochs"].default == iterate.LR_DECAY_EPOCHS


def test_control_is_the_student_without_pseudo_labels():
  """The compute-matched control differs from its student only in the pseudo-labeled
  images (and its own directories): same model, initialisation, steps, noise, seed."""
  lines = _plan("--flagfile=flags/fashion_mnist.flags", "--workdir=runs/x", "--seed=2")
  command = lambda name: shlex.split(next(l for l in lines if l.startswith(name + " ")))[1:]
  for i in (1, 2, 3):
    student, control = command(f"iter{i}/student"), command(f"iter{i}/control")
    pseudo = {a for a in student if a.split("=")[0] in (
        "--unlabeled_pattern", "--unlabeled_ratio", "--label_type", "--unlabeled_augment")}
    assert len(pseudo) == 4
    assert [a for a in student if a not in pseudo] == [
        a.replace(f"iter{i}/control", f"iter{i}/student") for a in control]
    assert f"--init_from=runs/x/iter{i - 1}/{'teacher' if i == 1 else 'student'}" in control
  no_noise = _plan("--flagfile=flags/fashion_mnist_demo.flags", "--workdir=runs/x",
                   "--nostudent_noise")
  assert "--dropout_rate=0.0" in next(l for l in no_noise if l.startswith("iter1/control "))
  assert not any(l.startswith("iter1/control") for l in _plan(
      "--flagfile=flags/fashion_mnist_demo.flags", "--workdir=runs/x", "--notrain_controls"))
