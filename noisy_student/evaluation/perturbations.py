"""perturbations: ImageNet-P-style flip probability, top-5 distance, FR / mFR (Sec. 3.3).

Sequences are built from the clean set (data.robustness.perturbations), deterministically per image
id (or, for a record without one, its position) and --seed, so two models (a model and
its baseline) see identical frames. Noise
perturbations compare every frame with the first, the others with the previous frame.
AlexNet's ImageNet-P flip rates are not included: FR / mFR always need a baseline model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from data.robustness import perturbations as perturb
from noisy_student.evaluation import baselines
from noisy_student.evaluation import outputs
from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources
from noisy_student.evaluation import suite

# Flip rates compare only runs on the same sequences.
SEQUENCE_SETTINGS = ("num_frames", "seed", "fill_mode")


def baseline(config, num_classes: int) -> dict | None:
  """The baseline model's perturbation results, checked to use the same sequences."""
  base = baselines.normalising_baseline(config, num_classes, "perturbations")
  if base is not None:
    made_with = base.get("sequences", 1)  # results before the field were version 1
    if made_with != perturb.SEQUENCES_VERSION:
      raise ValueError(f"baseline results {config.baseline_results} were made with "
                       f"perturbation sequences version {made_with}, this code makes "
                       f"version {perturb.SEQUENCES_VERSION} (data/robustness/perturbations.py): "
                       "rerun the baseline's perturbations suite")
    for key in SEQUENCE_SETTINGS:
      if base.get(key) != getattr(config, key):
        raise ValueError(f"baseline results used {key}={base.get(key)!r}, this run "
                         f"{getattr(config, key)!r}: flip rates are comparable only on the "
                         "same sequences")
    baselines.check_numbers(base, config.baseline_results, "perturbations",
                            config.perturbations)
  return base


def _sequence_logits_fn(ev, name: str) -> Callable:
  """(images [k, h, w, 3], ids [k]) -> logits [k, frames, classes] of their sequences.

  The frames are made outside the strategy (the ids are strings, which a TPU does not
  take); the model runs on them under it (`ev.logits`).
  """
  c = ev.config

  @tf.function(reduce_retracing=True)
  def frames_of(images, ids):
    def one(args):
      image, image_id = args
      return perturb.perturbation_sequence(
          image, name, num_frames=c.num_frames, seed=perturb.image_seed(image_id, c.seed),
          fill_mode=c.fill_mode)
    return tf.map_fn(one, (images, ids), fn_output_signature=tf.float32)

  def run(images, ids):
    frames = frames_of(images, ids)
    shape = tf.shape(frames)
    logits = ev.logits(tf.reshape(frames, tf.concat([[-1], shape[2:]], 0)))
    return tf.reshape(logits, [shape[0], shape[1], -1])
  return run


def sequence_ids(ids: np.ndarray, position: int) -> np.ndarray:
  """The ids that seed the sequences: a record's id, or, for a record without one,
  "#<its position among the scored records>", so that records without ids do not all
  share one seed (one noise pattern, one direction) and two models still see the same
  frames."""
  return np.array([i if len(i) else f"#{position + k}".encode() for k, i in enumerate(ids)],
                  dtype=object)


def scored_rows(batches):
  """(images, ids that seed the sequences, labels) of each batch's scored rows; a row
  without an id is numbered by its position over all the batches."""
  position = 0
  for batch in batches:
    valid = batch["valid"]
    ids = sequence_ids(batch["id"][valid], position)
    position += len(ids)
    yield batch["image"][valid], ids, batch["label"][valid]


def perturbation_predictions(ev, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(top-1 [n, frames], top-5 [n, frames, 5], labels [n]) over the clean source."""
  c = ev.config
  fn = _sequence_logits_fn(ev, name)
  chunk = max(1, c.eval_batch_size // c.num_frames)
  top1, top5, labels = [], [], []
  for images, ids, batch_labels in scored_rows(ev.batches(sources.clean_source(c))):
    for i in range(0, len(images), chunk):
      logits = fn(images[i:i + chunk], ids[i:i + chunk]).numpy()
      k, f = logits.shape[:2]
      ranked = rb.top_k_predictions(logits.reshape(k * f, -1), 5).reshape(k, f, -1)
      top1.append(ranked[..., 0])
      top5.append(ranked)
    labels.append(batch_labels)
  return np.concatenate(top1), np.concatenate(top5), np.concatenate(labels)


def compute(ev, base: dict | None) -> dict:
  """Flip probability, top-5 distance and frame accuracy per perturbation; FR with a base."""
  c = ev.config
  fp, t5d, frame_acc = {}, {}, {}
  for name in c.perturbations:
    top1, top5, labels = perturbation_predictions(ev, name)
    noise = rb.is_noise_perturbation(name)
    fp[name] = rb.flip_probability(top1, noise=noise)
    t5d[name] = rb.top5_distance_mean(top5, noise=noise)
    # A noise sequence's frame 0 is the clean image: not a perturbed frame.
    perturbed = top1[:, 1:] if noise else top1
    frame_acc[name] = float(np.mean(perturbed == labels[:, None]))
    print(f"  {name}: flip probability {outputs.pct(fp[name])}%", flush=True)
  results = {"sequences": perturb.SEQUENCES_VERSION,
             "num_frames": c.num_frames, "seed": c.seed, "fill_mode": c.fill_mode,
             "count": int(len(labels)) if c.perturbations else 0,
             "rule": {p: "first frame" if rb.is_noise_perturbation(p) else "previous frame"
                      for p in c.perturbations},
             "flip_probability": fp, "top5_distance": t5d, "frame_accuracy": frame_acc,
             "mean_flip_probability": float(np.mean(list(fp.values())))}
  if base is not None:
    fr = rb.flip_rate_summary(fp, base["flip_probability"])
    t5 = rb.flip_rate_summary(t5d, base["top5_distance"])
    results.update(fr=fr["fr"], mfr=fr["mfr"], t5d_ratio=t5["fr"], mt5d=t5["mfr"])
    results["normalization"] = {
        "by": "baseline", "baseline_results": c.baseline_results,
        "baseline_model": base.get("model"), "unnormalised": fr["unnormalised"],
        "note": "FR = flip probability / the baseline model's on the same sequences "
        "(baseline = 100); not AlexNet's ImageNet-P flip rates"}
  else:
    results["normalization"] = {"by": "none", "note": "no --baseline_results: raw flip "
                                "probabilities only (AlexNet's ImageNet-P flip rates are "
                                "not included)"}
  return results


def table(r: dict, base: dict | None) -> str:
  pct, num = outputs.pct, outputs.num
  head = "| perturbation | rule | flip prob. % | top-5 dist. | frame acc. % |"
  sep = "|---|---|---|---|---|"
  if base is not None:
    head += " baseline FP % | FR | T5D ratio |"
    sep += "---|---|---|"
  lines = [f"## Perturbation sequences ({r['num_frames']} frames, seed {r['seed']})", "",
           head, sep]
  for p, fp in r["flip_probability"].items():
    row = (f"| {p} | {r['rule'][p]} | {pct(fp)} | {num(r['top5_distance'][p])} | "
           f"{pct(r['frame_accuracy'][p])} |")
    if base is not None:
      row += (f" {pct(base['flip_probability'].get(p))} | {num(r['fr'].get(p))} | "
              f"{num(r['t5d_ratio'].get(p))} |")
    lines.append(row)
  lines += ["", f"- mean flip probability: {pct(r['mean_flip_probability'])}%"]
  if base is not None:
    lines += [f"- **mFR: {num(r['mfr'])}**", f"- mT5D: {num(r['mt5d'])}"]
    if r["normalization"]["unnormalised"]:
      lines.append("- left out of mFR (the baseline never flips): "
                   f"{r['normalization']['unnormalised']}")
  lines.append(f"- normalisation: {r['normalization']['note']}")
  return "\n".join(lines)


def plots(r: dict, base: dict | None) -> dict:
  return {"flip_probability": lambda ax: _fp_plot(ax, r, base)}


def _fp_plot(ax, r: dict, base: dict | None):
  names = list(r["flip_probability"])
  x = np.arange(len(names))
  width = 0.4 if base is not None else 0.8
  ax.bar(x, [100 * r["flip_probability"][p] for p in names], width, label="this model")
  if base is not None:
    ax.bar(x + width, [100 * base["flip_probability"].get(p, np.nan) for p in names],
           width, label="baseline")
  ax.set_xticks(x + (width / 2 if base is not None else 0), names, rotation=45,
                ha="right")
  ax.set_ylabel("flip probability (%)")
  ax.legend(fontsize=8)


PERTURBATIONS = suite.Suite(compute=compute, table=table, plots=plots, baseline=baseline)
