r"""One table from the `report.json` of several driver workdirs (seeds, ablations).

  python -m noisy_student.summarize runs/fmnist_s0 runs/fmnist_s1 runs/fmnist_s2
  python -m noisy_student.summarize runs/demo runs/ablation_* --nomean
  python -m noisy_student.summarize results/fashion_mnist_ablation_hard_labels/seed* \
      --versus=results/fashion_mnist_2iter
  python -m noisy_student.summarize --robustness results/fashion_mnist_2iter/seed*

Prints a markdown table with a row per workdir: the labels-only baseline, each
iteration's student, its gain over its own teacher, its compute-matched control (the
same training on the labeled images alone) and the student's margin over that control,
the all-labels bound and the fraction of the baseline-to-bound gap the last student
recovered; with --versus, the last student's margin over the last student of the same
seed in the run it ablates; then (unless --nomean) the mean and sample standard
deviation over the rows. Accuracies are test-set top-1 in percent, read from the files
the driver wrote, never typed in.

With --robustness, the rows are the teacher, control and student of each workdir, read
from the `robustness/<model>/<suite>/results.json` that `make robustness` writes there
(docs/evaluation.md): clean top-1, corruption error and mCE, flip probability and mFR,
FGSM and PGD accuracy; then the mean +- sd of each model over the workdirs.
"""

from __future__ import annotations

import math
import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

from data import cli
from data import fileio
from data.robustness import perturbations as perturb

flags.DEFINE_bool("mean", True, "Add a mean +- sd row.")
flags.DEFINE_enum("split", "test", ["test", "dev"],
                  "Which accuracies: test (what the README reports) or dev (what "
                  "settings are chosen by; no all-labels bound there).")
flags.DEFINE_string("output", None, "Also write the table to this file (atomically).")
flags.DEFINE_string("all_labels_dir", None,
                    "Results of a separate all-labels run, as <dir>/seed<N>/report.json: "
                    "each row takes the bound of its own seed from there.")
flags.DEFINE_string("versus", None,
                    "Results of the run these rows ablate, as <dir>/seed<N>/report.json: "
                    "adds the column 'vs <dir's name>', each row's last student minus "
                    "that run's last student of the same seed (points).")
flags.DEFINE_bool("robustness", False,
                  "Tabulate the robustness suites of each workdir's teacher, control and "
                  "student (<workdir>/robustness/, from `make robustness`) instead.")
FLAGS = flags.FLAGS


def load(workdir: str, all_labels_dir: str | None = None,
         versus: str | None = None) -> dict:
  """A driver report; with `all_labels_dir`, its seed's all-labels bound added; with
  `versus`, the last student of its seed in that run, as `versus_accuracy` (and
  `versus_dev_accuracy`)."""
  report = _read(workdir)
  seed = report.get("seed", 0)
  if all_labels_dir:
    bound = _read(os.path.join(all_labels_dir, f"seed{seed}"))
    if bound.get("all_labels_accuracy") is None:
      raise ValueError(f"{all_labels_dir}: seed {seed} has no all_labels_accuracy")
    report["all_labels_accuracy"] = bound["all_labels_accuracy"]
  if versus:
    other = _read(os.path.join(versus, f"seed{seed}"))
    if not other["iterations"]:
      raise ValueError(f"{versus}: seed {seed} has no student")
    for split in ("test", "dev"):
      report[_key("versus", split)] = _accuracy(other["iterations"][-1], "student", split)
  return report


def _read(workdir: str) -> dict:
  path = os.path.join(workdir, "report.json")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no report (has the driver finished in {workdir}?)")
  report = fileio.read_json(path)
  for key in ("baseline_accuracy", "iterations"):
    if key not in report:
      raise ValueError(f"{path}: not a driver report (no {key!r})")
  return report


def _key(model: str, split: str) -> str:
  return f"{model}_accuracy" if split == "test" else f"{model}_dev_accuracy"


def _accuracy(item: dict, model: str, split: str = "test") -> float | None:
  """`item[model + "_accuracy"]`, or its dev-split twin."""
  return item.get(_key(model, split))


def gap_recovered(report: dict) -> float | None:
  """(last student - baseline) / (all labels - baseline); None without a bound."""
  bound, base = report.get("all_labels_accuracy"), report["baseline_accuracy"]
  last = report["iterations"][-1]["student_accuracy"] if report["iterations"] else None
  if None in (bound, base, last) or bound <= base:
    return None
  return (last - base) / (bound - base)


def row(report: dict, split: str = "test",
        versus_name: str = "versus") -> dict[str, float | None]:
  """Column name -> value (percent, or a fraction for the gap)."""
  pct = lambda x: None if x is None else 100 * x
  teacher = _accuracy(report, "baseline", split)
  values, student = {"baseline": pct(teacher)}, None
  for it in report["iterations"]:
    i, student = it["iteration"], _accuracy(it, "student", split)
    values[f"iteration {i}"] = pct(student)
    values[f"gain {i}"] = (None if None in (student, teacher) else 100 * (student - teacher))
    teacher = student
    if "control_accuracy" in it:
      control = _accuracy(it, "control", split)
      values[f"control {i}"] = pct(control)
      values[f"vs control {i}"] = (None if None in (student, control)
                                   else 100 * (student - control))
  if "all_labels_accuracy" in report and split == "test":
    values["all labels"] = pct(report["all_labels_accuracy"])
    values["gap recovered"] = gap_recovered(report)
  if _key("versus", split) in report:
    other = report[_key("versus", split)]
    values[f"vs {versus_name}"] = (None if None in (student, other)
                                   else 100 * (student - other))
  return values


def _mean_sd(xs: list[float]) -> tuple[float, float]:
  mean = sum(xs) / len(xs)
  sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
  return mean, sd


def _cell(column: str, x: float | None) -> str:
  if x is None:
    return "-"
  if column.startswith(("gain", "vs ")):
    return f"{x:+.2f}"
  if column == "gap recovered":
    return f"{x:.2f}"
  return f"{x:.2f}%"


def table(workdirs: list[str], mean: bool = True, split: str = "test",
          all_labels_dir: str | None = None, versus: str | None = None) -> str:
  name = os.path.basename(os.path.normpath(versus)) if versus else "versus"
  rows = [(w, row(load(w, all_labels_dir, versus), split, name)) for w in workdirs]
  columns = []
  for _, values in rows:
    columns += [c for c in values if c not in columns]
  lines = ["| workdir | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for w, values in rows:
    lines.append(f"| {w} | " + " | ".join(_cell(c, values.get(c)) for c in columns) + " |")
  if mean and len(rows) > 1:
    cells = []
    for c in columns:
      xs = [v[c] for _, v in rows if v.get(c) is not None]
      if len(xs) < len(rows):
        cells.append("-")
        continue
      m, sd = _mean_sd(xs)
      cells.append(f"{_cell(c, m)} ± {sd:.2f}")
    lines.append("| mean ± sd | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# The models `make robustness` evaluates, in its order; the suites; the attack strengths
# (0-255 pixel units) in the table.
ROBUST_MODELS = ("teacher", "control", "student")
ROBUST_SUITES = ("clean", "corruptions", "perturbations", "adversarial")
FGSM_EPSILONS, PGD_EPSILONS = ("8", "16"), ("4", "8")


def _suite_results(workdir: str, model: str) -> dict[str, dict]:
  """Suite -> the results.json `make robustness` wrote for one model under `workdir`."""
  results = {}
  for suite in ROBUST_SUITES:
    path = os.path.join(workdir, "robustness", model, suite, "results.json")
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: no {suite} results (run `make robustness` on the "
                              "workdir first)")
    results[suite] = fileio.read_json(path)
  return results


def robustness_row(workdir: str, model: str) -> tuple[dict[str, float | None], int]:
  """Column name -> value for one model's suites under `workdir`/robustness, and the
  version of the perturbation sequences its flip rates were measured on (results from
  before the field are version 1). mCE, relative mCE and mFR are None where the suite
  had no baseline to normalise by (the teacher)."""
  results = _suite_results(workdir, model)
  corr, pert, adv = (results[s] for s in ROBUST_SUITES[1:])
  values = {"clean top-1 %": 100 * results["clean"]["top1"],
            "corruption error %": 100 * corr["mean_error"],
            "mCE": corr.get("mce"), "relative mCE": corr.get("relative_mce"),
            "flip prob. %": 100 * pert["mean_flip_probability"], "mFR": pert.get("mfr")}
  for attack, epsilons in (("fgsm", FGSM_EPSILONS), ("pgd", PGD_EPSILONS)):
    accuracy = adv["accuracy"][attack]
    for eps in epsilons:
      if eps not in accuracy:
        raise ValueError(f"{workdir}: {model}'s adversarial results have no {attack} at "
                         f"epsilon {eps} (it has {sorted(accuracy)})")
      values[f"{attack.upper()} {eps} %"] = 100 * accuracy[eps]
  return values, pert.get("sequences", 1)


FLIP_COLUMNS = ("flip prob. %", "mFR")


def _robust_cell(column: str, x: float | None) -> str:
  if x is None:
    return "-"
  return f"{x:.2f}" if column.startswith(("corruption", "flip")) else f"{x:.1f}"


def _outdated(column: str, versions: list[int]) -> str:
  """A flip-rate cell's mark when its sequences are not this code's: those numbers are
  not comparable with ones measured now (data/robustness/perturbations.py)."""
  old = sorted({v for v in versions if v != perturb.SEQUENCES_VERSION})
  if column not in FLIP_COLUMNS or not old:
    return ""
  return " (seq. " + ", ".join(f"v{v}" for v in old) + ")"


def robustness_table(workdirs: list[str], mean: bool = True) -> str:
  """The robustness suites of each workdir's teacher, control and student, a row each.

  Flip rates measured on an earlier version of the perturbation sequences carry that
  version, e.g. "2.73 (seq. v1)"; they are not averaged with another version's."""
  rows = [(w, m, *robustness_row(w, m)) for w in workdirs for m in ROBUST_MODELS]
  columns = list(rows[0][2])
  lines = ["| workdir | model | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 2) + "|"]
  for w, m, values, version in rows:
    lines.append(f"| {w} | {m} | " + " | ".join(
        _robust_cell(c, values[c]) + (_outdated(c, [version]) if values[c] is not None
                                      else "") for c in columns) + " |")
  if mean and len(workdirs) > 1:
    for m in ROBUST_MODELS:
      cells = []
      versions = [v for _, model, _, v in rows if model == m]
      for c in columns:
        xs = [v[c] for _, model, v, _ in rows if model == m]
        if None in xs or (c in FLIP_COLUMNS and len(set(versions)) > 1):
          cells.append("-")  # nothing to average, or flip rates of different sequences
          continue
        mu, sd = _mean_sd(xs)
        cells.append(f"{_robust_cell(c, mu)} ± {_robust_cell(c, sd)}{_outdated(c, versions)}")
      lines.append(f"| mean ± sd | {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give one or more driver workdirs")
  if FLAGS.robustness:
    text = robustness_table(workdirs, FLAGS.mean)
  else:
    text = table(workdirs, FLAGS.mean, FLAGS.split, FLAGS.all_labels_dir, FLAGS.versus)
  sys.stdout.write(text)
  if FLAGS.output:
    fileio.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
  cli.run(main)
