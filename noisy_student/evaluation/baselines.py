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


def _gaps(value, where: str) -> list[str]:
  """Where `value` (a number or nested dicts of numbers) holds null."""
  if value is None:
    return [f"{where} (null)"]
  if isinstance(value, dict):
    return [g for k, v in value.items() for g in _gaps(v, f"{where}.{k}")]
  return []


def load_baseline(path: str, suite: str) -> dict:
  """The results.json at `path`; a ValueError unless it holds `suite`."""
  results = fileio.read_json(path)
  if results.get("suite") != suite:
    raise ValueError(f"--baseline_results={path} holds suite {results.get('suite')!r}, "
                     f"not {suite!r}")
  return results


def check_numbers(results: dict, path: str, suite: str, names=None) -> None:
  """A ValueError unless the baseline `results` (read from `path`) hold a number for
  everything that normalises, of `names` (the corruptions or perturbations this run
  evaluates; all if None). results.json writes NaN, e.g. a mean over no images, as null,
  which would otherwise fail later as a TypeError naming nothing."""
  gaps = []
  for field in NORMALISING_FIELDS.get(suite, ()):
    values = results.get(field)
    if not isinstance(values, dict):
      gaps.append(f"{field} (missing)")
      continue
    for name in (values if names is None else names):
      gaps += (_gaps(values[name], f"{field}.{name}") if name in values
               else [f"{field}.{name} (missing)"])
  if gaps:
    raise ValueError(f"--baseline_results={path} has no number for "
                     f"{', '.join(gaps[:5])}{' ...' if len(gaps) > 5 else ''}: rerun the "
                     "baseline on the same corruptions / perturbations and data")


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
