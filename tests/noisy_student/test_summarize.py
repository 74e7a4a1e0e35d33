"""noisy_student.summarize: exact cells from tiny hand-made reports."""
import json
import os
import subprocess
import sys

import pytest

from noisy_student import summarize

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _workdir(tmp_path, name, baseline, students, bound=None):
  d = tmp_path / name
  d.mkdir()
  teachers = [baseline] + students[:-1]
  report = {"baseline_accuracy": baseline, "iterations": [
      {"iteration": i + 1, "teacher_accuracy": t, "student_accuracy": s}
      for i, (t, s) in enumerate(zip(teachers, students))]}
  if bound is not None:
    report["all_labels_accuracy"] = bound
  (d / "report.json").write_text(json.dumps(report))
  return str(d)


def test_gap_recovered():
  report = {"baseline_accuracy": 0.70, "all_labels_accuracy": 0.90,
            "iterations": [{"iteration": 1, "teacher_accuracy": 0.7, "student_accuracy": 0.80}]}
  assert summarize.gap_recovered(report) == pytest.approx(0.5)
  del report["all_labels_accuracy"]
  assert summarize.gap_recovered(report) is None


def test_table_rows_and_mean(tmp_path):
  a = _workdir(tmp_path, "a", 0.70, [0.75, 0.78], bound=0.90)
  b = _workdir(tmp_path, "b", 0.72, [0.74, 0.80], bound=0.92)
  lines = summarize.table([a, b]).splitlines()
  assert lines[0] == ("| workdir | baseline | iteration 1 | gain 1 | iteration 2 | gain 2 "
                      "| all labels | gap recovered |")
  assert lines[2] == f"| {a} | 70.00% | 75.00% | +5.00 | 78.00% | +3.00 | 90.00% | 0.40 |"
  assert lines[3] == f"| {b} | 72.00% | 74.00% | +2.00 | 80.00% | +6.00 | 92.00% | 0.40 |"
  # Sample sd of (70, 72) is sqrt(2) = 1.41; gains 5 and 2 -> 3.5 +- 2.12.
  assert lines[4] == ("| mean ± sd | 71.00% ± 1.41 | 74.50% ± 0.71 | +3.50 ± 2.12 | 79.00% ± 1.41 "
                      "| +4.50 ± 2.12 | 91.00% ± 1.41 | 0.40 ± 0.00 |")


def test_missing_columns_and_no_mean(tmp_path):
  a = _workdir(tmp_path, "a", 0.70, [0.75])
  b = _workdir(tmp_path, "b", 0.70, [0.75, 0.76])
  lines = summarize.table([a, b]).splitlines()
  assert lines[2].endswith("| 75.00% | +5.00 | - | - |")
  assert lines[4].endswith("| - | - |")  # no mean over a column some rows lack
  assert len(summarize.table([a, b], mean=False).splitlines()) == 4


def test_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="report.json"):
    summarize.load(str(tmp_path))
  (tmp_path / "report.json").write_text("{}")
  with pytest.raises(ValueError, match="not a driver report"):
    summarize.load(str(tmp_path))


def test_command_line_writes_the_table(tmp_path):
  a = _workdir(tmp_path, "a", 0.70, [0.75], bound=0.80)
  out = tmp_path / "table.md"
  result = subprocess.run([sys.executable, "-m", "noisy_student.summarize", a,
                           f"--output={out}"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr
  assert out.read_text() == result.stdout and "| 0.50 |" in result.stdout


def test_control_columns(tmp_path):
  """Each iteration's control and the student's margin over it, when the report has it."""
  d = tmp_path / "c"
  d.mkdir()
  (d / "report.json").write_text(json.dumps({"baseline_accuracy": 0.80, "iterations": [
      {"iteration": 1, "teacher_accuracy": 0.80, "student_accuracy": 0.83,
       "control_accuracy": 0.815}]}))
  lines = summarize.table([str(d)]).splitlines()
  assert lines[0] == "| workdir | baseline | iteration 1 | gain 1 | control 1 | vs control 1 |"
  assert lines[2] == f"| {d} | 80.00% | 83.00% | +3.00 | 81.50% | +1.50 |"


def test_dev_split_columns(tmp_path):
  """--split=dev tabulates the dev accuracies that settings are chosen by."""
  d = tmp_path / "c"
  d.mkdir()
  (d / "report.json").write_text(json.dumps({
      "baseline_accuracy": 0.80, "baseline_dev_accuracy": 0.79, "all_labels_accuracy": 0.9,
      "iterations": [{"iteration": 1, "teacher_accuracy": 0.80, "student_accuracy": 0.83,
                      "student_dev_accuracy": 0.84, "control_accuracy": 0.815,
                      "control_dev_accuracy": 0.80}]}))
  lines = summarize.table([str(d)], split="dev").splitlines()
  assert lines[0] == "| workdir | baseline | iteration 1 | gain 1 | control 1 | vs control 1 |"
  assert lines[2] == f"| {d} | 79.00% | 84.00% | +5.00 | 80.00% | +4.00 |"


def test_bound_from_a_separate_all_labels_run(tmp_path):
  """Each row takes the all-labels bound of its own seed from --all_labels_dir."""
  rows = []
  for seed, bound in ((0, 0.90), (1, 0.92)):
    d = tmp_path / "headline" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({"seed": seed, "baseline_accuracy": 0.80,
        "iterations": [{"iteration": 1, "student_accuracy": 0.85}]}))
    b = tmp_path / "bound" / f"seed{seed}"
    b.mkdir(parents=True)
    (b / "report.json").write_text(json.dumps({"seed": seed, "baseline_accuracy": 0.79,
        "iterations": [], "all_labels_accuracy": bound}))
    rows.append(str(d))
  lines = summarize.table(rows, mean=False,
                          all_labels_dir=str(tmp_path / "bound")).splitlines()
  assert lines[2].endswith("| 90.00% | 0.50 |")  # (85 - 80) / (90 - 80)
  assert lines[3].endswith("| 92.00% | 0.42 |")  # (85 - 80) / (92 - 80)
  with pytest.raises(FileNotFoundError, match="seed0"):
    summarize.load(rows[0], str(tmp_path / "nowhere"))


def test_an_ablation_versus_the_run_it_ablates(tmp_path):
  """--versus: each row's last student minus the ablated run's last student, same seed."""
  rows = []
  for seed, (ours, theirs) in enumerate(((0.84, 0.85), (0.86, 0.83))):
    for run, last in (("ablation", ours), ("winner", theirs)):
      d = tmp_path / run / f"seed{seed}"
      d.mkdir(parents=True)
      (d / "report.json").write_text(json.dumps({"seed": seed, "baseline_accuracy": 0.80,
          "iterations": [{"iteration": 1, "student_accuracy": 0.82},
                         {"iteration": 2, "student_accuracy": last,
                          "student_dev_accuracy": last - 0.01}]}))
    rows.append(str(tmp_path / "ablation" / f"seed{seed}"))
  lines = summarize.table(rows, versus=str(tmp_path / "winner")).splitlines()
  assert lines[0].endswith("| iteration 2 | gain 2 | vs winner |")
  assert lines[2].endswith("| 84.00% | +2.00 | -1.00 |")
  assert lines[3].endswith("| 86.00% | +4.00 | +3.00 |")
  assert lines[4].endswith("| +1.00 ± 2.83 |")  # sample sd of (-1, 3)
  dev = summarize.table(rows, split="dev", versus=str(tmp_path / "winner")).splitlines()
  assert dev[2].endswith("| 83.00% | - | -1.00 |")
  with pytest.raises(FileNotFoundError, match="seed0"):
    summarize.table(rows, versus=str(tmp_path / "nowhere"))


def test_the_last_students_control_is_found_from_the_report(tmp_path):
  """`make robustness` compares the last student with its control, which iteration 2
  shares with iteration 1 when both students are the same model, from scratch."""
  import json

  from noisy_student.experiment import report
  w = tmp_path / "w"
  (w / "iter1" / "control").mkdir(parents=True)
  assert report.last_control_dir(str(w)) is None  # no report yet
  items = [{"iteration": 1, "control_dir": "iter1/control"},
           {"iteration": 2, "control_dir": "iter1/control"}]
  (w / "report.json").write_text(json.dumps({"iterations": items}))
  assert report.last_control_dir(str(w)) == str(w / "iter1" / "control")
  # Reports from before control_dir: the last iteration's own control, else iteration 1's.
  (w / "report.json").write_text(json.dumps({"iterations": [{"iteration": 2}]}))
  assert report.last_control_dir(str(w)) == str(w / "iter1" / "control")
  (w / "iter2" / "control").mkdir(parents=True)
  assert report.last_control_dir(str(w)) == str(w / "iter2" / "control")


def _robustness(tmp_path, name, accuracies, sequences=2):
  """A workdir whose `make robustness` results give each model the clean top-1 and attack
  accuracy in `accuracies` (model -> fraction); the other numbers are fixed. Flip rates
  are on perturbation sequences of version `sequences` (None: results without the field)."""
  d = tmp_path / name
  for model, acc in accuracies.items():
    normalised = model != "teacher"
    suites = {
        "clean": {"top1": acc},
        "corruptions": {"mean_error": 0.25, "mce": 90.0 if normalised else None,
                        "relative_mce": 120.0 if normalised else None},
        "perturbations": {"mean_flip_probability": 0.03, "mfr": 80.0 if normalised else None,
                          **({} if sequences is None else {"sequences": sequences})},
        "adversarial": {"accuracy": {a: {e: acc / 2 for e in ("4", "8", "16")}
                                     for a in ("fgsm", "pgd")}},
    }
    for suite, results in suites.items():
      (d / "robustness" / model / suite).mkdir(parents=True)
      (d / "robustness" / model / suite / "results.json").write_text(json.dumps(results))
  return str(d)


def test_robustness_table(tmp_path):
  a = _robustness(tmp_path, "a", {"teacher": 0.80, "control": 0.81, "student": 0.84})
  b = _robustness(tmp_path, "b", {"teacher": 0.82, "control": 0.83, "student": 0.86})
  lines = summarize.robustness_table([a, b]).splitlines()
  assert lines[0] == ("| workdir | model | clean top-1 % | corruption error % | mCE "
                      "| relative mCE | flip prob. % | mFR | FGSM 8 % | FGSM 16 % | PGD 4 % "
                      "| PGD 8 % |")
  assert lines[2] == f"| {a} | teacher | 80.0 | 25.00 | - | - | 3.00 | - | 40.0 | 40.0 | 40.0 | 40.0 |"
  assert lines[4] == (f"| {a} | student | 84.0 | 25.00 | 90.0 | 120.0 | 3.00 | 80.0 | 42.0 "
                      "| 42.0 | 42.0 | 42.0 |")
  assert len(lines) == 2 + 6 + 3
  # Sample sd of (84, 86) is sqrt(2); the unnormalised teacher has no mean mCE.
  assert lines[8].startswith("| mean ± sd | teacher | 81.0 ± 1.4 | 25.00 ± 0.00 | - | - |")
  assert lines[10].startswith("| mean ± sd | student | 85.0 ± 1.4 | 25.00 ± 0.00 | 90.0 ± 0.0 |")
  assert len(summarize.robustness_table([a], mean=True).splitlines()) == 5


def test_robustness_table_marks_flip_rates_of_earlier_sequences(tmp_path):
  """Flip rates from an earlier definition of the perturbation sequences (results without
  a version are version 1) are marked, in the rows and in any mean they enter."""
  a = _robustness(tmp_path, "a", {"teacher": 0.80, "control": 0.81, "student": 0.84}, None)
  b = _robustness(tmp_path, "b", {"teacher": 0.82, "control": 0.83, "student": 0.86})
  lines = summarize.robustness_table([a, b]).splitlines()
  assert lines[4] == (f"| {a} | student | 84.0 | 25.00 | 90.0 | 120.0 | 3.00 (seq. v1) "
                      "| 80.0 (seq. v1) | 42.0 | 42.0 | 42.0 | 42.0 |")
  assert lines[2].split(" | ")[6:8] == ["3.00 (seq. v1)", "-"]  # no mFR: nothing to mark
  assert " | 3.00 | 80.0 | " in lines[7]  # b's rows: this code's sequences
  # Flip rates of two versions are not averaged; the other columns are.
  assert lines[10].startswith("| mean ± sd | student | 85.0 ± 1.4 | 25.00 ± 0.00 | 90.0 ± 0.0 "
                              "| 120.0 ± 0.0 | - | - |")
  c = _robustness(tmp_path, "c", {"teacher": 0.80, "control": 0.81, "student": 0.84}, 1)
  both_old = summarize.robustness_table([a, c]).splitlines()
  assert "| 3.00 ± 0.00 (seq. v1) | 80.0 ± 0.0 (seq. v1) |" in both_old[10]


def test_robustness_table_errors_name_the_file(tmp_path):
  a = _robustness(tmp_path, "a", {"teacher": 0.8, "control": 0.8})
  with pytest.raises(FileNotFoundError, match="student/clean/results.json"):
    summarize.robustness_table([a])
  b = _robustness(tmp_path, "b", {"teacher": 0.8, "control": 0.8, "student": 0.8})
  path = os.path.join(b, "robustness", "student", "adversarial", "results.json")
  with open(path, "w") as f:
    json.dump({"accuracy": {"fgsm": {"8": 0.5}, "pgd": {"4": 0.5, "8": 0.5}}}, f)
  with pytest.raises(ValueError, match="no fgsm at epsilon 16"):
    summarize.robustness_table([b])


def test_pseudo_label_accuracy_subtracts_the_label_offset(tmp_path):
  """Hidden labels keep the stored labels' base (1-based ImageNet TPU files): the report
  compares them with the 0-based pseudo labels after subtracting --label_offset."""
  import tensorflow as tf

  from data.records import schema
  from noisy_student.experiment import report
  (tmp_path / "predictions").mkdir()
  rows = [(0, 1), (2, 3), (1, 1), (4, -1)]  # (pseudo, stored hidden); -1: none
  with tf.io.TFRecordWriter(str(tmp_path / "predictions" / "p-0.tfrecord")) as w:
    for pseudo, hidden in rows:
      features = {schema.PSEUDO_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(
          value=[pseudo]))}
      if hidden >= 0:
        features[schema.HIDDEN_LABEL] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[hidden]))
      w.write(tf.train.Example(features=tf.train.Features(feature=features))
              .SerializeToString())
  # 1-based: pseudo 0 = stored 1, pseudo 2 = stored 3 are right; pseudo 1 vs stored 1 not.
  assert report.pseudo_label_stats(str(tmp_path), 1)["pseudo_label_accuracy"] == 2 / 3
  assert report.pseudo_label_stats(str(tmp_path))["pseudo_label_accuracy"] == 1 / 3
