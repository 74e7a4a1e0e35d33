"""corruptions: ImageNet-C-style errors per corruption and severity, CE / mCE (Sec. 3.3).

Hendrycks & Dietterich (2019): CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}, mCE its mean
over corruptions, relative mCE the same over (E - E_clean); the base is a baseline model
(--baseline_results), AlexNet (1000 classes) or nothing (raw errors only).
"""

from __future__ import annotations

import os

import numpy as np

from noisy_student.evaluation import baselines
from noisy_student.evaluation import outputs
from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources
from noisy_student.evaluation import suite


def corruption_source(config, corruption: str, severity: int) -> sources.Source:
  """--corruption_pattern with its placeholders filled, or the ImageNet-C folder."""
  if config.corruption_pattern:
    pattern = config.corruption_pattern.format(corruption=corruption, severity=severity)
    return sources.Source("tfrecord", pattern)
  return sources.Source("folder", os.path.join(config.corruption_root, corruption,
                                               str(severity)), crop=False)


def baseline(config, num_classes: int) -> dict | None:
  base = baselines.normalising_baseline(config, num_classes, "corruptions")
  if base is not None:
    baselines.check_numbers(base, config.baseline_results, "corruptions", config.corruptions)
  return base


def compute(ev, base: dict | None) -> dict:
  """Errors per corruption and severity, the clean error, and CE / mCE when normalised."""
  c = ev.config
  how = baselines.normaliser(c, ev.num_classes, "corruptions")
  errors, top5_errors, counts = {}, {}, {}
  for corruption in c.corruptions:
    errors[corruption], top5_errors[corruption], counts[corruption] = {}, {}, {}
    for severity in c.severities:
      res = ev.accuracy(corruption_source(c, corruption, severity)).result()
      errors[corruption][severity] = 1 - res["top1"]
      top5_errors[corruption][severity] = 1 - res["top5"]
      counts[corruption][severity] = res["count"]
      print(f"  {corruption} {severity}: top-1 error "
            f"{outputs.pct(errors[corruption][severity])}%", flush=True)
  results = {"errors": errors, "top5_errors": top5_errors, "counts": counts,
             "mean_error": float(np.mean([e for v in errors.values() for e in v.values()])),
             "clean_error": None, "severities": list(c.severities)}
  if c.eval_pattern or c.image_folder:
    meter = ev.accuracy(sources.clean_source(c))
    results["clean_error"] = 1 - meter.result()["top1"]
  results["normalization"] = _normalise(how, base, c, results)
  return results


def _normalise(how: str, base: dict | None, c, results: dict) -> dict:
  """Fills CE / mCE / relative mCE into `results`; returns the description of the base."""
  if how == "none":
    return {"by": "none", "note": "no AlexNet errors for this dataset and no "
            "--baseline_results: raw errors only (pass a baseline model's corruption "
            "results.json to get CE / mCE relative to it)"}
  if how == "alexnet":
    base_errors, base_clean = rb.ALEXNET_CORRUPTION_ERRORS, c.alexnet_clean_error
    info = {"by": "alexnet", "note": "CE normalised by AlexNet's ImageNet-C errors "
            f"(Hendrycks & Dietterich 2019); AlexNet clean error {base_clean}"}
  else:
    base_errors, base_clean = base["errors"], base.get("clean_error")
    info = {"by": "baseline", "baseline_results": c.baseline_results,
            "baseline_model": base.get("model"),
            "note": "CE normalised by the baseline model's errors on the same corruptions "
            "and severities (the baseline scores 100), not by AlexNet"}
  results.update(rb.corruption_summary(results["errors"], base_errors, results["clean_error"],
                                       base_clean))
  info["baseline_clean_error"] = base_clean
  if "relative_mce" not in results:
    info["relative_note"] = ("relative mCE needs both clean errors: pass --eval_pattern "
                             "(and a baseline evaluated with it)")
  return info


def table(r: dict, base: dict | None = None) -> str:  # pylint: disable=unused-argument
  pct, num = outputs.pct, outputs.num
  sev = r["severities"]
  head = "| corruption | " + " | ".join(f"s{s} err %" for s in sev) + " | mean err % |"
  has_ce = "ce" in r
  if has_ce:
    head += " CE | rel. CE |"
  lines = ["## Corruption errors (top-1)", "", head, "|" + "---|" * (len(sev) + 2 + 2 * has_ce)]
  for corr, per in r["errors"].items():
    row = f"| {corr} | " + " | ".join(pct(per[s]) for s in sev)
    row += f" | {pct(np.mean(list(per.values())))} |"
    if has_ce:
      row += f" {num(r['ce'][corr])} | {num(r.get('relative_ce', {}).get(corr))} |"
    lines.append(row)
  lines += ["", f"- mean error: {pct(r['mean_error'])}%",
            f"- clean error: {pct(r['clean_error'])}%"]
  if has_ce:
    lines += [f"- **mCE: {num(r['mce'])}**", f"- relative mCE: {num(r.get('relative_mce'))}"]
    if r.get("unnormalised"):
      lines.append(f"- left out of mCE (the baseline made no error): {r['unnormalised']}")
  lines.append(f"- normalisation: {r['normalization']['note']}")
  return "\n".join(lines)


def plots(r: dict, base: dict | None) -> dict:
  return {"accuracy_vs_severity": lambda ax: _severity_plot(ax, r, base)}


def _severity_plot(ax, r: dict, base: dict | None):
  sev = r["severities"]
  for corr, per in r["errors"].items():
    ax.plot(sev, [100 * (1 - per[s]) for s in sev], alpha=0.45, lw=1, label=corr)
  mean = [100 * (1 - np.mean([per[s] for per in r["errors"].values()])) for s in sev]
  ax.plot(sev, mean, "k-o", lw=2.5, label="this model (mean)")
  if base is not None:
    base_mean = [100 * (1 - np.mean([base["errors"][c][str(s)] for c in r["errors"]]))
                 for s in sev]
    ax.plot(sev, base_mean, "k--s", lw=2, label="baseline (mean)")
  if r.get("clean_error") is not None:
    ax.axhline(100 * (1 - r["clean_error"]), color="g", ls=":", label="clean")
  ax.set_xlabel("severity")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_xticks(sev)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_title("Accuracy vs corruption severity")


def data(config) -> str:
  return config.corruption_pattern or config.corruption_root


CORRUPTIONS = suite.Suite(compute=compute, table=table, plots=plots, baseline=baseline,
                          data=data, needs_clean_data=False)
