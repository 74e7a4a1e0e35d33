"""The model under evaluation: loaded once, compiled inference, its own preprocessing."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import tensorflow as tf

from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources


class Evaluator:
  """A loaded model with compiled inference and its preprocessing.

  `config` is an `noisy_student.evaluate.EvalConfig`; the plug-ins read their settings
  from `evaluator.config`. The model lives under `strategy` (default: the current one),
  and every model call goes through `replicated`: each replica runs its share of a
  batch's rows.
  """

  def __init__(self, config, strategy: tf.distribute.Strategy | None = None):
    from noisy_student.common import model_io  # pylint: disable=g-import-not-at-top
    self.config = config
    self.strategy = strategy or tf.distribute.get_strategy()
    with self.strategy.scope():
      self.model, self.model_config = model_io.load_model(config.model)
    self.num_classes = int(self.model_config["num_classes"])
    self.image_size = int(self.model_config["image_size"])
    self.preprocess = model_io.eval_preprocess(self.model_config)
    if config.preprocess_mode != "auto":
      self.preprocess = dataclasses.replace(self.preprocess, mode=config.preprocess_mode)
    self.logits = self.replicated(self._logits)
    # Per source: records read but not scored ({"failed_records", "unlabeled_records"}).
    self.skipped: dict[str, dict[str, int]] = {}

  def _logits(self, images):
    return tf.cast(self.model(images, training=False), tf.float32)

  def replicated(self, fn: Callable) -> Callable:
    """`fn(*rows, *shared) -> [n, ...]` compiled and run on every replica of the strategy.

    The returned `call(*rows, shared=())` takes `rows`, arrays of one batch (same first
    dimension n), and `shared`, tensors every replica gets whole. With one replica `fn`
    sees the whole batch; with r replicas, replica i gets rows [i*m, (i+1)*m) of the batch
    padded (the last row repeated) to r*m rows, and the outputs come back concatenated
    in row order, padding dropped. Every replica must be this host's (not multi-worker).
    """
    strategy = self.strategy
    replicas = strategy.num_replicas_in_sync
    step = tf.function(lambda rows, shared: strategy.run(fn, args=(*rows, *shared)),
                       reduce_retracing=True)

    def call(*rows, shared=()):
      rows = tuple(tf.convert_to_tensor(r) for r in rows)
      n = int(rows[0].shape[0])
      if replicas > 1:
        rows = _split_rows(strategy, rows, n)
      outputs = strategy.experimental_local_results(step(rows, tuple(shared)))
      return outputs[0] if replicas == 1 else tf.concat(outputs, 0)[:n]
    return call

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


def _split_rows(strategy: tf.distribute.Strategy, rows: tuple, n: int):
  """`rows` as per-replica values: replica i gets rows [i*m, (i+1)*m), m = ceil(n / r),
  after padding to r*m rows with copies of the last row."""
  replicas = strategy.num_replicas_in_sync
  m = -(-n // replicas)
  padded = tuple(tf.concat([r, tf.repeat(r[-1:], m * replicas - n, axis=0)], 0)
                 for r in rows)

  def rows_of(ctx: tf.distribute.ValueContext):
    i = ctx.replica_id_in_sync_group
    return tuple(r[i * m:(i + 1) * m] for r in padded)
  return strategy.experimental_distribute_values_from_function(rows_of)
