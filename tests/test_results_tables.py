"""Every results table in the README and docs/ is what noisy_student.summarize prints
from the committed reports under results/ (accuracy tables from report.json, robustness
tables, `--robustness`, from robustness/*/*/results.json): none is typed in or edited by
hand."""
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
