r"""Evaluates a trained model: accuracy, ImageNet-A/-C/-P-style robustness, FGSM / PGD.

The measurements of the paper's Sec. 3.3 (Tables 2-4, Fig. 7) for any model and dataset:

  python -m noisy_student.evaluate --model=MODEL_DIR_OR_KERAS --suite=SUITE \
      --output_dir=DIR [--data_pattern=TFRECORDS | --image_folder=ROOT] ...

  clean          top-1 / top-5 (the exported model already holds the EMA weights),
                 --per_class for per-class top-1.
  imagenet_a     top-1 / top-5 among a class subset (logits outside it are masked):
                 --class_subset=imagenet_a (the 200 ImageNet-A classes; the default for
                 1000-class models) | "3,5,7" | FILE.
  corruptions    ImageNet-C: --corruption_pattern='.../{corruption}/{severity}/*.tfrecord'
                 (e.g. from data.make_corrupted) or --corruption_root=ROOT with
                 ROOT/<corruption>/<severity>/<class>/*.JPEG; errors per corruption and
                 severity, CE / mCE, and with the clean set (--data_pattern) relative mCE.
  perturbations  ImageNet-P-style sequences built from the clean set (data.perturbations);
                 flip probability, top-5 distance, FR / mFR.
  adversarial    FGSM and PGD in pixel space, accuracy per --epsilons (0-255 units).

Normalisation (corruptions, perturbations): --normalizer=auto uses --baseline_results
(the results.json of the same suite for a baseline model, e.g. the teacher) when given;
else AlexNet's ImageNet-C errors for 1000-class models; else none (raw errors only, and
the output says so). AlexNet's ImageNet-P flip rates are not included: mFR always needs a
baseline model.

Output in --output_dir (one directory per suite): results.json (all numbers; top-level
"top1"/"top5" for clean and imagenet_a), results.md (a readable table) and PNG plots
(accuracy vs severity, flip probability per perturbation, accuracy vs epsilon); every file
written atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from data import perturbations as perturb
from data import pipeline
from noisy_student import attacks as attack_lib
from noisy_student import robustness as rb
from noisy_student.evaluators import baselines
from noisy_student.evaluators import model
from noisy_student.evaluators import outputs
from noisy_student.evaluators import sources

SUITES = ("clean", "imagenet_a", "corruptions", "perturbations", "adversarial")
NORMALIZERS = ("auto", "alexnet", "baseline", "none")
IMAGE_EXTENSIONS = sources.IMAGE_EXTENSIONS
RESULTS_JSON, RESULTS_MD = outputs.RESULTS_JSON, outputs.RESULTS_MD
# The shared pieces, importable from here as before.
Source, folder_files, folder_dataset, iterate_batches = (
    sources.Source, sources.folder_files, sources.folder_dataset, sources.iterate_batches)
clean_source = sources.clean_source
Evaluator = model.Evaluator
load_baseline = baselines.load_baseline
write_outputs = outputs.write_outputs
_pct, _num = outputs.pct, outputs.num


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate; see the module docstring and the flags of `main`."""
  model: str
  suite: str
  output_dir: str
  data_pattern: str = ""
  image_folder: str = ""
  batch_size: int = 256
  label_offset: int = 0
  max_examples: int = 0
  max_bad_records: int = pipeline.DEFAULT_MAX_BAD_RECORDS
  preprocess_mode: str = "auto"
  per_class: bool = False
  class_subset: str = ""
  corruption_pattern: str = ""
  corruption_root: str = ""
  corruptions: tuple[str, ...] = rb.CORRUPTIONS
  severities: tuple[int, ...] = rb.SEVERITIES
  baseline_results: str = ""
  normalizer: str = "auto"
  alexnet_clean_error: float = rb.ALEXNET_CLEAN_ERROR
  perturbations: tuple[str, ...] = perturb.PERTURBATIONS
  num_frames: int = perturb.DEFAULT_NUM_FRAMES
  fill_mode: str = "reflect"
  attacks: tuple[str, ...] = ("fgsm", "pgd")
  epsilons: tuple[float, ...] = (0, 1, 2, 4, 8, 16)
  pgd_steps: int = 10
  pgd_step_size: float = 0.0       # 0: 2.5 * epsilon / steps
  pgd_random_start: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.suite not in SUITES:
      raise ValueError(f"suite must be one of {SUITES}, got {self.suite!r}")
    if self.normalizer not in NORMALIZERS:
      raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
    needs_clean = self.suite in ("clean", "imagenet_a", "perturbations", "adversarial")
    if needs_clean and not (self.data_pattern or self.image_folder):
      raise ValueError(f"--suite={self.suite} needs --data_pattern or --image_folder")
    if self.data_pattern and self.image_folder:
      raise ValueError("give --data_pattern or --image_folder, not both")
    if self.suite == "corruptions" and bool(self.corruption_pattern) == bool(
        self.corruption_root):
      raise ValueError("--suite=corruptions needs exactly one of --corruption_pattern "
                       "and --corruption_root")
    if self.normalizer == "baseline" and not self.baseline_results:
      raise ValueError("--normalizer=baseline needs --baseline_results")
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
    if self.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
    for name in ("max_examples", "max_bad_records"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


# ----------------------------------------------------------------- clean / subset


def run_accuracy(ev: Evaluator) -> tuple[dict, str, dict]:
  """clean and imagenet_a: top-1 / top-5, optionally among a class subset."""
  c = ev.config
  subset = None
  if c.suite == "imagenet_a" or c.class_subset:
    spec = c.class_subset or ("imagenet_a" if ev.num_classes == 1000 else "")
    if not spec:
      raise ValueError(f"a {ev.num_classes}-class model needs --class_subset (the default "
                       "ImageNet-A subset is for 1000-class models)")
    subset = rb.parse_class_subset(spec)
  label_map = None
  if c.image_folder and subset is not None:
    n = len(folder_files(c.image_folder)[2])
    label_map = subset if n == len(subset) and n != ev.num_classes else None
  meter = ev.accuracy(clean_source(c, label_map), subset)
  results = meter.result()
  if subset is not None:
    results["class_subset"] = list(subset)
  if c.per_class:
    results["per_class_top1"] = {str(k): v for k, v in meter.per_class().items()}
  title = "Top-1 / top-5" + (f" among {len(subset)} classes (masked logits)" if subset else "")
  lines = [f"## {title}", "", "| examples | top-1 % | top-5 % |", "|---|---|---|",
           f"| {results['count']} | {_pct(results['top1'])} | {_pct(results['top5'])} |"]
  if c.per_class:
    lines += ["", "| class | top-1 % |", "|---|---|"]
    lines += [f"| {k} | {_pct(v)} |" for k, v in results["per_class_top1"].items()]
  plots = {}
  if c.per_class:
    plots["per_class"] = lambda ax: _bar(ax, results["per_class_top1"], "top-1 accuracy",
                                         "class")
  return results, "\n".join(lines), plots


# ---------------------------------------------------------------------- corruptions


def corruption_source(config: EvalConfig, corruption: str, severity: int) -> Source:
  if config.corruption_pattern:
    pattern = config.corruption_pattern.format(corruption=corruption, severity=severity)
    return Source("tfrecord", pattern)
  return Source("folder", os.path.join(config.corruption_root, corruption, str(severity)),
                crop=False)


def _normalisation(config: EvalConfig, num_classes: int, suite: str) -> tuple[str, dict | None]:
  """("baseline" | "alexnet" | "none", the baseline results or None)."""
  how = config.normalizer
  if how == "auto":
    how = ("baseline" if config.baseline_results else
           "alexnet" if suite == "corruptions" and num_classes == 1000 else "none")
  if how == "alexnet" and suite != "corruptions":
    raise ValueError("AlexNet normalisation exists only for corruptions (ImageNet-C); "
                     "pass --baseline_results for perturbations")
  baseline = load_baseline(config.baseline_results, suite) if how == "baseline" else None
  return how, baseline


def run_corruptions(ev: Evaluator) -> tuple[dict, str, dict]:
  c = ev.config
  how, baseline = _normalisation(c, ev.num_classes, "corruptions")
  errors, top5_errors, counts = {}, {}, {}
  for corruption in c.corruptions:
    errors[corruption], top5_errors[corruption], counts[corruption] = {}, {}, {}
    for severity in c.severities:
      meter = ev.accuracy(corruption_source(c, corruption, severity))
      res = meter.result()
      errors[corruption][severity] = 1 - res["top1"]
      top5_errors[corruption][severity] = 1 - res["top5"]
      counts[corruption][severity] = res["count"]
      print(f"  {corruption} {severity}: top-1 error {_pct(errors[corruption][severity])}%",
            flush=True)
  results = {"errors": errors, "top5_errors": top5_errors, "counts": counts,
             "mean_error": float(np.mean([e for v in errors.values() for e in v.values()])),
             "clean_error": None, "severities": list(c.severities)}
  if c.data_pattern or c.image_folder:
    meter = ev.accuracy(clean_source(c))
    results["clean_error"] = 1 - meter.result()["top1"]
  results["normalization"] = _corruption_normalisation(how, baseline, c, results)
  return results, _corruption_table(results), {"accuracy_vs_severity": (
      lambda ax: _severity_plot(ax, results, baseline))}


def _corruption_normalisation(how: str, baseline: dict | None, c: EvalConfig,
                              results: dict) -> dict:
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
    base_errors, base_clean = baseline["errors"], baseline.get("clean_error")
    info = {"by": "baseline", "baseline_results": c.baseline_results,
            "baseline_model": baseline.get("model"),
            "note": "CE normalised by the baseline model's errors on the same corruptions "
            "and severities (the baseline scores 100), not by AlexNet"}
  results.update(rb.corruption_summary(results["errors"], base_errors, results["clean_error"],
                                       base_clean))
  info["baseline_clean_error"] = base_clean
  if "relative_mce" not in results:
    info["relative_note"] = ("relative mCE needs both clean errors: pass --data_pattern "
                             "(and a baseline evaluated with it)")
  return info


def _corruption_table(r: dict) -> str:
  sev = r["severities"]
  head = "| corruption | " + " | ".join(f"s{s} err %" for s in sev) + " | mean err % |"
  has_ce = "ce" in r
  if has_ce:
    head += " CE | rel. CE |"
  lines = ["## Corruption errors (top-1)", "", head, "|" + "---|" * (len(sev) + 2 + 2 * has_ce)]
  for corr, per in r["errors"].items():
    row = f"| {corr} | " + " | ".join(_pct(per[s]) for s in sev)
    row += f" | {_pct(np.mean(list(per.values())))} |"
    if has_ce:
      row += f" {_num(r['ce'][corr])} | {_num(r.get('relative_ce', {}).get(corr))} |"
    lines.append(row)
  lines += ["", f"- mean error: {_pct(r['mean_error'])}%",
            f"- clean error: {_pct(r['clean_error'])}%"]
  if has_ce:
    lines += [f"- **mCE: {_num(r['mce'])}**", f"- relative mCE: {_num(r.get('relative_mce'))}"]
    if r.get("unnormalised"):
      lines.append(f"- left out of mCE (the baseline made no error): {r['unnormalised']}")
  lines.append(f"- normalisation: {r['normalization']['note']}")
  return "\n".join(lines)


# -------------------------------------------------------------------- perturbations


def _sequence_logits_fn(ev: Evaluator, name: str) -> Callable:
  c = ev.config

  @tf.function(reduce_retracing=True)
  def run(images, ids):
    def one(args):
      image, image_id = args
      return perturb.perturbation_sequence(
          image, name, num_frames=c.num_frames, seed=perturb.image_seed(image_id, c.seed),
          fill_mode=c.fill_mode)
    frames = tf.map_fn(one, (images, ids), fn_output_signature=tf.float32)
    shape = tf.shape(frames)
    logits = ev._logits(tf.reshape(frames, tf.concat([[-1], shape[2:]], 0)))
    return tf.reshape(logits, [shape[0], shape[1], -1])
  return run


def perturbation_predictions(ev: Evaluator, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(top-1 [n, frames], top-5 [n, frames, 5], labels [n]) over the clean source."""
  c = ev.config
  fn = _sequence_logits_fn(ev, name)
  chunk = max(1, c.batch_size // c.num_frames)
  top1, top5, labels = [], [], []
  for batch in ev.batches(clean_source(c)):
    images, ids = batch["image"][batch["valid"]], batch["id"][batch["valid"]]
    for i in range(0, len(images), chunk):
      logits = fn(images[i:i + chunk], ids[i:i + chunk]).numpy()
      k, f = logits.shape[:2]
      ranked = rb.top_k_predictions(logits.reshape(k * f, -1), 5).reshape(k, f, -1)
      top1.append(ranked[..., 0])
      top5.append(ranked)
    labels.append(batch["label"][batch["valid"]])
  return np.concatenate(top1), np.concatenate(top5), np.concatenate(labels)


def run_perturbations(ev: Evaluator) -> tuple[dict, str, dict]:
  c = ev.config
  how, baseline = _normalisation(c, ev.num_classes, "perturbations")
  if baseline is not None:
    for key in ("num_frames", "seed", "fill_mode"):
      if baseline.get(key) != getattr(c, key):
        raise ValueError(f"baseline results used {key}={baseline.get(key)!r}, this run "
                         f"{getattr(c, key)!r}: flip rates are comparable only on the "
                         "same sequences")
  fp, t5d, frame_acc = {}, {}, {}
  for name in c.perturbations:
    top1, top5, labels = perturbation_predictions(ev, name)
    noise = rb.is_noise_perturbation(name)
    fp[name] = rb.flip_probability(top1, noise=noise)
    t5d[name] = rb.top5_distance_mean(top5, noise=noise)
    frame_acc[name] = float(np.mean(top1 == labels[:, None]))
    print(f"  {name}: flip probability {_pct(fp[name])}%", flush=True)
  results = {"num_frames": c.num_frames, "seed": c.seed, "fill_mode": c.fill_mode,
             "count": int(len(labels)) if c.perturbations else 0,
             "rule": {p: "first frame" if rb.is_noise_perturbation(p) else "previous frame"
                      for p in c.perturbations},
             "flip_probability": fp, "top5_distance": t5d, "frame_accuracy": frame_acc,
             "mean_flip_probability": float(np.mean(list(fp.values())))}
  if baseline is not None:
    fr = rb.flip_rate_summary(fp, baseline["flip_probability"])
    t5 = rb.flip_rate_summary(t5d, baseline["top5_distance"])
    results.update(fr=fr["fr"], mfr=fr["mfr"], t5d_ratio=t5["fr"], mt5d=t5["mfr"])
    results["normalization"] = {
        "by": "baseline", "baseline_results": c.baseline_results,
        "baseline_model": baseline.get("model"), "unnormalised": fr["unnormalised"],
        "note": "FR = flip probability / the baseline model's on the same sequences "
        "(baseline = 100); not AlexNet's ImageNet-P flip rates"}
  else:
    results["normalization"] = {"by": "none", "note": "no --baseline_results: raw flip "
                                "probabilities only (AlexNet's ImageNet-P flip rates are "
                                "not included)"}
  return results, _perturbation_table(results, baseline), {
      "flip_probability": lambda ax: _fp_plot(ax, results, baseline)}


def _perturbation_table(r: dict, baseline: dict | None) -> str:
  head = "| perturbation | rule | flip prob. % | top-5 dist. | frame acc. % |"
  sep = "|---|---|---|---|---|"
  if baseline is not None:
    head += " baseline FP % | FR | T5D ratio |"
    sep += "---|---|---|"
  lines = [f"## Perturbation sequences ({r['num_frames']} frames, seed {r['seed']})", "",
           head, sep]
  for p, fp in r["flip_probability"].items():
    row = (f"| {p} | {r['rule'][p]} | {_pct(fp)} | {_num(r['top5_distance'][p])} | "
           f"{_pct(r['frame_accuracy'][p])} |")
    if baseline is not None:
      row += (f" {_pct(baseline['flip_probability'].get(p))} | {_num(r['fr'].get(p))} | "
              f"{_num(r['t5d_ratio'].get(p))} |")
    lines.append(row)
  lines += ["", f"- mean flip probability: {_pct(r['mean_flip_probability'])}%"]
  if baseline is not None:
    lines += [f"- **mFR: {_num(r['mfr'])}**", f"- mT5D: {_num(r['mt5d'])}"]
    if r["normalization"]["unnormalised"]:
      lines.append("- left out of mFR (the baseline never flips): "
                   f"{r['normalization']['unnormalised']}")
  lines.append(f"- normalisation: {r['normalization']['note']}")
  return "\n".join(lines)


# ---------------------------------------------------------------------- adversarial


def run_adversarial(ev: Evaluator) -> tuple[dict, str, dict]:
  c = ev.config
  baseline = load_baseline(c.baseline_results, "adversarial") if c.baseline_results else None
  step_size = c.pgd_step_size or None
  fns = {a: attack_lib.make_attack_fn(ev._logits, a, steps=c.pgd_steps, step_size=step_size,
                                      random_start=c.pgd_random_start) for a in c.attacks}
  meters = {(a, e): rb.AccuracyMeter(ev.num_classes) for a in c.attacks for e in c.epsilons}
  for index, batch in enumerate(ev.batches(clean_source(c))):
    # Padding rows get label 0 only so the loss is defined; they are not counted.
    labels = np.where(batch["valid"], batch["label"], 0)
    for a in c.attacks:
      for e in c.epsilons:
        adv = fns[a](batch["image"], labels, float(e), seed=(c.seed, index))
        meters[(a, e)].update(ev.logits(adv).numpy(), batch["label"], batch["valid"])
  accuracy = {a: {_eps_key(e): meters[(a, e)].result()["top1"] for e in c.epsilons}
              for a in c.attacks}
  results = {"epsilons": list(c.epsilons), "accuracy": accuracy,
             "top5": {a: {_eps_key(e): meters[(a, e)].result()["top5"] for e in c.epsilons}
                      for a in c.attacks},
             "count": meters[(c.attacks[0], c.epsilons[0])].count,
             "pgd": {"steps": c.pgd_steps, "random_start": c.pgd_random_start,
                     "step_size": c.pgd_step_size or "2.5 * epsilon / steps"},
             "units": "epsilon in 0-255 pixel units, L-infinity, on the model input"}
  if baseline is not None:
    results["baseline_results"] = c.baseline_results
  return results, _adversarial_table(results, baseline), {
      "accuracy_vs_epsilon": lambda ax: _epsilon_plot(ax, results, baseline)}


def _eps_key(e) -> str:
  return f"{float(e):g}"


def _adversarial_table(r: dict, baseline: dict | None) -> str:
  attacks = list(r["accuracy"])
  cols = [a.upper() + " acc. %" for a in attacks]
  if baseline is not None:
    cols += [f"baseline {a.upper()} %" for a in attacks if a in baseline["accuracy"]]
  lines = [f"## Adversarial accuracy (top-1, {r['count']} images; {r['units']})", "",
           "| epsilon | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for e in r["epsilons"]:
    k = _eps_key(e)
    row = [_pct(r["accuracy"][a][k]) for a in attacks]
    if baseline is not None:
      row += [_pct(baseline["accuracy"][a].get(k)) for a in attacks if a in baseline["accuracy"]]
    lines.append(f"| {k} | " + " | ".join(row) + " |")
  pgd = r["pgd"]
  lines += ["", f"- PGD: {pgd['steps']} steps, step size {pgd['step_size']}, "
            f"random start {pgd['random_start']}"]
  return "\n".join(lines)


# -------------------------------------------------------------------------- plots


def _bar(ax, values: dict, ylabel: str, xlabel: str):
  ax.bar(np.arange(len(values)), [100 * v for v in values.values()])
  ax.set_xticks(np.arange(len(values)), list(values))
  ax.set_ylabel(ylabel + " (%)")
  ax.set_xlabel(xlabel)


def _severity_plot(ax, r: dict, baseline: dict | None):
  sev = r["severities"]
  for corr, per in r["errors"].items():
    ax.plot(sev, [100 * (1 - per[s]) for s in sev], alpha=0.45, lw=1, label=corr)
  mean = [100 * (1 - np.mean([per[s] for per in r["errors"].values()])) for s in sev]
  ax.plot(sev, mean, "k-o", lw=2.5, label="this model (mean)")
  if baseline is not None:
    base = [100 * (1 - np.mean([baseline["errors"][c][str(s)] for c in r["errors"]]))
            for s in sev]
    ax.plot(sev, base, "k--s", lw=2, label="baseline (mean)")
  if r.get("clean_error") is not None:
    ax.axhline(100 * (1 - r["clean_error"]), color="g", ls=":", label="clean")
  ax.set_xlabel("severity")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_xticks(sev)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.set_title("Accuracy vs corruption severity")


def _fp_plot(ax, r: dict, baseline: dict | None):
  names = list(r["flip_probability"])
  x = np.arange(len(names))
  width = 0.4 if baseline is not None else 0.8
  ax.bar(x, [100 * r["flip_probability"][p] for p in names], width, label="this model")
  if baseline is not None:
    ax.bar(x + width, [100 * baseline["flip_probability"].get(p, np.nan) for p in names],
           width, label="baseline")
  ax.set_xticks(x + (width / 2 if baseline is not None else 0), names, rotation=45,
                ha="right")
  ax.set_ylabel("flip probability (%)")
  ax.legend(fontsize=8)


def _epsilon_plot(ax, r: dict, baseline: dict | None):
  eps = r["epsilons"]
  for a, acc in r["accuracy"].items():
    ax.plot(eps, [100 * acc[_eps_key(e)] for e in eps], "-o", label=a.upper())
    if baseline is not None and a in baseline["accuracy"]:
      ax.plot(eps, [100 * baseline["accuracy"][a].get(_eps_key(e), np.nan) for e in eps],
              "--s", label=f"baseline {a.upper()}")
  ax.set_xlabel("epsilon (0-255 pixel units)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.legend(fontsize=8)


def evaluate(config: EvalConfig) -> dict:
  """Runs one suite and writes its outputs; returns the results dict."""
  outputs.check_output_dir(config.output_dir, config.suite)
  start = time.time()
  ev = Evaluator(config)
  run = {"clean": run_accuracy, "imagenet_a": run_accuracy, "corruptions": run_corruptions,
         "perturbations": run_perturbations, "adversarial": run_adversarial}[config.suite]
  results, table, plots = run(ev)
  data = (config.corruption_pattern or config.corruption_root
          if config.suite == "corruptions" else config.data_pattern or config.image_folder)
  skipped = ev.skipped_total()
  results = {"suite": config.suite, "model": config.model, "model_config": ev.model_config,
             "data": data, "config": dataclasses.asdict(config),
             "seconds": round(time.time() - start, 1), **results, **skipped}
  if len(ev.skipped) > 1:
    results["skipped_by_source"] = ev.skipped
  table += (f"\n\n- not scored: {skipped['unlabeled_records']} records without a label, "
            f"{skipped['failed_records']} records that do not decode or whose label is "
            f"outside [0, {ev.num_classes})")
  write_outputs(config.output_dir, results, table, plots)
  return results


def config_from_flags(f) -> EvalConfig:
  """The EvalConfig of parsed absl flags (`FLAGS` or a FlagValues from `define_flags`)."""
  floats = lambda s: tuple(float(x) for x in s.split(",") if x.strip())
  names = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
  corruptions = rb.CORRUPTIONS if f.corruptions == "all" else names(f.corruptions)
  perturbations = (perturb.PERTURBATIONS if f.perturbations == "all"
                   else names(f.perturbations))
  return EvalConfig(
      model=f.model, suite=f.suite, output_dir=f.output_dir, data_pattern=f.data_pattern,
      image_folder=f.image_folder, batch_size=f.batch_size, label_offset=f.label_offset,
      max_examples=f.max_examples, max_bad_records=f.max_bad_records,
      preprocess_mode=f.preprocess_mode, per_class=f.per_class,
      class_subset=f.class_subset, corruption_pattern=f.corruption_pattern,
      corruption_root=f.corruption_root, corruptions=corruptions,
      severities=tuple(int(s) for s in names(f.severities)),
      baseline_results=f.baseline_results, normalizer=f.normalizer,
      alexnet_clean_error=f.alexnet_clean_error, perturbations=perturbations,
      num_frames=f.num_frames, fill_mode=f.fill_mode, attacks=names(f.attacks),
      epsilons=floats(f.epsilons), pgd_steps=f.pgd_steps, pgd_step_size=f.pgd_step_size,
      pgd_random_start=f.pgd_random_start, seed=f.seed)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = config_from_flags(flags.FLAGS)
  evaluate(config)
  with tf.io.gfile.GFile(os.path.join(config.output_dir, RESULTS_MD)) as md:
    print(md.read())


def define_flags(flag_values=None):
  """Defines the entry's flags (on `flag_values`, default absl's global FLAGS)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  kw = {"flag_values": fv}
  flags.DEFINE_string("model", None, "A model_dir (model.keras + model_config.json) or a "
                      ".keras file.", **kw)
  flags.DEFINE_enum("suite", "clean", list(SUITES), "What to measure.", **kw)
  flags.DEFINE_string("output_dir", None, "results.json, results.md and plots go here "
                      "(one directory per suite).", **kw)
  flags.DEFINE_string("data_pattern", "", "Clean eval TFRecords (glob or comma list).", **kw)
  flags.DEFINE_string("image_folder", "", "Or a class-folder tree ROOT/<class>/<image>.",
                      **kw)
  flags.DEFINE_integer("batch_size", 256, "Images per model call.", **kw)
  flags.DEFINE_integer("label_offset", 0, "1 for 1-based ImageNet TPU TFRecords.", **kw)
  flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N images (0: all).", **kw)
  flags.DEFINE_integer("max_bad_records", pipeline.DEFAULT_MAX_BAD_RECORDS,
                       "Records that do not decode or have a label out of range are "
                       "skipped and counted; more than this many per data source stop the "
                       "run.", **kw)
  flags.DEFINE_enum("preprocess_mode", "auto", ["auto", "imagenet", "small"],
                    "Eval preprocessing; auto: the model's stored preprocess_mode (older "
                    "model dirs: small for small-image models).", **kw)
  flags.DEFINE_bool("per_class", False, "clean: also per-class top-1.", **kw)
  flags.DEFINE_string("class_subset", "", "imagenet_a | comma list | FILE of class indices.",
                      **kw)
  flags.DEFINE_string("corruption_pattern", "", "TFRecords with {corruption} and "
                      "{severity} placeholders.", **kw)
  flags.DEFINE_string("corruption_root", "", "ImageNet-C folders ROOT/<corruption>/"
                      "<severity>/<class>/*.JPEG.", **kw)
  flags.DEFINE_string("corruptions", "all", "all (the 15 ImageNet-C ones) or a list.", **kw)
  flags.DEFINE_string("severities", "1,2,3,4,5", "Severities to evaluate.", **kw)
  flags.DEFINE_string("baseline_results", "", "results.json of the same suite for a "
                      "baseline model: normalises CE / FR by it.", **kw)
  flags.DEFINE_enum("normalizer", "auto", list(NORMALIZERS), "auto: baseline if given, "
                    "else AlexNet for 1000-class corruptions, else none.", **kw)
  flags.DEFINE_float("alexnet_clean_error", rb.ALEXNET_CLEAN_ERROR,
                     "AlexNet's clean ImageNet error for the AlexNet-relative mCE.", **kw)
  flags.DEFINE_string("perturbations", "all", "all or a list of " +
                      ",".join(perturb.PERTURBATIONS), **kw)
  flags.DEFINE_integer("num_frames", perturb.DEFAULT_NUM_FRAMES, "Frames per sequence.",
                       **kw)
  flags.DEFINE_enum("fill_mode", "reflect", ["reflect", "nearest", "wrap", "constant"],
                    "Fill outside the image for geometric perturbations.", **kw)
  flags.DEFINE_string("attacks", "fgsm,pgd", "Attacks to run.", **kw)
  flags.DEFINE_string("epsilons", "0,1,2,4,8,16", "L-inf budgets in 0-255 pixel units.",
                      **kw)
  flags.DEFINE_integer("pgd_steps", 10, "PGD steps.", **kw)
  flags.DEFINE_float("pgd_step_size", 0.0, "PGD step (pixel units); 0: 2.5*eps/steps.", **kw)
  flags.DEFINE_bool("pgd_random_start", True, "PGD starts at a random point of the ball.",
                    **kw)
  flags.DEFINE_integer("seed", 0, "Seed of perturbation sequences and PGD starts.", **kw)
  flags.mark_flags_as_required(["model", "output_dir"], flag_values=fv)


if __name__ == "__main__":
  from data import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
