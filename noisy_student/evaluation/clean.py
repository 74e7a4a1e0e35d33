"""clean and imagenet_a: top-1 / top-5, optionally among a class subset (Sec. 3.3, Table 2).

ImageNet-A (Hendrycks et al. 2021) scores a 1000-way model on 200 classes: logits outside
the subset are masked. clean takes --class_subset too; imagenet_a always uses one
(--class_subset, or the 200 ImageNet-A classes for 1000-class models).
"""

from __future__ import annotations

import functools

import numpy as np

from noisy_student.evaluation import outputs
from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources
from noisy_student.evaluation import suite


def class_subset(config, num_classes: int, always: bool) -> tuple[int, ...] | None:
  """The class subset to mask logits to, or None; `always` for imagenet_a."""
  if not (always or config.class_subset):
    return None
  spec = config.class_subset or ("imagenet_a" if num_classes == 1000 else "")
  if not spec:
    raise ValueError(f"a {num_classes}-class model needs --class_subset (the default "
                     "ImageNet-A subset is for 1000-class models)")
  return rb.parse_class_subset(spec)


def compute(ev, baseline=None, *, always_subset: bool = False) -> dict:
  """{"top1", "top5", "count"} [+ "class_subset", "per_class_top1"]."""
  c = ev.config
  subset = class_subset(c, ev.num_classes, always_subset)
  label_map = None
  if c.image_folder and subset is not None:
    # A folder tree with one folder per subset class: folder i is class subset[i].
    n = len(sources.folder_files(c.image_folder)[2])
    label_map = subset if n == len(subset) and n != ev.num_classes else None
  meter = ev.accuracy(sources.clean_source(c, label_map), subset)
  results = meter.result()
  if subset is not None:
    results["class_subset"] = list(subset)
  if c.per_class:
    results["per_class_top1"] = {str(k): v for k, v in meter.per_class().items()}
  return results


def table(r: dict, baseline=None) -> str:  # pylint: disable=unused-argument
  subset = r.get("class_subset")
  title = "Top-1 / top-5" + (f" among {len(subset)} classes (masked logits)" if subset else "")
  lines = [f"## {title}", "", "| examples | top-1 % | top-5 % |", "|---|---|---|",
           f"| {r['count']} | {outputs.pct(r['top1'])} | {outputs.pct(r['top5'])} |"]
  if "per_class_top1" in r:
    lines += ["", "| class | top-1 % |", "|---|---|"]
    lines += [f"| {k} | {outputs.pct(v)} |" for k, v in r["per_class_top1"].items()]
  return "\n".join(lines)


def plots(r: dict, baseline=None) -> dict:  # pylint: disable=unused-argument
  if "per_class_top1" not in r:
    return {}
  return {"per_class": lambda ax: _bar(ax, r["per_class_top1"], "top-1 accuracy", "class")}


def _bar(ax, values: dict, ylabel: str, xlabel: str):
  ax.bar(np.arange(len(values)), [100 * v for v in values.values()])
  ax.set_xticks(np.arange(len(values)), list(values))
  ax.set_ylabel(ylabel + " (%)")
  ax.set_xlabel(xlabel)


CLEAN = suite.Suite(compute=compute, table=table, plots=plots)
IMAGENET_A = suite.Suite(compute=functools.partial(compute, always_subset=True),
                         table=table, plots=plots)
