"""Every results table in the README and docs/ is what noisy_student.summarize prints
from the committed reports under results/ (accuracy tables from report.json, robustness
tables, `--robustness`, from robustness/*/*/results.json): none is typed in or edited by
hand. The one table typed by hand, docs/results.md's configurations, has its numbers
checked against the same reports."""
import glob
import os
import re

import pytest

from noisy_student import summarize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUNDS = "results/fashion_mnist_all_labels"


def _tables(path):
  """(line number, table text) of each markdown table whose first column is `workdir`."""
  lines = open(path).read().splitlines(keepends=True)
  i = 0
  while i < len(lines):
    if lines[i].startswith("| workdir |"):
      j = i
      while j < len(lines) and lines[j].startswith("|"):
        j += 1
      yield i + 1, "".join(lines[i:j])
      i = j
    else:
      i += 1


def _cases():
  for doc in ["README.md"] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))):
    path = os.path.join(REPO, doc)
    for line, text in _tables(path):
      yield pytest.param(text, id=f"{os.path.relpath(path, REPO)}:{line}")


@pytest.mark.parametrize("text", list(_cases()))
def test_table_is_printed_by_summarize(text, monkeypatch):
  monkeypatch.chdir(REPO)
  rows = [line.split("|")[1].strip() for line in text.splitlines()[2:]]
  workdirs = [w for w in rows if w != "mean ± sd"]
  header = text.splitlines()[0]
  if header.startswith("| workdir | model |"):
    workdirs = list(dict.fromkeys(workdirs))
    assert text == summarize.robustness_table(workdirs, mean="mean ± sd" in rows)
    return
  bounds = BOUNDS if "| all labels |" in header else None
  versus = re.search(r"\| vs (?!control)(\S+) \|", header)
  versus = f"results/{versus.group(1)}" if versus else None
  printed = [summarize.table(workdirs, mean="mean ± sd" in rows, split=split,
                             all_labels_dir=bounds, versus=versus)
             for split in ("test", "dev")]
  assert text in printed


def test_the_tables_are_found():
  ids = [p.id for p in _cases()]
  assert any(i.startswith("README.md:") for i in ids)
  assert sum(i.startswith("docs/results.md:") for i in ids) >= 5
  assert any(i.startswith("docs/evaluation.md:") for i in ids)  # the robustness table


def _configurations():
  """The rows of docs/results.md's table of configurations that name a flagfile: (id,
  experiment, seeds, cells). This table is written by hand (its cells are means over the
  seeds of several columns at once), so the test below checks its numbers instead."""
  text = open(os.path.join(REPO, "docs", "results.md")).read()
  block = text.split("<!--configurations-->")[1].split("<!--/configurations-->")[0]
  for line in block.strip().splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    found = re.search(r"`flags/run/(\w+)\.flags`", cells[0])
    if found:
      seeds = [int(s) for s in re.findall(r"\d+", re.sub(r"\(.*?\)", "", cells[1]))]
      yield pytest.param(found.group(1), seeds, cells, id=found.group(1))


def _stat(xs, sign=""):
  if len(xs) == 1:
    return f"{xs[0]:{sign}.2f}"
  mean, sd = summarize._mean_sd(xs)
  return f"{mean:{sign}.2f} ± {sd:.2f}"


@pytest.mark.parametrize("experiment,seeds,cells", list(_configurations()))
def test_configuration_row_matches_its_reports(experiment, seeds, cells, monkeypatch):
  """Each row's dev and test cells are the mean ± sd over its seeds of the baseline, the
  last student and its control, and its verdict quotes the margin over the control (and,
  for an ablation, over the winner) that the reports give."""
  monkeypatch.chdir(REPO)
  workdirs = [f"results/{experiment}/seed{s}" for s in seeds]
  versus = "results/fashion_mnist_2iter" if "ablation" in experiment else None
  reports = [summarize.load(w, versus=versus) for w in workdirs]
  last = len(reports[0]["iterations"])
  for split, cell in (("dev", cells[2]), ("test", cells[3])):
    rows = [summarize.row(report, split) for report in reports]
    triple = " / ".join(_stat([r[c] for r in rows])
                        for c in ("baseline", f"iteration {last}", f"control {last}"))
    assert triple in cell, f"{split}: expected {triple!r} in {cell!r}"
  if len(seeds) > 1:
    assert _stat([r[f"vs control {last}"] for r in rows], "+") in cells[4]
    if versus:
      mean, sd = summarize._mean_sd([r["vs versus"] for r in rows])
      side = "below" if mean < 0 else "above"
      assert f"{abs(mean):.2f} ± {sd:.2f} {side}" in cells[4]
