"""The entry module: flagfiles, resolved configuration, bad inputs, end-to-end runs."""

import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from noisy_student import train
from noisy_student.common import model_io
from noisy_student.training import task as task_lib
from tests.noisy_student.records import write_records

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER_COMMAND = "python -m noisy_student.run"


def _runs_the_trainer(path: str) -> bool:
  """Driver flagfiles (tests/noisy_student/test_run_flags.py) are checked there."""
  with open(path) as f:
    return DRIVER_COMMAND not in f.read().split("\n--", 1)[0]


FLAGFILES = sorted(glob.glob(os.path.join(REPO, "flags", "train", "*.flags")))


def test_flagfiles_live_in_the_folder_of_the_command_that_reads_them():
  everything = glob.glob(os.path.join(REPO, "flags", "**", "*.flags"), recursive=True)
  assert sorted(p for p in everything if os.path.dirname(p).endswith("train")) == FLAGFILES
  assert all(_runs_the_trainer(p) for p in FLAGFILES)
  for p in everything:
    assert os.path.basename(os.path.dirname(p)) in ("run", "train"), p
    assert _runs_the_trainer(p) == p.endswith(os.path.join("train", os.path.basename(p))), p


def parse(*args) -> flags.FlagValues:
  fv = train.define_flags(flags.FlagValues())
  fv(["noisy_student.train", *args])
  return fv


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_parses_with_the_trainer_flags(path, monkeypatch):
  monkeypatch.chdir(REPO)  # Nested --flagfile paths are relative to the repository.
  fv = parse(f"--flagfile={path}", "--model_dir=/tmp/unused")
  assert fv.train_pattern
  with open(path) as f:
    head = f.read().split("\n--", 1)[0]
  assert head.startswith("#"), "a flagfile starts with a comment"
  if not path.endswith("_common.flags"):
    assert "python -m noisy_student.train --flagfile=" + os.path.relpath(path, REPO) in head
    assert "Expect" in head


def test_unknown_flags_are_rejected(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("# typo\n--unlabelled_ratio=3\n")
  with pytest.raises(flags.Error, match="unlabelled_ratio"):
    parse(f"--flagfile={bad}", "--model_dir=/tmp/unused", "--train_pattern=x")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  d = tmp_path_factory.mktemp("records")
  for i in range(2):
    write_records(str(d / f"lab-{i}.tfrecord"), 24, seed=i)
  write_records(str(d / "dev-0.tfrecord"), 12, seed=5)
  write_records(str(d / "unl-0.tfrecord"), 32, seed=6, labeled=False, pseudo=True)
  write_records(str(d / "raw-0.tfrecord"), 32, seed=7, labeled=False)
  write_records(str(d / "onebased-0.tfrecord"), 8, seed=8, label_shift=1)
  return d


TINY = ("--num_classes=4", "--image_size=16", "--small_image", "--width_coefficient=0.25",
        "--depth_coefficient=0.25", "--train_batch_size=4", "--eval_batch_size=8",
        "--steps_per_loop=2", "--randaugment_magnitude=5")


def config(records, model_dir, *args):
  fv = parse(f"--model_dir={model_dir}", f"--train_pattern={records}/lab-*", *TINY, *args)
  return train.config_from_flags(fv), fv


def test_resolved_configuration(records, tmp_path):
  c, _ = config(records, tmp_path, "--train_epochs=3", "--final_base_lr=0.0002",
                "--warmup_epochs=1")
  assert c.task.num_labeled_examples == 48  # counted
  assert c.trainer.train_steps == 36  # 3 epochs of 48 / 4
  s = c.trainer.schedule
  assert s.steps_per_epoch == 12 and s.scaled_lr == pytest.approx(0.016 * 4 / 256)
  assert s.decay_epochs == pytest.approx(2 / (__import__("math").log(0.0002 / 0.016)
                                              / __import__("math").log(0.97)))
  assert c.task.preprocess_mode == "small" and c.task.unlabeled_augment == "randaugment"
  fv = parse("--model_dir=x", "--train_pattern=y", "--model_name=efficientnet-l2")
  fv.num_labeled_examples, fv.train_steps = 10, 1
  l2 = train.config_from_flags(fv)
  assert (l2.task.image_size, l2.task.eval_image_size) == (475, 800)
  with pytest.raises(ValueError, match="train_steps or --train_epochs"):
    config(records, tmp_path)


@pytest.mark.parametrize("args, message", [
    (("--train_batch_size=0",), "--train_batch_size must be >= 1, got 0"),
    (("--eval_batch_size=-2",), "--eval_batch_size must be >= 1, got -2"),
    (("--unlabeled_ratio=-1",), "--unlabeled_ratio must be >= 0, got -1.0"),
    (("--max_bad_records=-1",), "--max_bad_records must be >= 0, got -1"),
    (("--train_pattern=/nonexistent/train-*",), "no files match '/nonexistent/train-\\*'"),
    (("--train_pattern=",), "no files match ''"),
    (("--eval_pattern=/nonexistent/dev-*",), "no files match '/nonexistent/dev-\\*'"),
    (("--num_classes=3",), "outside \\[0, 3\\).*num_classes"),
    (("--train_pattern={r}/onebased-*",), "label 4 outside \\[0, 4\\).*label_offset"),
    (("--train_pattern={r}/unl-*",), "label -1 outside.*unlabeled record"),
    (("--unlabeled_ratio=3",), "unlabeled_ratio=3.0 needs unlabeled data"),
    (("--unlabeled_pattern={r}/unl-*",), "unlabeled_ratio is 0"),
    (("--unlabeled_pattern={r}/raw-*", "--unlabeled_ratio=1"), "without pseudo labels"),
    (("--unlabeled_pattern={r}/nothing-*", "--unlabeled_ratio=1"), "no files match"),
    (("--teacher={r}", "--unlabeled_pattern={r}/raw-*", "--unlabeled_ratio=1"),
     "no model at"),
])
def test_bad_inputs_fail_before_training(records, tmp_path, args, message):
  args = [a.format(r=records) for a in args]
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    c, _ = config(records, tmp_path, "--train_steps=2", *args)
    task_lib.ClassificationTask(c.task).validate()
  assert not (tmp_path / "ckpt").exists()


def test_unfinished_selection_is_refused(records, tmp_path):
  """Selected files next to a selection.json that is not complete (shards still running,
  or the cross-shard check failed) are not trained on; complete, they are."""
  selected = tmp_path / "selected"
  selected.mkdir()
  write_records(str(selected / "selected-00000-of-00001.tfrecord"), 8, seed=6,
                labeled=False, pseudo=True)
  (selected / "selection.json").write_text(json.dumps({"complete": False}))
  c, _ = config(records, tmp_path / "m", "--train_steps=2", "--unlabeled_ratio=1",
                f"--unlabeled_pattern={selected}/selected-*")
  with pytest.raises(ValueError, match="selection.json: the selection .* not complete"):
    task_lib.ClassificationTask(c.task).validate()
  (selected / "selection.json").write_text(json.dumps({"complete": True}))
  task_lib.ClassificationTask(c.task).validate()


def test_entry_reports_bad_input_and_exits(records, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "noisy_student.train", f"--model_dir={tmp_path}",
       f"--train_pattern={records}/lab-*", "--unlabeled_ratio=2", "--train_steps=1", *TINY],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO))
  assert proc.returncode == 2
  assert "noisy_student.train: error: unlabeled_ratio=2.0 needs unlabeled data" in proc.stderr
  assert not os.listdir(tmp_path)


def test_teacher_then_offline_student(records, tmp_path):
  """A tiny EfficientNet teacher, then a student on pseudo-labeled data warm-started from it."""
  teacher_dir = tmp_path / "teacher"
  c, fv = config(records, teacher_dir, "--train_steps=4", f"--eval_pattern={records}/dev-*",
                 "--eval_every_steps=2", "--checkpoint_every_steps=2")
  result = task_lib.run(c, flags_text=train.resolved_flags(fv))
  assert result["step"] == 4 and result["num_examples"] == 12
  names = set(os.listdir(teacher_dir))
  assert {"flags.txt", "config.json", "ckpt", "train", "eval", "eval_metrics.json",
          "eval_history.json", "model.keras", "model_config.json"} <= names
  flags_txt = (teacher_dir / "flags.txt").read_text()
  assert "--train_steps=4\n" in flags_txt and "--loss_weighting=official\n" in flags_txt
  resolved = json.loads((teacher_dir / "config.json").read_text())
  assert resolved["trainer"]["train_steps"] == 4
  assert resolved["task"]["loss"]["weighting"] == "official"
  _, model_config = model_io.load_model(str(teacher_dir))
  assert model_config["preprocess_mode"] == "small" and model_config["image_size"] == 16
  from tests.noisy_student.test_trainer import _image_summaries
  images = _image_summaries(teacher_dir / "train")  # The first batch, as the model saw it.
  assert list(images) == ["input/labeled"]
  assert images["input/labeled"][1] == [b"16", b"16"] and len(images["input/labeled"][2]) == 4

  student_dir = tmp_path / "student"
  c, _ = config(records, student_dir, "--train_steps=2", f"--unlabeled_pattern={records}/unl-*",
                "--unlabeled_ratio=2", "--label_type=hard", "--unlabeled_augment=none",
                f"--init_from={teacher_dir}")
  assert c.task.unlabeled_batch_size == 8
  assert task_lib.run(c) is None  # no eval split
  assert (student_dir / "model.keras").exists()
  images = _image_summaries(student_dir / "train")
  assert sorted(images) == ["input/labeled", "input/unlabeled"]
  assert [len(images[k][2]) for k in sorted(images)] == [4, 8]


@pytest.mark.slow
def test_online_teacher(records, tmp_path):
  teacher_dir = tmp_path / "teacher"
  c, _ = config(records, teacher_dir, "--train_steps=2")
  task_lib.run(c)
  c, _ = config(records, tmp_path / "student", "--train_steps=2",
                f"--unlabeled_pattern={records}/raw-*", "--unlabeled_ratio=1",
                f"--teacher={teacher_dir}", "--teacher_temperature=2")
  task_lib.run(c)
  assert (tmp_path / "student" / "model.keras").exists()


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_weights(records, tmp_path):
  """SIGKILL `python -m noisy_student.train` after its first checkpoint, rerun it: the
  deterministic run ends at the same step with the same weights as an uninterrupted one."""
  import signal
  import time

  import numpy as np

  def command(model_dir):
    return [sys.executable, "-m", "noisy_student.train", f"--model_dir={model_dir}",
            f"--train_pattern={records}/lab-*", f"--unlabeled_pattern={records}/unl-*",
            "--unlabeled_ratio=1", "--deterministic", "--train_steps=8",
            "--checkpoint_every_steps=2", "--dropout_rate=0.3", *TINY]

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  subprocess.run(command(tmp_path / "whole"), check=True, cwd=REPO, env=env, timeout=600,
                 capture_output=True)
  killed = tmp_path / "killed"
  proc = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (killed / "ckpt" / "ckpt-2.index").exists():
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "model.keras").exists()
  subprocess.run(command(killed), check=True, cwd=REPO, env=env, timeout=600,
                 capture_output=True)
  a, _ = model_io.load_model(str(tmp_path / "whole"))
  b, config = model_io.load_model(str(killed))
  assert config["train_steps"] == 8
  for x, y in zip(a.get_weights(), b.get_weights()):
    np.testing.assert_array_equal(x, y)


# Flags named differently from the config field they set.
_FIELD_OF_FLAG = {"loss_weighting": "weighting", "lr_schedule": "kind",
                  "base_learning_rate": "base_lr", "lr_decay_epochs": "decay_epochs",
                  "lr_decay_factor": "decay_factor"}


def test_every_flag_default_is_its_config_default():
  """One default per setting: a flag's default is the default of the field it sets."""
  import dataclasses

  from data.input.preprocessing import PreprocessConfig
  from noisy_student.training import losses
  from noisy_student.training import optimization
  from noisy_student.training import trainer
  fv = parse("--model_dir=x", "--train_pattern=y")
  classes = (task_lib.TaskConfig, trainer.TrainerConfig, losses.LossConfig,
             optimization.ScheduleConfig, PreprocessConfig)
  checked = set()
  for cls in classes:
    for field in dataclasses.fields(cls):
      names = [n for n in train.FLAG_NAMES if _FIELD_OF_FLAG.get(n, n) == field.name]
      if not names or field.default is dataclasses.MISSING:
        continue
      flag_default = fv[names[0]].default
      if isinstance(flag_default, list):  # A list flag (tuple field); only () so far.
        flag_default = tuple(flag_default)
      if flag_default is None or field.default is None:
        continue  # "Unset": the variant's value, or derived from other flags.
      assert flag_default == field.default, (names[0], cls.__name__)
      checked.add(names[0])
  assert {"randaugment_magnitude", "randaugment_layers", "flip", "weight_decay",
          "label_smoothing", "steps_per_loop"} <= checked


def _bad_records_dir(root):
  """4 good files (what validation reads) and a 5th with an undecodable PNG, a record
  that is not an Example and a label outside [0, 4) among good records."""
  import tensorflow as tf

  from data.records import schema
  for i in range(4):
    write_records(str(root / f"lab-{i}.tfrecord"), 8, seed=i)
  good = os.path.join(root, "good.tfrecord")
  write_records(good, 6, seed=9)
  rows = list(tf.data.TFRecordDataset(good).as_numpy_iterator())
  os.remove(good)
  png = tf.io.encode_png(tf.zeros([16, 16, 3], tf.uint8)).numpy()
  with tf.io.TFRecordWriter(str(root / "lab-4.tfrecord")) as w:
    for row in rows[:2] + [
        schema.make_example(schema.image_features(png[:20], "bad/png", 1)).SerializeToString(),
        b"not an Example",
        schema.make_example(schema.image_features(png, "bad/label", 7)).SerializeToString(),
    ] + rows[2:]:
      w.write(row)
  return root


def test_training_skips_bad_records_past_the_checked_ones(tmp_path, capsys):
  data = _bad_records_dir(tmp_path / "data")
  c, _ = config(data, tmp_path / "run", "--train_steps=12", "--steps_per_loop=12",
                "--deterministic")
  task_lib.run(c)  # 12 steps of 4 = one pass over the 38 good records and then some.
  import re
  skipped = re.findall(r"(\d+) bad records skipped", capsys.readouterr().out)
  assert skipped and int(skipped[-1]) in (3, 6)
  c, _ = config(data, tmp_path / "limited", "--train_steps=12", "--max_bad_records=2")
  with pytest.raises(ValueError, match="more than max_bad_records=2"):
    task_lib.run(c)


def test_truncated_training_file_is_named(tmp_path):
  data = _bad_records_dir(tmp_path / "data")
  broken = data / "lab-4.tfrecord"
  broken.write_bytes(broken.read_bytes()[:-30])
  with pytest.raises(ValueError, match=f"{broken}: truncated record at"):
    config(data, tmp_path / "run", "--train_steps=12")  # Counting the records finds it.
  c, _ = config(data, tmp_path / "run", "--train_steps=12", "--num_labeled_examples=41")
  with pytest.raises(ValueError, match=f"{broken}: truncated record at"):
    task_lib.run(c)  # So does training.


def _records_by_file(root, name, num_files, *, pseudo=False):
  """File j holds 4 records of (pseudo) label j, so a batch tells which files it read."""
  import numpy as np
  import tensorflow as tf

  from data.records import schema
  png = tf.io.encode_png(tf.fill([16, 16, 3], tf.constant(90, tf.uint8))).numpy()
  for j in range(num_files):
    with tf.io.TFRecordWriter(str(root / f"{name}-{j:05d}.tfrecord")) as w:
      for i in range(4):
        features = schema.image_features(png, f"{name}{j}-{i}",
                                         schema.UNLABELED if pseudo else j)
        if pseudo:
          features.update(schema.pseudo_features(np.eye(4)[j] * 0.7 + 0.075))
        w.write(schema.make_example(features).SerializeToString())


def test_each_input_pipeline_reads_its_own_files(tmp_path):
  """Pod slices: a host's pipeline (InputContext: 2 pipelines, this one id 1, 4 replicas)
  reads files 1 and 3 of every pattern and builds per-replica batches: 8 / 4 labeled
  and 16 / 4 unlabeled training rows, 8 / 4 evaluation rows."""
  import numpy as np
  import tensorflow as tf
  _records_by_file(tmp_path, "lab", 4)
  _records_by_file(tmp_path, "unl", 4, pseudo=True)
  c, _ = config(tmp_path, tmp_path / "run", "--train_steps=1", "--train_batch_size=8",
                f"--unlabeled_pattern={tmp_path}/unl-*", "--unlabeled_ratio=2",
                f"--eval_pattern={tmp_path}/lab-*", "--shuffle_buffer=4")
  task = task_lib.ClassificationTask(c.task)
  seen = {}
  for pipeline_id in (0, 1):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                     num_replicas_in_sync=4)
    labeled, unlabeled = [], []
    for batch in task.train_dataset(ctx, seed=0).take(8):
      assert batch["image"].shape == (2 + 4, 16, 16, 3)
      assert batch["is_unlabeled"].numpy().tolist() == [0, 0, 1, 1, 1, 1]
      labeled += batch["label"].numpy()[:2].tolist()
      unlabeled += np.argmax(batch["target"].numpy()[2:], -1).tolist()
    evaluated = []
    for batch in task.eval_dataset(ctx):
      assert batch["image"].shape[0] == 2
      evaluated += batch["label"].numpy()[batch["mask"].numpy() > 0].tolist()
    seen[pipeline_id] = (set(labeled), set(unlabeled), sorted(evaluated))
  assert seen[1] == ({1, 3}, {1, 3}, [1] * 4 + [3] * 4)
  assert seen[0] == ({0, 2}, {0, 2}, [0] * 4 + [2] * 4)
