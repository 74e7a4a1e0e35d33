"""Smoke run of the whole driver on a few hundred real Fashion-MNIST images.

Two iterations of a tiny model, a few steps each: checks that every stage leaves its
outputs and marker, that the counts agree from stage to stage, and that rerunning the
same command skips every finished stage; a copied workdir with a changed setting reruns
what the change reaches and names the stages it reused.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from noisy_student.experiment import iterate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FMNIST = "/usr/share/datasets/fashion-mnist"
TRAIN, TEST, LABELED, DEV = 400, 100, 6, 2

pytestmark = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                reason="needs the dataset-fashion-mnist package")


def _run(workdir, *more, check=True):
  argv = [sys.executable, "-m", "noisy_student.run", f"--workdir={workdir}",
          f"--max_train_images={TRAIN}", f"--max_test_images={TEST}",
          f"--labeled_per_class={LABELED}", f"--dev_per_class={DEV}", "--iterations=2",
          "--teacher_width=0.1", "--teacher_depth=0.1", "--student_widths=0.1,0.15",
          "--student_depths=0.1", "--batch_size=8", "--unlabeled_ratio=2",
          "--teacher_train_steps=6", "--student_train_steps=6", "--eval_every_steps=0",
          "--record_shards=2", "--label_shards=2", "--images_per_class=20",
          "--min_threshold=0",  # A 6-step teacher is never confident.
          "--extra_train_flags=--steps_per_loop=3,--eval_batch_size=32", *more]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  if check:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout if check else result


def _json(path):
  with open(path) as f:
    return json.load(f)


def _count(pattern):
  import tensorflow as tf
  return sum(1 for f in glob.glob(pattern) for _ in tf.data.TFRecordDataset(f))


def test_driver_smoke_run_and_resume(tmp_path):
  workdir = str(tmp_path / "work")
  first = _run(workdir)
  # The run's models (a growing student, so each iteration has its own control).
  config = iterate.ExperimentConfig(workdir=workdir, iterations=2, students=(
      iterate.ModelSpec(width=0.1, depth=0.1), iterate.ModelSpec(width=0.15, depth=0.1)))
  stages = [s.name for s in iterate.plan(config)]
  for name in stages:
    assert os.path.exists(os.path.join(workdir, ".stages", name.replace("/", "__") + ".json"))
    assert f"[{name}] starting" in first

  split = _json(os.path.join(workdir, "data", "split", "split_summary.json"))
  assert _count(f"{workdir}/data/split/labeled-*") == 10 * (LABELED - DEV)
  assert _count(f"{workdir}/data/split/dev-*") == 10 * DEV
  unlabeled = _count(f"{workdir}/data/split/unlabeled-*")
  assert unlabeled == TRAIN - 10 * LABELED, split
  assert _count(f"{workdir}/data/records/test-*") == TEST

  for i in (1, 2):
    stats = [_json(p) for p in glob.glob(f"{workdir}/iter{i}/predictions/stats-*.json")]
    assert len(stats) == 2
    assert sum(s["num_images"] for s in stats) == unlabeled
    assert _count(f"{workdir}/iter{i}/predictions/*.tfrecord") == unlabeled
    selection = _json(f"{workdir}/iter{i}/selected/selection.json")
    assert selection["complete"]
    assert _count(f"{workdir}/iter{i}/selected/*.tfrecord") == selection["total_written"]
    assert os.path.exists(f"{workdir}/iter{i}/student/model.keras")
    assert os.path.exists(f"{workdir}/iter{i}/control/model.keras")

  report = _json(os.path.join(workdir, "report.json"))
  assert 0 <= report["baseline_accuracy"] <= 1
  assert [it["iteration"] for it in report["iterations"]] == [1, 2]
  for it in report["iterations"]:
    assert 0 <= it["teacher_accuracy"] <= 1 and 0 <= it["student_accuracy"] <= 1
    assert 0 <= it["control_accuracy"] <= 1
    assert it["num_pseudo_labeled"] > 0
  assert report["iterations"][1]["teacher_accuracy"] == report["iterations"][0][
      "student_accuracy"]
  assert report["iterations"][1]["student_model"]["width"] == 0.15
  times = report["stage_times"]  # Each stage's seconds, from its marker.
  assert sorted(times) == sorted(stages) and all(t >= 0 for t in times.values())
  assert report["stage_seconds"] == pytest.approx(sum(times.values()), abs=0.1 * len(stages))
  for name in ("report.md", "report.png", "commands.sh"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0

  again = _run(workdir)
  assert "starting" not in again
  assert again.count("done already, skipping") == len(stages)

  # A copy of the workdir with a changed selection setting (how an ablation starts):
  # iteration 1's selection and everything that reads from it rerun, and nothing else
  # (the controls never see pseudo labels); the report names the stages it took from
  # the original workdir.
  copy = str(tmp_path / "ablation")
  shutil.copytree(workdir, copy)
  changed = _run(copy, "--min_threshold=0.01")
  rerun = {name for name in stages if f"[{name}] starting" in changed}
  assert rerun == {"iter1/select", "iter1/student", "iter1/student_test", "iter2/label",
                   "iter2/select", "iter2/student", "iter2/student_test"}
  assert "[iter1/select] settings changed: deleting its old outputs" in changed
  ablation = _json(os.path.join(copy, "report.json"))
  assert ablation["reused_stages"] == {name: workdir for name in stages if name not in rerun}
  assert report["reused_stages"] == {}
  teacher_flags = open(os.path.join(copy, "flags", "iter0__teacher.0.flags")).read()
  assert f"{copy}/" in teacher_flags and f"{workdir}/" not in teacher_flags

  # A driver that fails leaves no report behind, not even the one it was copied with.
  failed = _run(copy, "--extra_train_flags=--steps_per_loop=3,--eval_batch_size=32,"
                f"--init_from={tmp_path}/missing", check=False)
  assert failed.returncode != 0 and "[iter0/teacher] starting" in failed.stdout
  assert not os.path.exists(os.path.join(copy, "report.json"))


def test_driver_runs_on_a_class_folder_source(tmp_path):
  """Any data.make_tfrecords source: two class-folder trees (train, test) of 3 classes,
  tiny PNGs, one iteration, with the student's control."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, per_class in (("train", 24), ("test", 6)):
    for c in range(3):
      os.makedirs(tmp_path / split / f"class{c}")
      for i in range(per_class):
        pixels = (rng.integers(0, 60, (16, 16, 3)) + 90 * c).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / f"class{c}" / f"{i}.png")
  workdir = str(tmp_path / "work")
  argv = [sys.executable, "-m", "noisy_student.run", f"--workdir={workdir}",
          f"--train_source=folder:{tmp_path / 'train'}",
          f"--test_source=folder:{tmp_path / 'test'}", "--train_source_images=72",
          "--num_classes=3", "--image_size=16", "--labeled_per_class=6",
          "--dev_per_class=2", "--iterations=1", "--teacher_width=0.1",
          "--teacher_depth=0.1", "--student_widths=0.1", "--student_depths=0.1",
          "--batch_size=6", "--unlabeled_ratio=1", "--teacher_train_steps=3",
          "--student_train_steps=3", "--eval_every_steps=0", "--record_shards=1",
          "--label_shards=1", "--parallel_jobs=1", "--min_threshold=0",
          "--extra_train_flags=--steps_per_loop=3,--eval_batch_size=12"]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert _count(f"{workdir}/data/split/labeled-*") == 3 * 4
  assert _count(f"{workdir}/data/split/unlabeled-*") == 72 - 3 * 6
  assert _count(f"{workdir}/data/records/test-*") == 18
  report = _json(os.path.join(workdir, "report.json"))
  assert report["iterations"][0]["num_pseudo_labeled"] > 0  # K = 72 / 3 - 6 = 18
  assert 0 <= report["iterations"][0]["control_accuracy"] <= 1
