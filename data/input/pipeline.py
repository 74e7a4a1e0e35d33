"""tf.data input pipelines for training, pseudo-labelling and evaluation.

Every element is a dict of batched tensors; images are float32 [b, S, S, 3] in [0, 255]
(the model normalises). The trainer calls these through
`strategy.distribute_datasets_from_function(lambda ctx: train_dataset(..., input_context=ctx))`:
with an `InputContext`, files are sharded among input pipelines (`shard_files`) and the
batch is the per-replica batch (`ctx.get_per_replica_batch_size(global_batch_size)`).

API (keys of each element):

  train_dataset(file_pattern, *, global_batch_size, preprocess, num_classes,
                input_context=None, seed=0, deterministic=False, label_offset=0,
                shuffle_buffer=16384, initial_epoch=0)
      infinite; {"image", "label" int32 [b], "target" float32 [b, C] one-hot,
      "is_unlabeled" float32 [b] (zeros)}.

  labeled_unlabeled_dataset(labeled_pattern, unlabeled_pattern, *, labeled_batch_size,
                unlabeled_ratio, preprocess, unlabeled_preprocess=None, num_classes,
                label_type="soft", pseudo_labels=True, with_clean_unlabeled=False,
                clean_preprocess=None, input_context=None, seed=0, deterministic=False,
                label_offset=0, shuffle_buffer=16384, initial_epoch=0)
      infinite; B labeled rows then U = ceil(r B) unlabeled rows in ONE batch (paper
      Sec. 2: one forward pass over both): {"image" [B+U, S, S, 3], "label" [B+U]
      (-1 on unlabeled rows), "target" [B+U, C] (labeled: one-hot; unlabeled: the stored
      soft pseudo label, or one-hot(pseudo argmax) for label_type="hard", zeros when
      pseudo_labels=False), "is_unlabeled" [B+U] (0 / 1)}; with_clean_unlabeled adds
      "clean_image" [U, S, S, 3] (eval-preprocessed, for an in-graph teacher).

  eval_dataset(file_pattern, *, global_batch_size, preprocess, num_classes,
               input_context=None, label_offset=0, keep_encoded=False, with_pseudo=False,
               num_batches=None, files=None)
      finite; every record exactly once, in file order, eval preprocessing, fixed batch
      shape (the last batch is padded): {"image", "label" int32 [b] (-1: unlabeled or
      padding), "hidden_label" int32 [b], "id" string [b], "mask" float32 [b] (1: a real
      row, 0: padding), "ok" float32 [b] (0: the record could not be parsed or its image
      decoded; the row holds a zero image and is NOT dropped, so callers count it)},
      + "encoded" string [b] (the untouched bytes) with keep_encoded, + "pseudo_probs"
      [b, C], "pseudo_label", "pseudo_confidence" with with_pseudo. `files` (e.g. a
      labelling job's `shard_files(...)`) replaces the pattern's file list.

  shard_files(files, shard_index, num_shards) -> the files of one job/pipeline.
  unlabeled_batch_size(unlabeled_ratio, labeled_batch_size, unlabeled_pattern) -> U =
      ceil(r B), the one computation and check of the unlabeled part of a batch.
  num_eval_batches(file_pattern, *, global_batch_size, input_context=None) -> the batch
      count every eval pipeline needs so that all run the same number of steps.

Determinism and per-example noise. The training streams are a sequence of epochs; epoch e
shuffles the files and the records with seeds derived from (seed, stream, pipeline, e),
i.e. shuffle-then-repeat with a known epoch index. Each record's augmentation seed is
derived from (seed, stream, e, file index, record index in its file), so a record gets
the same noise in two runs with the same seed whatever the parallelism or the order it
arrives in, different noise every epoch, and duplicated records (balanced pseudo labels)
get different noise. `deterministic=True` also fixes the order (tests, resumption).

A run resumed at labeled epoch e (`initial_epoch`) restarts the labeled stream at epoch e
and the unlabeled stream at pass e * UNLABELED_PASSES_PER_EPOCH: the unlabeled set has
its own length, so which of its passes was in progress is unknown here, and starting it
at pass e too could replay, order and noise alike, a pass the run already took. Passes
numbered in blocks per labeled epoch are fresh unless the run is resumed twice in one
labeled epoch, which replays the labeled epoch too.

Labels outside [0, num_classes) fail with a tf.debugging assertion that names the problem
(in eval, -1 is allowed: unlabeled images). `label_offset=1` reads ImageNet TFRecords made
by the TPU conversion script (1-based labels).
"""

from __future__ import annotations

import dataclasses
import math
import re

import tensorflow as tf

from data import fileio
from data.input import preprocessing
from data.input.preprocessing import preprocess_image
from data.input.preprocessing import PreprocessConfig
from data.records import schema
from data.records import shards

AUTOTUNE = tf.data.AUTOTUNE
# Pseudo-label targets: the stored distribution, or one-hot of its argmax. The one tuple
# (noisy_student.training.losses and the flags read it).
LABEL_TYPES = ("soft", "hard")
# Stream tags folded into seeds so that the streams draw independent noise.
_LABELED, _UNLABELED = 0, 1
_MAX_CYCLE = 16
_EVAL_CHUNK = 16
_TRAIN_CHUNK = 64
# Why a training record is skipped: the "bad" code its decoding returns (0: kept).
_BAD_UNREADABLE, _BAD_LABEL, _BAD_UNLABELED, _BAD_NO_PSEUDO = 1, 2, 3, 4
DEFAULT_MAX_BAD_RECORDS = 1000
_TOO_MANY = "bad records skipped, more than max_bad_records="


# --------------------------------------------------------------------------------- files


def shard_files(files, shard_index: int, num_shards: int) -> list[str]:
  """The files of shard `shard_index` of `num_shards`: sorted, then every num_shards-th.

  Deterministic, and the shards together cover every file exactly once. A shard gets no
  file when num_shards > len(files).
  """
  shards.check_shard(shard_index, num_shards)
  return sorted(files)[shard_index::num_shards]


def _pipeline_files(pattern: str, input_context) -> tuple[list[str], list[int]]:
  """(files of this input pipeline, their indices in the full sorted list)."""
  files = fileio.list_record_files(pattern)
  indexed = list(enumerate(files))
  if input_context is not None:
    indexed = indexed[input_context.input_pipeline_id::input_context.num_input_pipelines]
  return [f for _, f in indexed], [i for i, _ in indexed]


def _per_replica(batch_size: int, input_context) -> int:
  if input_context is None:
    return batch_size
  return input_context.get_per_replica_batch_size(batch_size)


def count_records(files) -> int:
  """Records in `files`; a truncated file is a ValueError naming it."""
  if not files:
    return 0
  try:
    return int(tf.data.TFRecordDataset(list(files)).reduce(
        tf.constant(0, tf.int64), lambda n, _: n + 1))
  except tf.errors.DataLossError as e:
    raise fileio.data_loss_error(files, e) from None


def num_eval_batches(file_pattern: str, *, global_batch_size: int,
                     input_context: tf.distribute.InputContext | None = None) -> int:
  """Batches each eval pipeline must yield (pass it as `num_batches` to every pipeline).

  The most any pipeline needs, rounded up to a multiple of the replicas per pipeline, so
  that every replica of every host runs the same number of steps. Reads every record.
  """
  files = fileio.list_record_files(file_pattern)
  pipelines = input_context.num_input_pipelines if input_context else 1
  replicas = input_context.num_replicas_in_sync // pipelines if input_context else 1
  batch = _per_replica(global_batch_size, input_context)
  most = max(math.ceil(count_records(shard_files(files, i, pipelines)) / batch)
             for i in range(pipelines))
  return max(1, math.ceil(most / replicas)) * replicas


def check_label_type(label_type: str) -> None:
  if label_type not in LABEL_TYPES:
    raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")


def unlabeled_batch_size(unlabeled_ratio: float, labeled_batch_size: int,
                         unlabeled_pattern: str | None) -> int:
  """U = ceil(r * B): the unlabeled rows that join B labeled rows (paper Sec. 2).

  The one place U is computed and r checked (the task and the pipeline both call it).

  Args:
    unlabeled_ratio: r >= 0; 0 trains on labeled data only.
    labeled_batch_size: B (global or per replica: U follows it).
    unlabeled_pattern: the unlabeled TFRecords; needed when r > 0.
  Raises:
    ValueError: r < 0, or r > 0 without unlabeled data.
  """
  if unlabeled_ratio < 0:
    raise ValueError(f"unlabeled_ratio must be >= 0, got {unlabeled_ratio}")
  if unlabeled_ratio > 0 and not unlabeled_pattern:
    raise ValueError(f"unlabeled_ratio={unlabeled_ratio} needs unlabeled data: set "
                     "--unlabeled_pattern")
  return math.ceil(unlabeled_ratio * labeled_batch_size)


# ----------------------------------------------------------------------- seeds, streams


def _fold(seed: tf.Tensor, *data) -> tf.Tensor:
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def _scalar_seed(seed_pair: tf.Tensor) -> tf.Tensor:
  """An int64 scalar for `Dataset.shuffle`, derived from a stateless seed pair."""
  return tf.random.stateless_uniform([], seed_pair, minval=None, maxval=None,
                                     dtype=tf.int64)


# Unlabeled passes numbered per labeled epoch; more than any run takes in one (a ratio-28
# batch over an unlabeled set 1/20,000 of the labeled set's size takes ~560,000).
UNLABELED_PASSES_PER_EPOCH = 2**20


def _read_file(path: tf.Tensor, file_id: tf.Tensor) -> tf.data.Dataset:
  """The records of one file as {"serialized", "file" (index), "record" (index)}."""
  return tf.data.TFRecordDataset(path).enumerate().map(
      lambda i, x: {"serialized": x, "file": file_id, "record": i})


def _record_stream(files, file_ids, *, seed: int, stream: int, pipeline: int,
                   shuffle_buffer: int, deterministic: bool, initial_epoch: int):
  """Endless records of `files`, shuffled per epoch, each tagged with its epoch."""
  if not files:
    raise ValueError("this input pipeline has no files (fewer files than pipelines)")
  files = tf.constant(files)
  file_ids = tf.constant(file_ids, tf.int64)
  base = tf.constant([seed, stream], tf.int64)
  cycle = min(len(files), _MAX_CYCLE)

  def epoch_records(epoch):
    epoch_seed = _fold(base, pipeline, epoch)
    ds = tf.data.Dataset.from_tensor_slices((files, file_ids)).shuffle(
        len(files), seed=_scalar_seed(_fold(epoch_seed, 0)))
    ds = ds.interleave(_read_file, cycle_length=cycle, block_length=1,
                       num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.shuffle(shuffle_buffer, seed=_scalar_seed(_fold(epoch_seed, 1)))
    return ds.map(lambda r: dict(r, epoch=epoch))

  return tf.data.Dataset.range(initial_epoch, 2**62).flat_map(epoch_records)


def _example_seed(seed: int, stream: int, record: dict) -> tf.Tensor:
  return _fold(tf.constant([seed, stream], tf.int64), record["epoch"], record["file"],
               record["record"])


def check_labels(stored: tf.Tensor, num_classes: int, *, label_offset: int = 0,
                 allow_unlabeled: bool = False, what: str = "label",
                 unlabeled_error: str = "an unlabeled record in labeled data") -> tf.Tensor:
  """The 0-based label `stored - label_offset` (-1 stays -1), asserted in [0, C).

  Args:
    stored: int32 label as stored in the record (-1: unlabeled).
    num_classes: C.
    label_offset: 1 for ImageNet TFRecords made by the TPU conversion script.
    allow_unlabeled: whether -1 is acceptable (evaluation, labelling).
    what / unlabeled_error: wording of the error messages.
  """
  unlabeled = tf.equal(stored, schema.UNLABELED)
  label = tf.where(unlabeled, stored, stored - label_offset)
  checks = [
      tf.debugging.assert_greater_equal(
          tf.where(unlabeled, 0, label), 0, message=f"{what} minus label_offset="
          f"{label_offset} is negative: wrong label_offset (0-based labels need 0)"),
      tf.debugging.assert_less(
          label, num_classes, message=f"{what} >= num_classes={num_classes}: wrong "
          "num_classes, or 1-based labels (ImageNet TPU TFRecords need label_offset=1)"),
  ]
  if not allow_unlabeled:
    checks.append(tf.debugging.assert_equal(
        tf.reduce_any(unlabeled), False, message=f"{what} is -1: {unlabeled_error}"))
  with tf.control_dependencies(checks):
    return tf.identity(label)


def _label_status(stored: tf.Tensor, num_classes: int, label_offset: int,
                  allow_unlabeled: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """(0-based label, int32 bad code: 0, _BAD_LABEL or _BAD_UNLABELED); never raises."""
  unlabeled = tf.equal(stored, schema.UNLABELED)
  label = tf.where(unlabeled, stored, stored - label_offset)
  out_of_range = tf.logical_and(tf.logical_not(unlabeled),
                                tf.logical_or(label < 0, label >= num_classes))
  misplaced = tf.logical_and(unlabeled, not allow_unlabeled)
  bad = tf.where(out_of_range, _BAD_LABEL, tf.where(misplaced, _BAD_UNLABELED, 0))
  return tf.where(out_of_range, schema.UNLABELED, label), tf.cast(bad, tf.int32)


def _parse(serialized, **kwargs):
  """`schema.parse_example` with the stored label (the offset is applied when checked)."""
  return schema.parse_example(serialized, label_offset=0, **kwargs)


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  return options


# ---------------------------------------------------------------------------- training


def _labeled_map(preprocess, num_classes, label_offset, seed):
  def fn(record):
    parsed = _parse(record["serialized"])
    label, bad = _label_status(parsed["label"], num_classes, label_offset,
                               allow_unlabeled=False)
    image = preprocess_image(parsed["encoded"], preprocess,
                             _example_seed(seed, _LABELED, record))
    return {"image": image, "label": label,
            "target": tf.one_hot(label, num_classes, dtype=tf.float32),
            "is_unlabeled": tf.constant(0.0), "bad": bad}
  return fn


def _labeled_batches(file_pattern, batch_size, preprocess, num_classes, input_context,
                     seed, deterministic, label_offset, shuffle_buffer, initial_epoch,
                     max_bad_records):
  files, ids = _pipeline_files(file_pattern, input_context)
  pipeline = input_context.input_pipeline_id if input_context else 0
  ds = _record_stream(files, ids, seed=seed, stream=_LABELED, pipeline=pipeline,
                      shuffle_buffer=shuffle_buffer, deterministic=deterministic,
                      initial_epoch=initial_epoch)
  ds = _skip_bad_records(ds, _labeled_map(preprocess, num_classes, label_offset, seed),
                         deterministic=deterministic, max_bad_records=max_bad_records,
                         what="labeled input", num_classes=num_classes,
                         label_offset=label_offset)
  return ds.batch(batch_size, drop_remainder=True)


def train_dataset(file_pattern: str, *, global_batch_size: int,
                  preprocess: PreprocessConfig, num_classes: int,
                  input_context: tf.distribute.InputContext | None = None, seed: int = 0,
                  deterministic: bool = False, label_offset: int = 0,
                  shuffle_buffer: int = 16384, initial_epoch: int = 0,
                  max_bad_records: int = DEFAULT_MAX_BAD_RECORDS) -> tf.data.Dataset:
  """Endless labeled training batches (see the module docstring for the keys).

  Args:
    file_pattern: glob (or comma-separated globs) of TFRecords; empty matches fail.
    global_batch_size: summed over replicas; each element holds the per-replica batch.
    preprocess: the path and noise (`augment`) applied to each image.
    num_classes: C; labels outside [0, C) are an error.
    input_context: from `distribute_datasets_from_function`; shards the files.
    seed: global seed of shuffles and per-example noise.
    deterministic: fixed element order (slower); the noise is reproducible either way.
    label_offset: subtracted from stored labels (1 for ImageNet TPU TFRecords).
    shuffle_buffer: records held for the per-epoch shuffle.
    initial_epoch: epoch to start from (resuming a run at an epoch boundary).
    max_bad_records: records that cannot be decoded, or whose label is out of range,
      are skipped and counted ("skipped"); more than this many in this pipeline's
      stream is an InvalidArgumentError (`bad_records_message` words it).
  """
  batch = _per_replica(global_batch_size, input_context)
  ds = _labeled_batches(file_pattern, batch, preprocess, num_classes, input_context, seed,
                        deterministic, label_offset, shuffle_buffer, initial_epoch,
                        max_bad_records)
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def _unlabeled_map(preprocess, clean_preprocess, num_classes, label_offset, seed,
                   label_type, pseudo_labels):
  del label_offset  # Unlabeled rows carry no label; pseudo labels are 0-based.

  def fn(record):
    parsed = _parse(record["serialized"], with_pseudo=pseudo_labels,
                    num_classes=num_classes)
    out = {"image": preprocess_image(parsed["encoded"], preprocess,
                                     _example_seed(seed, _UNLABELED, record)),
           "label": tf.constant(schema.UNLABELED, tf.int32),
           "is_unlabeled": tf.constant(1.0)}
    if pseudo_labels:
      pseudo, bad = _label_status(parsed["pseudo_label"], num_classes, 0,
                                  allow_unlabeled=False)
      out["target"] = (parsed["pseudo_probs"] if label_type == "soft" else
                       tf.one_hot(pseudo, num_classes, dtype=tf.float32))
      out["bad"] = tf.where(tf.equal(bad, _BAD_UNLABELED), _BAD_NO_PSEUDO, bad)
    else:
      out["target"] = tf.zeros([num_classes], tf.float32)
      out["bad"] = tf.constant(0, tf.int32)
    if clean_preprocess is not None:
      out["clean_image"] = preprocess_image(parsed["encoded"], clean_preprocess)
    return out
  return fn


def _concat(labeled: dict, unlabeled: dict) -> dict:
  out = {k: tf.concat([labeled[k], unlabeled[k]], axis=0) for k in labeled}
  if "clean_image" in unlabeled:
    out["clean_image"] = unlabeled["clean_image"]
  return out


def labeled_unlabeled_dataset(
    labeled_pattern: str, unlabeled_pattern: str | None, *, labeled_batch_size: int,
    unlabeled_ratio: float, preprocess: PreprocessConfig,
    unlabeled_preprocess: PreprocessConfig | None = None, num_classes: int,
    label_type: str = "soft", pseudo_labels: bool = True,
    with_clean_unlabeled: bool = False, clean_preprocess: PreprocessConfig | None = None,
    input_context: tf.distribute.InputContext | None = None, seed: int = 0,
    deterministic: bool = False, label_offset: int = 0, shuffle_buffer: int = 16384,
    initial_epoch: int = 0, max_bad_records: int = DEFAULT_MAX_BAD_RECORDS
) -> tf.data.Dataset:
  """Endless student batches: B labeled + ceil(r B) unlabeled rows, one batch.

  Args (beyond `train_dataset`'s):
    labeled_batch_size: global B. U = ceil(unlabeled_ratio * B) globally; both are
      divided by the replica count (each must divide evenly).
    unlabeled_pattern: unlabeled (offline: pseudo-labelled) TFRecords; needed if r > 0.
    initial_epoch: the labeled epoch to start at; the unlabeled stream starts at pass
      initial_epoch * UNLABELED_PASSES_PER_EPOCH (see the module docstring).
    unlabeled_preprocess: noise of the unlabeled part (default: `preprocess`), e.g.
      augment="none" for the paper's ablation without noise on unlabeled images.
    label_type: "soft" (stored probabilities) or "hard" (one-hot of the stored argmax).
    pseudo_labels: False in online mode (files without pseudo keys; targets are zeros,
      the trainer computes them in-graph).
    with_clean_unlabeled / clean_preprocess: add "clean_image", the unlabeled images
      through `clean_preprocess` (default: `unlabeled_preprocess.for_eval()`).
    max_bad_records: the limit of each stream (labeled, unlabeled) separately; offline,
      unlabeled records without a pseudo label are bad records too.
  """
  check_label_type(label_type)
  unlabeled_size = unlabeled_batch_size(unlabeled_ratio, labeled_batch_size,
                                        unlabeled_pattern)
  unlabeled_preprocess = unlabeled_preprocess or preprocess
  if unlabeled_preprocess.image_size != preprocess.image_size:
    raise ValueError("labeled and unlabeled images must have the same image_size, got "
                     f"{preprocess.image_size} and {unlabeled_preprocess.image_size}")
  labeled_batch = _per_replica(labeled_batch_size, input_context)
  labeled = _labeled_batches(labeled_pattern, labeled_batch, preprocess, num_classes,
                             input_context, seed, deterministic, label_offset,
                             shuffle_buffer, initial_epoch, max_bad_records)
  if unlabeled_ratio == 0:
    return labeled.prefetch(AUTOTUNE).with_options(_options(deterministic))
  unlabeled_batch = _per_replica(unlabeled_size, input_context)
  files, ids = _pipeline_files(unlabeled_pattern, input_context)
  if with_clean_unlabeled and clean_preprocess is None:
    clean_preprocess = unlabeled_preprocess.for_eval()
  unlabeled = _record_stream(
      files, ids, seed=seed, stream=_UNLABELED,
      pipeline=input_context.input_pipeline_id if input_context else 0,
      shuffle_buffer=shuffle_buffer, deterministic=deterministic,
      initial_epoch=initial_epoch * UNLABELED_PASSES_PER_EPOCH)
  unlabeled = _skip_bad_records(
      unlabeled,
      _unlabeled_map(unlabeled_preprocess,
                     clean_preprocess if with_clean_unlabeled else None, num_classes,
                     label_offset, seed, label_type, pseudo_labels),
      deterministic=deterministic, max_bad_records=max_bad_records,
      what="unlabeled input", num_classes=num_classes, label_offset=0)
  unlabeled = unlabeled.batch(unlabeled_batch, drop_remainder=True)
  ds = tf.data.Dataset.zip(labeled, unlabeled).map(_concat, num_parallel_calls=AUTOTUNE,
                                                   deterministic=deterministic)
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


# -------------------------------------------------------------------------- evaluation


def _try(fn, fallback=None):
  """x -> a one-element dataset: fn(x), or else the first element of fallback(x).

  A per-element try/except for tf.data (`fallback` returns a dataset, e.g. another
  `_try`): a failed element is *replaced* (and flagged by the caller), never dropped,
  so inference can count corrupt records. Without fallback, fn must not fail.
  """
  def apply(x):
    attempt = tf.data.Dataset.from_tensors(x).map(fn)
    if fallback is None:
      return attempt
    return attempt.ignore_errors().concatenate(fallback(x)).take(1)
  return apply


def _decode_records(records: tf.data.Dataset, full, fallback, chunk: int = _EVAL_CHUNK):
  """Maps `full` over records in order; records where it fails go through `fallback`.

  Chunks of `chunk` records are decoded with one `tf.map_fn`; only a chunk that fails
  is redone record by record, so the per-record try costs almost nothing when all is well.
  """
  spec = records.take(1).map(full).element_spec
  one_by_one = _try(full, fallback)

  def chunk_fn(serialized):
    fast = lambda xs: tf.map_fn(full, xs, fn_output_signature=spec)
    slow = tf.data.Dataset.from_tensor_slices(serialized).flat_map(one_by_one).batch(chunk)
    return _try(fast, lambda _: slow)(serialized)

  return records.batch(chunk).interleave(
      chunk_fn, cycle_length=4, block_length=1, num_parallel_calls=AUTOTUNE,
      deterministic=True).unbatch()


def _skip_bad_records(records: tf.data.Dataset, fn, *, deterministic: bool,
                      max_bad_records: int, what: str, num_classes: int,
                      label_offset: int) -> tf.data.Dataset:
  """`fn` over a training stream, without the records it cannot decode or marks bad.

  `fn(record)` returns a dict with "bad" (int32, 0: keep); a record where it raises (not
  an Example, an image that does not decode) is bad too. Kept elements get "skipped"
  (float32): the bad records just before them in the stream, so summing it over batches
  counts each skipped record once. More than `max_bad_records` in this stream raises an
  InvalidArgumentError whose message `bad_records_message` extracts.

  Cost: records are decoded in chunks, each a small dataset whose `ignore_errors` drops
  only that chunk's failures (reading errors, e.g. a truncated file, still surface); the
  chunks are mapped in parallel like single records were.
  """
  spec = records.take(1).map(fn).element_spec
  empty = {k: tf.zeros([0] + v.shape.as_list(), v.dtype) for k, v in spec.items()}
  empty["position"] = tf.zeros([0], tf.int64)

  def decode_chunk(chunk):
    rows = tf.data.Dataset.from_tensor_slices(chunk).enumerate().map(
        lambda i, record: dict(fn(record), position=i)).ignore_errors()
    rows = rows.batch(_TRAIN_CHUNK).concatenate(tf.data.Dataset.from_tensors(empty))
    return rows.take(1).get_single_element(), tf.size(chunk["record"], tf.int64)

  template = (f"{what}: {{}} {_TOO_MANY}{max_bad_records} ({{}} that do not decode or are "
              f"not tf.train.Examples, {{}} with a label outside [0, {num_classes}) after "
              f"label_offset={label_offset}, {{}} unlabeled (label -1), {{}} without a "
              "pseudo label): fix or remove them, check --num_classes and --label_offset (1 "
              "for ImageNet TPU TFRecords), or raise --max_bad_records")

  def count(state, rows_and_size):
    pending, by_reason = state
    rows, size = rows_and_size
    kept = tf.equal(rows["bad"], 0)
    unreadable = size - tf.size(rows["bad"], tf.int64)
    by_reason += tf.math.bincount(rows["bad"], minlength=5, maxlength=5, dtype=tf.int64)
    by_reason += tf.one_hot(_BAD_UNREADABLE, 5, dtype=tf.int64) * unreadable
    total = tf.reduce_sum(by_reason[1:])
    message = tf.strings.format(template, [total] + [by_reason[i] for i in range(1, 5)])
    check = tf.debugging.Assert(total <= max_bad_records, [message])
    # Each bad record is counted on the next kept one (carried over to the next chunk).
    kept_at = tf.boolean_mask(rows["position"], kept)
    bad = tf.tensor_scatter_nd_update(tf.ones([size], tf.int64), kept_at[:, None],
                                      tf.zeros_like(kept_at))
    bad_before = tf.gather(tf.cumsum(bad), kept_at) + pending
    skipped = bad_before - tf.concat([[0], bad_before[:-1]], 0)
    pending += tf.reduce_sum(bad) - tf.reduce_sum(skipped)
    out = {k: tf.boolean_mask(v, kept) for k, v in rows.items()
           if k not in ("bad", "position")}
    with tf.control_dependencies([check]):
      out["skipped"] = tf.cast(skipped, tf.float32)
    return (pending, by_reason), out

  chunks = records.batch(_TRAIN_CHUNK).map(decode_chunk, num_parallel_calls=AUTOTUNE,
                                           deterministic=deterministic)
  init = (tf.constant(0, tf.int64), tf.zeros([5], tf.int64))
  return chunks.scan(init, count).unbatch()


def record_status(files, *, decode_images: bool = True) -> tf.data.Dataset:
  """Every record of `files`, in file then record order, checked but not kept.

  Elements: {"file" (index into `files`), "record" (index in its file), "label" (int32
  as stored, -1 if absent), "ok" (float32; 0: not a tf.train.Example, or with
  `decode_images` an image that does not decode)}. A truncated file raises DataLossError.
  """
  def read(index, path):
    return tf.data.TFRecordDataset(path).enumerate().map(
        lambda i, x: {"serialized": x, "file": index, "record": i})

  def full(r):
    parsed = schema.parse_example(r["serialized"])
    ok = tf.constant(1.0)
    if decode_images:  # The decode must run: `ok` depends on it.
      ok = tf.cast(tf.size(preprocessing.decode_rgb(parsed["encoded"])) >= 0, tf.float32)
    return {"file": r["file"], "record": r["record"], "label": parsed["label"], "ok": ok}

  def bad(r):
    return {"file": r["file"], "record": r["record"],
            "label": tf.constant(schema.UNLABELED, tf.int32), "ok": tf.constant(0.0)}

  records = tf.data.Dataset.from_tensor_slices(tf.constant(list(files), tf.string))
  return _decode_records(records.enumerate().flat_map(read), full, _try(bad))


def bad_records_message(error: tf.errors.OpError) -> str | None:
  """The one-line message of a training stream's too-many-bad-records error, else None."""
  match = re.search(r"assertion failed: \[(.*" + re.escape(_TOO_MANY) + r".*)\]",
                    error.message or "")
  return match.group(1) if match else None


def _eval_element_fns(preprocess, num_classes, keep_encoded, with_pseudo):
  """(parse+decode, lenient fallback, constant fallback) for one serialized record."""
  size = preprocess.image_size

  def blank(encoded=b"", label=schema.UNLABELED, hidden=schema.UNLABELED, image_id=""):
    out = {"image": tf.zeros([size, size, 3], tf.float32),
           "label": tf.constant(label, tf.int32) if isinstance(label, int) else label,
           "hidden_label": (tf.constant(hidden, tf.int32) if isinstance(hidden, int)
                            else hidden),
           "id": tf.constant(image_id) if isinstance(image_id, str) else image_id,
           "ok": tf.constant(0.0)}
    if keep_encoded:
      out["encoded"] = tf.constant(encoded) if isinstance(encoded, bytes) else encoded
    if with_pseudo:
      out.update(pseudo_probs=tf.zeros([num_classes]),
                 pseudo_label=tf.constant(schema.UNLABELED, tf.int32),
                 pseudo_confidence=tf.constant(0.0))
    return out

  def parse(serialized, **kwargs):
    return schema.parse_example(serialized, label_offset=0, with_hidden_label=True,
                                **kwargs)

  def full(serialized):
    parsed = parse(serialized, with_pseudo=with_pseudo, num_classes=num_classes)
    out = blank(parsed["encoded"], parsed["label"], parsed["hidden_label"], parsed["id"])
    out["image"] = preprocess_image(parsed["encoded"], preprocess)
    out["ok"] = tf.constant(1.0)
    if with_pseudo:
      out.update({k: parsed[k] for k in ("pseudo_probs", "pseudo_label",
                                         "pseudo_confidence")})
    return out

  def lenient(serialized):  # The image (or the pseudo keys) failed; keep the id.
    parsed = parse(serialized)
    return blank(parsed["encoded"], parsed["label"], parsed["hidden_label"], parsed["id"])

  def constant(serialized):  # Not even a tf.train.Example.
    del serialized
    return blank()

  return full, lenient, constant


def _pad_batch(batch: dict, size: int) -> dict:
  """Pads a possibly short batch to `size` rows; "mask" marks the real ones."""
  real = tf.shape(batch["label"])[0]
  out = {}
  for key, value in batch.items():
    filler = tf.fill(tf.concat([[size - real], tf.shape(value)[1:]], 0),
                     tf.constant(-1 if "label" in key else 0, value.dtype)
                     if value.dtype != tf.string else tf.constant(""))
    padded = tf.concat([value, filler], axis=0)
    out[key] = tf.ensure_shape(padded, [size] + value.shape[1:].as_list())
  out["mask"] = tf.ensure_shape(tf.concat([tf.ones([real]), tf.zeros([size - real])], 0),
                                [size])
  return out


def _padding_batch(element_spec: dict) -> dict:
  """A batch of padding rows (mask 0, labels -1, zeros, empty strings)."""
  def fill(key, spec):
    value = "" if spec.dtype == tf.string else (-1 if "label" in key else 0)
    return tf.fill(spec.shape, tf.constant(value, spec.dtype))
  return {k: fill(k, spec) for k, spec in element_spec.items()}


def _pad_to_batches(ds: tf.data.Dataset, num_batches: int) -> tf.data.Dataset:
  """Exactly `num_batches` batches: all-padding batches appended; more real ones fail."""
  empty = tf.data.Dataset.from_tensors(_padding_batch(ds.element_spec))
  padded = ds.concatenate(empty.repeat()).take(num_batches + 1).enumerate()

  def check(i, batch):
    too_many = tf.logical_and(i >= num_batches, tf.reduce_sum(batch["mask"]) > 0)
    ok = tf.debugging.Assert(tf.logical_not(too_many), [
        f"eval data has more than num_batches={num_batches} batches"])
    with tf.control_dependencies([ok]):
      return tf.identity(i), batch

  return padded.map(check).filter(lambda i, _: i < num_batches).map(lambda i, b: b)


def eval_dataset(file_pattern: str, *, global_batch_size: int,
                 preprocess: PreprocessConfig, num_classes: int,
                 input_context: tf.distribute.InputContext | None = None,
                 label_offset: int = 0, keep_encoded: bool = False,
                 with_pseudo: bool = False, num_batches: int | None = None,
                 files: list[str] | None = None,
                 flag_bad_labels: bool = False) -> tf.data.Dataset:
  """Every record of this pipeline's files exactly once, in file order, fixed batches.

  The eval path of `preprocess` is used (its `augment` is ignored). Rows that could not
  be parsed or decoded come with ok=0 (see the module docstring), padding rows with
  mask=0; callers use rows with mask * ok == 1 and count mask * (1 - ok).

  Args (beyond `train_dataset`'s):
    keep_encoded: add "encoded", the record's original image bytes.
    with_pseudo: add the stored pseudo-label keys.
    num_batches: pad with all-padding batches to exactly this many (from
      `num_eval_batches`), so every pipeline runs the same number of steps.
    files: read these files instead of `file_pattern` (e.g. a labelling job's
      `shard_files`); `input_context` still shards them.
    flag_bad_labels: a label outside [0, C) marks its row ok=0 (label -1) instead of
      failing the pipeline (evaluation skips and counts such records).
  """
  if files is None:
    files = fileio.list_record_files(file_pattern)
  if input_context is not None:
    files = shard_files(files, input_context.input_pipeline_id,
                        input_context.num_input_pipelines)
  batch = _per_replica(global_batch_size, input_context)
  full, lenient, constant = _eval_element_fns(preprocess.for_eval(), num_classes,
                                              keep_encoded, with_pseudo)
  ds = tf.data.TFRecordDataset(tf.constant(files, tf.string))
  ds = _decode_records(ds, full, _try(lenient, _try(constant)))
  if flag_bad_labels:
    def flag(x):
      label, bad = _label_status(x["label"], num_classes, label_offset, True)
      hidden, _ = _label_status(x["hidden_label"], num_classes, label_offset, True)
      return dict(x, label=label, hidden_label=hidden,
                  ok=tf.where(bad > 0, 0.0, x["ok"]))
    ds = ds.map(flag)
  else:
    ds = ds.map(lambda x: dict(
        x, label=check_labels(x["label"], num_classes, label_offset=label_offset,
                              allow_unlabeled=True),
        hidden_label=check_labels(x["hidden_label"], num_classes,
                                  label_offset=label_offset, allow_unlabeled=True,
                                  what="hidden_label")))
  ds = ds.batch(batch).map(lambda b: _pad_batch(b, batch))
  if num_batches is not None:
    ds = _pad_to_batches(ds, num_batches)
  return ds.prefetch(AUTOTUNE).with_options(_options(True))
