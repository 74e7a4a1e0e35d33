"""Normalising robustness numbers: by a baseline model's results.json, AlexNet, or not.

--normalizer=auto picks the baseline model when --baseline_results is given, else AlexNet
for 1000-class corruptions (Hendrycks & Dietterich 2019), else none.
"""

from __future__ import annotations

from data import fileio


# The numbers of each suite that another model's are divided by (an adversarial
# baseline is only shown beside, where a missing number prints as "-").
NORMALISING_FIELDS = {"corruptions": ("errors",),
                      "perturbations": ("flip_probability", "top5_distance")}


def _nulls(value, where: str) -> list[str]:
  if value is None:
    return [where]
  if isinstance(value, dict):
    return [n for k, v in value.items() for n in _nulls(v, f"{where}.{k}")]
  return []


def load_baseline(path: str, suite: str) -> dict:
  """The results.json at `path`; a ValueError unless it holds `suite` with a number for
  everything that normalises (results.json writes NaN, e.g. a mean over no images, as
  null, which would otherwise fail later as a TypeError naming nothing)."""
  results = fileio.read_json(path)
  if results.get("suite") != suite:
    raise ValueError(f"--baseline_results={path} holds suite {results.get('suite')!r}, "
                     f"not {suite!r}")
  nulls = [n for field in NORMALISING_FIELDS.get(suite, ())
           for n in _nulls(results.get(field), field)]
  if nulls:
    raise ValueError(f"--baseline_results={path} has no number (null: NaN when measured) "
                     f"for {', '.join(nulls[:5])}{' ...' if len(nulls) > 5 else ''}: "
                     "rerun the baseline on data that covers them")
  return results


def normaliser(config, num_classes: int, suite: str) -> str:
  """"baseline" | "alexnet" | "none": what `suite`'s errors are normalised by."""
  how = config.normalizer
  if how == "auto":
    how = ("baseline" if config.baseline_results else
           "alexnet" if suite == "corruptions" and num_classes == 1000 else "none")
  if how == "alexnet" and suite != "corruptions":
    raise ValueError("AlexNet normalisation exists only for corruptions (ImageNet-C); "
                     "pass --baseline_results for perturbations")
  return how


def normalising_baseline(config, num_classes: int, suite: str) -> dict | None:
  """The baseline results `suite` is normalised by, or None (AlexNet or nothing)."""
  if normaliser(config, num_classes, suite) != "baseline":
    return None
  return load_baseline(config.baseline_results, suite)
