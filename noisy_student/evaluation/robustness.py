"""Robustness metrics of the paper's Sec. 3.3 / Table 4: ImageNet-A, -C and -P.

Pure NumPy, so the numbers can be checked by hand and reused on saved predictions.

* **Accuracy** (`AccuracyMeter`): top-k over the valid rows of padded batches, optionally
  per class. **ImageNet-A** (Hendrycks et al. 2021) evaluates a 1000-way model on 200
  classes: the logits outside the subset are masked out (`mask_logits`) so the argmax and
  the top-5 are taken among the 200 only.
* **ImageNet-C** (Hendrycks & Dietterich 2019): corruption error
  `CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}`, mCE = mean over corruptions, and the
  relative CE that first subtracts each model's clean error. `base` is AlexNet on ImageNet
  (`ALEXNET_CORRUPTION_ERRORS`) or, for any other dataset, a chosen baseline model.
* **ImageNet-P**: flip probability over frame sequences. Noise perturbations (frames are
  independent noise draws) compare every frame with the FIRST frame; the others (frames
  change gradually) compare each frame with the PREVIOUS one. FR = FP / FP^base,
  mFR = mean over perturbations. The top-5 distance (mT5D) is the same with a ranking
  distance instead of a top-1 flip.

Errors and flip probabilities are fractions in [0, 1]; normalised scores (CE, mCE, FR,
mFR) are percentages of the baseline (the baseline itself scores 100), as in the paper.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# AlexNet's ImageNet-C top-1 errors averaged over the 5 severities (Hendrycks & Dietterich, ICLR 2019:
# the normaliser of the ImageNet-C benchmark's mCE),
# in the benchmark's canonical corruption order.
ALEXNET_CORRUPTION_ERRORS = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
CORRUPTIONS = tuple(ALEXNET_CORRUPTION_ERRORS)
SEVERITIES = (1, 2, 3, 4, 5)

# AlexNet's clean ImageNet top-1 error, needed only for the AlexNet-relative mCE. It is
# not part of that table: Hendrycks & Dietterich (2019, Table 1) list 43.5; the torchvision
# AlexNet they evaluate has 56.52% top-1 accuracy. Override with --alexnet_clean_error.
ALEXNET_CLEAN_ERROR = 0.4348

# ImageNet-P: frames of these are independent noise draws (compare with the first frame).
NOISE_PERTURBATIONS = frozenset(
    {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"})

# The 200 ImageNet-1k class indices of ImageNet-A (sorted WordNet-id order, so the i-th
# class folder of ImageNet-A is IMAGENET_A_INDICES[i]).
IMAGENET_A_INDICES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94,
    96, 97, 99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234,
    235, 254, 277, 283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314,
    315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386,
    397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456,
    457, 461, 462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543,
    549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627,
    640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719, 736, 746, 749, 752,
    758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815,
    820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897,
    900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971,
    972, 980, 981, 984, 986, 987, 988)


# --------------------------------------------------------------------------- accuracy


def parse_class_subset(spec: str | Sequence[int]) -> tuple[int, ...]:
  """A class subset from "imagenet_a", a list "1,5,7", or a file of integers.

  The file may separate the integers by commas, spaces or newlines; `#` starts a comment.
  Returns the sorted, de-duplicated indices; raises ValueError when empty.
  """
  if not isinstance(spec, str):
    indices = [int(i) for i in spec]
  elif spec.strip() == "imagenet_a":
    indices = list(IMAGENET_A_INDICES)
  else:
    import tensorflow as tf  # Only here (gs:// files): the rest needs no TensorFlow.
    text = spec
    if tf.io.gfile.exists(spec):
      with tf.io.gfile.GFile(spec) as f:
        text = "\n".join(line.split("#")[0] for line in f)
    indices = [int(tok) for tok in text.replace(",", " ").split()]
  if not indices:
    raise ValueError(f"empty class subset {spec!r}")
  if min(indices) < 0:
    raise ValueError(f"negative class index in subset {spec!r}")
  return tuple(sorted(set(indices)))


def mask_logits(logits: np.ndarray, subset: Sequence[int]) -> np.ndarray:
  """Sets the logits of classes outside `subset` to -inf.

  Args:
    logits: [batch, num_classes] float.
    subset: class indices to keep.
  Returns:
    [batch, num_classes] float32: argmax / top-k now run among the subset only, and
    the class indices keep their meaning (labels need no remapping).
  """
  logits = np.asarray(logits, np.float32)
  if max(subset) >= logits.shape[-1]:
    raise ValueError(f"class subset index {max(subset)} >= num_classes {logits.shape[-1]}")
  keep = np.zeros(logits.shape[-1], bool)
  keep[list(subset)] = True
  return np.where(keep, logits, -np.inf).astype(np.float32)


def top_k_predictions(logits: np.ndarray, k: int) -> np.ndarray:
  """[batch, k] int class indices, best first (ties broken towards the lower index)."""
  logits = np.asarray(logits)
  k = min(k, logits.shape[-1])
  return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """[batch] bool: the label is among the k best classes."""
  top = top_k_predictions(logits, k)
  return (top == np.asarray(labels).reshape(-1, 1)).any(axis=-1)


class AccuracyMeter:
  """Accumulates top-1 / top-k accuracy (and per-class top-1) over padded batches."""

  def __init__(self, num_classes: int, top_k: Sequence[int] = (1, 5)):
    self.num_classes = num_classes
    self.top_k = tuple(top_k)
    self.count = 0
    self.correct = {k: 0 for k in self.top_k}
    self.class_count = np.zeros(num_classes, np.int64)
    self.class_correct = np.zeros(num_classes, np.int64)

  def update(self, logits, labels, mask=None) -> np.ndarray:
    """Adds a batch; rows with mask 0 (padding) or label < 0 are ignored.

    Args:
      logits: [batch, num_classes] float.
      labels: [batch] int, 0-based.
      mask: optional [batch] (1 = real example).
    Returns:
      [batch] bool top-1 correctness of the batch (False on ignored rows).
    """
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1).astype(np.int64)
    valid = labels >= 0
    if mask is not None:
      valid &= np.asarray(mask).reshape(-1) > 0
    logits, labels = logits[valid], labels[valid]
    self.count += len(labels)
    top1 = np.zeros(len(valid), bool)
    for k in self.top_k:
      hit = top_k_correct(logits, labels, k) if len(labels) else np.zeros(0, bool)
      self.correct[k] += int(hit.sum())
      if k == 1:
        top1[valid] = hit
        np.add.at(self.class_count, labels, 1)
        np.add.at(self.class_correct, labels, hit.astype(np.int64))
    return top1

  def result(self) -> dict:
    """{"count": n, "top1": acc, "top5": acc, ...} with accuracies as fractions."""
    out = {"count": self.count}
    for k in self.top_k:
      out[f"top{k}"] = self.correct[k] / self.count if self.count else float("nan")
    return out

  def per_class(self) -> dict:
    """{class index: top-1 accuracy} for the classes that occurred."""
    return {int(c): float(self.class_correct[c] / self.class_count[c])
            for c in np.flatnonzero(self.class_count)}


# ----------------------------------------------------------------------- corruptions


def _mean_over_severities(errors: float | Mapping, severities=None) -> float:
  if isinstance(errors, Mapping):
    values = [errors[s] for s in severities] if severities else list(errors.values())
    return float(np.mean(values))
  return float(errors)


def _severity_keys(errors: Mapping) -> list:
  return sorted(int(s) for s in errors)


def _normalise_keys(errors: Mapping) -> dict:
  """JSON turns severity keys into strings; make them ints again."""
  return {c: ({int(s): float(e) for s, e in v.items()} if isinstance(v, Mapping) else float(v))
          for c, v in errors.items()}


def corruption_summary(errors: Mapping[str, Mapping[int, float]],
                       baseline_errors: Mapping[str, float | Mapping[int, float]],
                       clean_error: float | None = None,
                       baseline_clean_error: float | None = None) -> dict:
  """CE per corruption, mCE and (with both clean errors) relative CE / relative mCE.

  `CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}` over the same severities, i.e. the ratio of
  the means. A baseline given as one number per corruption (AlexNet's table is the mean
  over severities 1-5) requires the model's errors on all five severities.

  Args:
    errors: {corruption: {severity: top-1 error in [0, 1]}} of the model.
    baseline_errors: {corruption: mean error} or {corruption: {severity: error}}.
    clean_error: the model's clean top-1 error (for relative CE).
    baseline_clean_error: the baseline's clean top-1 error (for relative CE).
  Returns:
    {"ce": {c: %}, "mce": %, "relative_ce": {c: %} and "relative_mce": % when both clean
    errors are given, "corruptions": [c, ...]}; percentages of the baseline (baseline = 100).
    A corruption on which the baseline makes no error (or, for relative CE, no more error
    than on clean data) cannot be normalised: its CE is NaN, it is listed under
    "unnormalised" ("relative_unnormalised") and left out of the mean.
  Raises:
    ValueError: a corruption has no baseline, or the severities do not match.
  """
  errors, baseline_errors = _normalise_keys(errors), _normalise_keys(baseline_errors)
  missing = [c for c in errors if c not in baseline_errors]
  if missing:
    raise ValueError(f"no baseline errors for corruptions {missing}")
  ce, rel = {}, {}
  for c, per_severity in errors.items():
    severities = _severity_keys(per_severity)
    base = baseline_errors[c]
    if isinstance(base, Mapping):
      if not set(severities) <= set(base):
        raise ValueError(f"{c}: baseline has severities {_severity_keys(base)}, "
                         f"model {severities}")
    elif severities != list(SEVERITIES):
      raise ValueError(f"{c}: a per-corruption mean baseline (AlexNet) needs severities "
                       f"1-5, got {severities}")
    model_mean = _mean_over_severities(per_severity, severities)
    base_mean = _mean_over_severities(base, severities if isinstance(base, Mapping) else None)
    ce[c] = _ratio(model_mean, base_mean)
    if clean_error is not None and baseline_clean_error is not None:
      rel[c] = _ratio(model_mean - clean_error, base_mean - baseline_clean_error)
  out = {"corruptions": list(errors), "ce": ce, "mce": _finite_mean(ce),
         "unnormalised": [c for c, v in ce.items() if np.isnan(v)]}
  if rel:
    out["relative_ce"] = rel
    out["relative_mce"] = _finite_mean(rel)
    out["relative_unnormalised"] = [c for c, v in rel.items() if np.isnan(v)]
  return out


def _ratio(value: float, base: float) -> float:
  """100 * value / base; NaN where the baseline has no error (nothing to normalise by)."""
  return 100.0 * value / base if base > 0 else float("nan")


def _finite_mean(values: Mapping[str, float]) -> float:
  finite = [v for v in values.values() if not np.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


# ---------------------------------------------------------------------- perturbations


def is_noise_perturbation(name: str) -> bool:
  """Noise perturbations compare with the first frame, the others with the previous."""
  return name in NOISE_PERTURBATIONS


def _reference_frames(num_frames: int, noise: bool) -> tuple[np.ndarray, np.ndarray]:
  """(reference, compared) frame indices of the ImageNet-P pairs, frames 1..n-1."""
  compared = np.arange(1, num_frames)
  reference = np.zeros_like(compared) if noise else compared - 1
  return reference, compared


def flip_probability(predictions: np.ndarray, *, noise: bool) -> float:
  """ImageNet-P flip probability of top-1 predictions over frame sequences.

  `FP = 1/(m(n-1)) sum_i sum_{j=2..n} 1[f(x_j^i) != f(x_ref^i)]` with ref = 1 (the first
  frame) for noise perturbations and ref = j-1 (the previous frame) otherwise.

  Args:
    predictions: [num_sequences, num_frames] int top-1 classes.
    noise: True for noise perturbations (first-frame rule).
  Returns:
    The flip probability in [0, 1].
  """
  predictions = np.asarray(predictions)
  if predictions.ndim != 2 or predictions.shape[1] < 2:
    raise ValueError(f"need [sequences, frames >= 2] predictions, got {predictions.shape}")
  ref, cmp = _reference_frames(predictions.shape[1], noise)
  return float(np.mean(predictions[:, cmp] != predictions[:, ref]))


def top5_distance(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
  """Hendrycks & Dietterich's top-5 ranking distance between two predictions.

  For the i-th class (0-based, i < 5) of the reference ranking with position r_i in the
  other ranking, `d = sum_i |i - min(r_i, 5)|`: 0 for identical top-5 orders, and only
  positions up to 5 matter, so top-5 lists suffice.

  Args:
    reference, other: [..., k >= 5] int class indices, best first.
  Returns:
    [...] int distances.
  """
  reference, other = np.asarray(reference)[..., :5], np.asarray(other)
  k = reference.shape[-1]
  # position of reference[..., i] in `other`; 5 when absent from other's top 5.
  hit = reference[..., :, None] == other[..., None, :5]
  pos = np.where(hit.any(-1), hit.argmax(-1), 5)
  return np.abs(np.arange(k) - np.minimum(pos, 5)).sum(-1)


def top5_distance_mean(top5: np.ndarray, *, noise: bool) -> float:
  """Mean top-5 distance over the ImageNet-P frame pairs (same rule as the flips).

  Args:
    top5: [num_sequences, num_frames, 5] int class indices, best first.
  """
  top5 = np.asarray(top5)
  ref, cmp = _reference_frames(top5.shape[1], noise)
  return float(np.mean(top5_distance(top5[:, ref], top5[:, cmp])))


def flip_rate_summary(flip_probs: Mapping[str, float],
                      baseline_flip_probs: Mapping[str, float]) -> dict:
  """FR_p = FP_p / FP_p^base per perturbation and mFR = mean (percent, baseline = 100).

  Perturbations where the baseline never flips (FP = 0) cannot be normalised; they are
  listed under "unnormalised" and left out of the mean.
  """
  missing = [p for p in flip_probs if p not in baseline_flip_probs]
  if missing:
    raise ValueError(f"no baseline flip probabilities for {missing}")
  fr, skipped = {}, []
  for p, fp in flip_probs.items():
    base = float(baseline_flip_probs[p])
    if base > 0:
      fr[p] = 100.0 * float(fp) / base
    else:
      skipped.append(p)
  return {"fr": fr, "mfr": float(np.mean(list(fr.values()))) if fr else float("nan"),
          "unnormalised": skipped}
