"""adversarial: accuracy under FGSM and PGD per L-infinity budget (Sec. 3.3, Fig. 7).

Attacks (noisy_student.evaluation.attacks) run in pixel space on the model input; epsilons are in
0-255 units. A --baseline_results of this suite is only drawn beside this model's curve.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from noisy_student.evaluation import attacks as attack_lib
from noisy_student.evaluation import baselines
from noisy_student.evaluation import outputs
from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources
from noisy_student.evaluation import suite


def baseline(config, num_classes: int) -> dict | None:  # pylint: disable=unused-argument
  if not config.baseline_results:
    return None
  return baselines.load_baseline(config.baseline_results, "adversarial")


def eps_key(e) -> str:
  """The results key of an epsilon: "0", "0.5", "8"."""
  return f"{float(e):g}"


def _attack_fn(ev, attack: str):
  """`(images, labels, epsilon, seed) -> adversarial images`, run on every replica.

  The step of `attacks.make_attack_fn` under the evaluator's strategy: epsilon and seed
  are shared tensors, so one trace serves every epsilon and batch. With several
  replicas each attacks its rows (PGD's random start then depends on the split).
  """
  c = ev.config
  if attack not in ("fgsm", "pgd"):
    raise ValueError(f"unknown attack {attack!r} (fgsm or pgd)")
  logits_fn = ev._logits  # pylint: disable=protected-access  (differentiated here)

  def replica_fn(images, labels, epsilon, seed):
    if attack == "fgsm":
      return attack_lib.fgsm(logits_fn, images, labels, epsilon)
    size = c.pgd_step_size or epsilon * 2.5 / max(c.pgd_steps, 1)
    return attack_lib.pgd(logits_fn, images, labels, epsilon, steps=c.pgd_steps,
                          step_size=size, random_start=c.pgd_random_start, seed=seed)
  step = ev.replicated(replica_fn)

  def run(images, labels, epsilon: float, seed: tuple[int, int]):
    if float(epsilon) == 0.0:
      return tf.convert_to_tensor(images, tf.float32)
    return step(tf.convert_to_tensor(images, tf.float32), labels,
                shared=(tf.constant(float(epsilon), tf.float32),
                        tf.constant(seed, tf.int32)))
  return run


def compute(ev, base: dict | None) -> dict:
  """Top-1 / top-5 per attack and epsilon over the clean set."""
  c = ev.config
  fns = {a: _attack_fn(ev, a) for a in c.attacks}
  meters = {(a, e): rb.AccuracyMeter(ev.num_classes) for a in c.attacks for e in c.epsilons}
  for index, batch in enumerate(ev.batches(sources.clean_source(c))):
    # Padding rows get label 0 only so the loss is defined; they are not counted.
    labels = np.where(batch["valid"], batch["label"], 0)
    for a in c.attacks:
      for e in c.epsilons:
        adv = fns[a](batch["image"], labels, float(e), seed=(c.seed, index))
        meters[(a, e)].update(ev.logits(adv).numpy(), batch["label"], batch["valid"])
  accuracy = {a: {eps_key(e): meters[(a, e)].result()["top1"] for e in c.epsilons}
              for a in c.attacks}
  results = {"epsilons": list(c.epsilons), "accuracy": accuracy,
             "top5": {a: {eps_key(e): meters[(a, e)].result()["top5"] for e in c.epsilons}
                      for a in c.attacks},
             "count": meters[(c.attacks[0], c.epsilons[0])].count,
             "pgd": {"steps": c.pgd_steps, "random_start": c.pgd_random_start,
                     "step_size": c.pgd_step_size or "2.5 * epsilon / steps"},
             "units": "epsilon in 0-255 pixel units, L-infinity, on the model input"}
  if base is not None:
    results["baseline_results"] = c.baseline_results
  return results


def table(r: dict, base: dict | None) -> str:
  pct = outputs.pct
  attacks = list(r["accuracy"])
  cols = [a.upper() + " acc. %" for a in attacks]
  if base is not None:
    cols += [f"baseline {a.upper()} %" for a in attacks if a in base["accuracy"]]
  lines = [f"## Adversarial accuracy (top-1, {r['count']} images; {r['units']})", "",
           "| epsilon | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for e in r["epsilons"]:
    k = eps_key(e)
    row = [pct(r["accuracy"][a][k]) for a in attacks]
    if base is not None:
      row += [pct(base["accuracy"][a].get(k)) for a in attacks if a in base["accuracy"]]
    lines.append(f"| {k} | " + " | ".join(row) + " |")
  pgd = r["pgd"]
  lines += ["", f"- PGD: {pgd['steps']} steps, step size {pgd['step_size']}, "
            f"random start {pgd['random_start']}"]
  return "\n".join(lines)


def plots(r: dict, base: dict | None) -> dict:
  return {"accuracy_vs_epsilon": lambda ax: _epsilon_plot(ax, r, base)}


def _epsilon_plot(ax, r: dict, base: dict | None):
  eps = r["epsilons"]
  for a, acc in r["accuracy"].items():
    ax.plot(eps, [100 * acc[eps_key(e)] for e in eps], "-o", label=a.upper())
    if base is not None and a in base["accuracy"]:
      ax.plot(eps, [100 * base["accuracy"][a].get(eps_key(e), np.nan) for e in eps],
              "--s", label=f"baseline {a.upper()}")
  ax.set_xlabel("epsilon (0-255 pixel units)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.legend(fontsize=8)


ADVERSARIAL = suite.Suite(compute=compute, table=table, plots=plots, baseline=baseline)
