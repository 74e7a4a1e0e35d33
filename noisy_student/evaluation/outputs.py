"""What an evaluation leaves in --output_dir: results.json, results.md and PNG plots.

Every file is written atomically; one directory holds one suite.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from data import fileio
from data.robustness import perturbations as perturb

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def up_to_date(path: str) -> bool:
  """Whether the results.json at `path` exists and was made with this code's definitions
  (for perturbations: the same version of the sequences), so a rerun would repeat it.
  `make robustness` skips the suites for which this holds."""
  if not tf.io.gfile.exists(path):
    return False
  results = fileio.read_json(path)
  return (results.get("suite") != "perturbations"
          or results.get("sequences", 1) == perturb.SEQUENCES_VERSION)


def pct(x) -> str:
  """A fraction as a table cell in percent ("-" for None / NaN)."""
  return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.2f}"


def num(x) -> str:
  """A number as a table cell ("-" for None / NaN)."""
  return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def check_output_dir(output_dir: str, suite: str):
  """One directory per suite: refuse to overwrite another suite's results."""
  path = os.path.join(output_dir, RESULTS_JSON)
  if tf.io.gfile.exists(path):
    held = fileio.read_json(path).get("suite")
    if held != suite:
      raise ValueError(f"{path} holds suite {held!r}; use a separate --output_dir for "
                       f"--suite={suite}")


def write_outputs(output_dir: str, results: dict, table: str, plots: dict) -> list[str]:
  """Writes results.json, results.md and one PNG per plot, atomically; returns paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  for name, draw in plots.items():
    path = os.path.join(output_dir, f"{name}.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw(ax)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
      with tf.io.gfile.GFile(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
  results = dict(results, plots=[os.path.basename(p) for p in paths])
  header = (f"# {results['suite']}: {results['model']}\n\n"
            f"data: {results['data']}\n\n")
  fileio.write_text_atomic(os.path.join(output_dir, RESULTS_MD), header + table + "\n")
  fileio.write_json_atomic(os.path.join(output_dir, RESULTS_JSON), jsonable(results))
  return paths + [os.path.join(output_dir, RESULTS_MD), os.path.join(output_dir, RESULTS_JSON)]


def jsonable(obj):
  """`obj` with str keys, lists for tuples, Python numbers, and None for NaN."""
  if isinstance(obj, dict):
    return {str(k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return None if np.isnan(obj) else float(obj)
  if isinstance(obj, np.integer):
    return int(obj)
  return obj
