"""The experiment report: report.json, report.md and report.png in the workdir.

Every path goes through tf.io.gfile, so a workdir may be on gs://. Accuracies are
test-set top-1 fractions in [0, 1], read from each model's
`test/` evaluation; the number of pseudo-labeled images comes from the selection summary.
Each iteration's student stands next to its compute-matched control (the same training
without pseudo-labeled images), the comparison that says whether the pseudo labels, and
not the extra training, made the difference.
"""

from __future__ import annotations

import os

import tensorflow as tf

from data import fileio
from data.records import schema
from noisy_student.experiment import iterate


def test_accuracy(model_dir: str) -> float | None:
  """Top-1 of the clean test evaluation written by `noisy_student.evaluate`."""
  path = os.path.join(iterate.test_dir(model_dir), "results.json")
  if not tf.io.gfile.exists(path):
    return None
  return float(fileio.read_json(path)["top1"])


def dev_accuracy(model_dir: str) -> float | None:
  """Top-1 of the trained model on the dev split (the trainer's final evaluation), the
  number that settings are chosen by; the test split is never used for that."""
  path = os.path.join(model_dir, "eval_metrics.json")
  if not tf.io.gfile.exists(path):
    return None
  return float(fileio.read_json(path)["top1"])


def pseudo_label_stats(iteration_dir: str, label_offset: int = 0) -> dict:
  """Pseudo-labeled images used (after filtering and balancing, with copies) and how
  many of the teacher's pseudo labels were right, from the hidden labels of the split
  (stored as the labels were: `label_offset` is subtracted, as the trainer does)."""
  stats = {}
  selection = os.path.join(iteration_dir, "selected", "selection.json")
  if tf.io.gfile.exists(selection):
    stats["num_pseudo_labeled"] = fileio.read_json(selection).get("total_written")
  predictions = tf.io.gfile.glob(os.path.join(iteration_dir, "predictions", "*.tfrecord"))
  if predictions:
    stats["pseudo_label_accuracy"] = _pseudo_label_accuracy(predictions, label_offset)
  return stats


def _pseudo_label_accuracy(files: list[str], label_offset: int) -> float | None:
  import tensorflow as tf  # Only here: the rest of the report needs no TensorFlow.
  spec = {schema.PSEUDO_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
          schema.HIDDEN_LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
  right = total = 0
  for batch in tf.data.TFRecordDataset(sorted(files)).batch(4096).map(
      lambda x: tf.io.parse_example(x, spec)):
    hidden = batch[schema.HIDDEN_LABEL].numpy() - label_offset
    known = hidden >= 0
    right += int((batch[schema.PSEUDO_LABEL].numpy()[known] == hidden[known]).sum())
    total += int(known.sum())
  return right / total if total else None


def last_control_dir(workdir: str) -> str | None:
  """The control of the workdir's last student, from its report.json.

  Reports written before `control_dir` was recorded came from runs whose controls were
  the last iteration's own or, for same-model students from scratch, iteration 1's.
  """
  path = os.path.join(workdir, "report.json")
  if not tf.io.gfile.exists(path):
    return None
  last = fileio.read_json(path)["iterations"][-1]
  candidates = ([last["control_dir"]] if "control_dir" in last else
                [f"iter{last['iteration']}/control", "iter1/control"])
  for candidate in candidates:
    if tf.io.gfile.isdir(os.path.join(workdir, candidate)):
      return os.path.join(workdir, candidate)
  return None


def collect(c: iterate.ExperimentConfig) -> dict:
  baseline = test_accuracy(c.model_dir(0))
  iterations = []
  for i in range(1, c.iterations + 1):
    item = {
        "iteration": i,
        "teacher_accuracy": test_accuracy(c.model_dir(i - 1)),
        "student_accuracy": test_accuracy(c.model_dir(i)),
        "student_model": vars(c.student(i)),
    }
    item["student_dev_accuracy"] = dev_accuracy(c.model_dir(i))
    if c.train_controls:
      item["control_accuracy"] = test_accuracy(c.control_dir(i))
      # Shared by the iterations whose student has the same model and noise.
      item["control_dir"] = f"iter{c.control_iteration(i)}/control"
      item["control_dev_accuracy"] = dev_accuracy(c.control_dir(i))
    item.update(pseudo_label_stats(c.path(f"iter{i}"), c.label_offset))
    iterations.append(item)
  report = {
      "baseline_accuracy": baseline,
      "baseline_dev_accuracy": dev_accuracy(c.model_dir(0)),
      "iterations": iterations,
      "labeled_per_class": None if c.from_records else c.labeled_per_class,
      "labeled_pattern": c.labeled_pattern,
      "seed": c.seed,
      "teacher_model": vars(c.teacher),
  }
  if c.train_upper_bound:
    report["all_labels_accuracy"] = test_accuracy(c.path("upper_bound"))
  return report


def _labels(report: dict) -> str:
  if report.get("labeled_pattern"):
    return f"the records {report['labeled_pattern']}"
  return f"{report['labeled_per_class']} per class"


def _pct(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}%"


def _margin(a, b) -> str:
  return "-" if None in (a, b) else f"{100 * (a - b):+.2f}"


def markdown(report: dict) -> str:
  lines = [
      "# Noisy Student report", "",
      f"Labels: {_labels(report)}; seed {report['seed']}.", "",
      "| model | test top-1 | its control | student - control | pseudo-labeled images used "
      "| its teacher's pseudo labels right |",
      "|---|---|---|---|---|---|",
      f"| supervised baseline (iteration-1 teacher) | {_pct(report['baseline_accuracy'])} "
      "| - | - | 0 | - |",
  ]
  for it in report["iterations"]:
    control = it.get("control_accuracy")
    lines.append(f"| student, iteration {it['iteration']} | {_pct(it['student_accuracy'])} "
                 f"| {_pct(control)} | {_margin(it['student_accuracy'], control)} "
                 f"| {it.get('num_pseudo_labeled', '-')} "
                 f"| {_pct(it.get('pseudo_label_accuracy'))} |")
  if "all_labels_accuracy" in report:
    lines.append(f"| all labels (upper bound) | {_pct(report['all_labels_accuracy'])} "
                 "| - | - | - | - |")
  lines += ["", "Each iteration's teacher is the previous row's model. A student's control "
            "is the same training (model, initialisation, steps, schedule, noise, labeled "
            "batch) on the labeled images alone."]
  return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  xs = [0] + [it["iteration"] for it in report["iterations"]]
  ys = [report["baseline_accuracy"]] + [it["student_accuracy"] for it in report["iterations"]]
  points = [(x, 100 * y) for x, y in zip(xs, ys) if y is not None]
  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  if points:
    ax.plot(*zip(*points), marker="o", label="model of that iteration")
  controls = [(it["iteration"], 100 * it["control_accuracy"]) for it in report["iterations"]
              if it.get("control_accuracy") is not None]
  if controls:
    ax.plot(*zip(*controls), marker="s", ls=":", c="tab:red",
            label="its control (labels only, same budget)")
  if report.get("all_labels_accuracy") is not None:
    ax.axhline(100 * report["all_labels_accuracy"], ls="--", c="gray", label="all labels")
  ax.set_xlabel("iteration (0 = supervised baseline)")
  ax.set_ylabel("test top-1 (%)")
  ax.set_xticks(xs)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:  # savefig(path) would open() it locally.
      fig.savefig(f, format="png")
  plt.close(fig)


REPORT_FILES = ("report.json", "report.md", "report.png")


def remove(workdir: str) -> None:
  """Deletes the workdir's report, if any (the driver's first step: see run.py)."""
  for name in REPORT_FILES:
    path = os.path.join(workdir, name)
    if tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)


def write(c: iterate.ExperimentConfig, provenance: dict | None = None,
          results_dir: str | None = None) -> dict:
  """Writes the report into the workdir (and a copy into `results_dir`).

  Args:
    provenance: what made the run, stored in report.json: the command, the git commit
      and the stages' wall time in seconds.
  """
  report = collect(c)
  report.update(provenance or {})
  for directory in (c.workdir, results_dir) if results_dir else (c.workdir,):
    fileio.write_json_atomic(os.path.join(directory, "report.json"), report)
    fileio.write_text_atomic(os.path.join(directory, "report.md"), markdown(report))
    plot(report, os.path.join(directory, "report.png"))
  print(markdown(report), flush=True)
  return report

