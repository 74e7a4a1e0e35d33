"""The model under evaluation: loaded once, compiled inference, its own preprocessing."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import tensorflow as tf

from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources


class Evaluator:
  """A loaded model with compiled inference and its preprocessing.

  `config` is an `noisy_student.evaluate.EvalConfig`; the plug-ins read their settings
  from `evaluator.config`.
  """

  def __init__(self, config):
    from noisy_student.common import model_io  # pylint: disable=g-import-not-at-top
    self.config = config
    self.model, self.model_config = model_io.load_model(config.model)
    self.num_classes = int(self.model_config["num_classes"])
    self.image_size = int(self.model_config["image_size"])
    self.preprocess = model_io.eval_preprocess(self.model_config)
    if config.preprocess_mode != "auto":
      self.preprocess = dataclasses.replace(self.preprocess, mode=config.preprocess_mode)
    self.logits = tf.function(self._logits, reduce_retracing=True)
    # Per source: records read but not scored ({"failed_records", "unlabeled_records"}).
    self.skipped: dict[str, dict[str, int]] = {}

  def _logits(self, images):
    return tf.cast(self.model(images, training=False), tf.float32)

  def batches(self, source: sources.Source) -> Iterator[dict]:
    """`iterate_batches` of `source`; a full pass records its skipped rows."""
    c = self.config
    tally = {"failed_records": 0, "unlabeled_records": 0}
    for batch in sources.iterate_batches(
        source, preprocess=self.preprocess, num_classes=self.num_classes,
        batch_size=c.eval_batch_size, label_offset=c.label_offset,
        max_examples=c.max_examples, max_bad_records=c.max_bad_records):
      tally["failed_records"] += batch["failed"]
      tally["unlabeled_records"] += batch["unlabeled"]
      yield batch
    self.skipped[source.path] = tally

  def skipped_total(self) -> dict[str, int]:
    """Skipped rows summed over the distinct sources read (each counted once)."""
    return {k: sum(t[k] for t in self.skipped.values())
            for k in ("failed_records", "unlabeled_records")}

  def accuracy(self, source: sources.Source, subset=None, top_k=(1, 5)) -> rb.AccuracyMeter:
    """Top-k accuracy over one source; `subset` masks the logits."""
    meter = rb.AccuracyMeter(self.num_classes, top_k)
    for batch in self.batches(source):
      logits = self.logits(batch["image"]).numpy()
      if subset is not None:
        logits = rb.mask_logits(logits, subset)
      meter.update(logits, batch["label"], batch["valid"])
    return meter
