"""The plug-in contract of an evaluation suite (the registry maps names to these).

A suite computes a results dict from a loaded model and, separately, renders it: a
markdown table and named plots. Both halves see the baseline model's results the run is
normalised by (or None), which the suite itself chooses and loads before the model runs,
so a mismatched baseline fails early.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

# draw(ax): fills one matplotlib Axes; write_outputs saves it as <name>.png.
Draw = Callable[[object], None]


def no_baseline(config, num_classes: int) -> None:  # pylint: disable=unused-argument
  return None


def clean_data(config) -> str:
  """What results["data"] names for suites that read the clean set."""
  return config.eval_pattern or config.image_folder


@dataclasses.dataclass(frozen=True)
class Suite:
  """One evaluation suite.

  Attributes:
    compute: (Evaluator, baseline | None) -> the suite's results (plain values; the
      caller adds "suite", "model", "data", "config", "seconds" and the skipped-record
      counts).
    table: (results, baseline | None) -> markdown for results.md.
    plots: (results, baseline | None) -> {name: draw(ax)}, one PNG per entry.
    baseline: (EvalConfig, num_classes) -> the baseline results.json the run is
      normalised by, or None; it validates them against the config.
    data: EvalConfig -> what results["data"] names (the data read).
    needs_clean_data: the suite cannot run without --eval_pattern or --image_folder.
  """
  compute: Callable[..., dict]
  table: Callable[[dict, dict | None], str]
  plots: Callable[[dict, dict | None], dict[str, Draw]]
  baseline: Callable[..., dict | None] = no_baseline
  data: Callable[..., str] = clean_data
  needs_clean_data: bool = True
