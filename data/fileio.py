"""Atomic file output: nothing this project writes is ever seen half-written.

Every writer goes through `atomic_path` (or `write_text_atomic`): the data goes to a
temporary name in the same directory and is renamed into place only when complete.
`tf.io.gfile` is used so the same code works on local disks and on `gs://` buckets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid

from absl import logging
import tensorflow as tf

TMP_MARK = ".tmp-"
RECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec", ".record")
# Shard names without a suffix, e.g. `train-00000-of-01024` (the ImageNet TPU files).
_SHARD_NAME = re.compile(r"-\d+-of-\d+$")
_warned: set[str] = set()


def makedirs(directory: str) -> None:
  """`tf.io.gfile.makedirs`, with a clear ValueError when a file is in the way."""
  try:
    tf.io.gfile.makedirs(directory)
  except (tf.errors.FailedPreconditionError, tf.errors.AlreadyExistsError) as e:
    raise ValueError(f"cannot create the directory {directory}: {e.message}; choose "
                     "another output path") from None


@contextlib.contextmanager
def atomic_path(path: str, temporary: str | None = None):
  """Yields a temporary path next to `path`; renames it to `path` on success.

  On an exception the temporary file is removed and `path` is left untouched.
  `temporary` names the temporary (it must start with TMP_MARK, in the same directory);
  default: a random name.
  """
  directory = os.path.dirname(path)
  if directory:
    makedirs(directory)
  tmp = temporary or os.path.join(
      directory, f"{TMP_MARK}{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
  try:
    yield tmp
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def write_text_atomic(path: str, text: str, temporary: str | None = None) -> None:
  with atomic_path(path, temporary) as tmp:
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)


def write_json_atomic(path: str, obj, temporary: str | None = None) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", temporary)


def read_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def is_temporary(path: str) -> bool:
  """True for leftovers of an interrupted atomic write (readers must skip them)."""
  return os.path.basename(path).startswith(TMP_MARK)


def list_files(pattern: str) -> list[str]:
  """Sorted matches of a glob pattern (or a comma-separated list of them).

  A directory stands for the files in it (the official code's `--label_data_dir`).
  Leftover temporary files are excluded. Raises ValueError naming the pattern when
  nothing matches, so an empty or mistyped pattern fails before any work starts.
  """
  files = []
  for part in pattern.split(","):
    part = part.strip()
    if part and not any(c in part for c in "*?[") and tf.io.gfile.isdir(part):
      part = os.path.join(part, "*")
    if part:
      files.extend(f for f in tf.io.gfile.glob(part) if not is_temporary(f))
  files = sorted(set(files))
  if not files:
    raise ValueError(f"no files match {pattern!r}")
  return files


def _looks_like_records(path: str) -> bool:
  """By name (a TFRecord suffix or a bare shard name), else by reading its first record."""
  name = os.path.basename(path)
  if name.endswith(RECORD_SUFFIXES) or _SHARD_NAME.search(name):
    return True
  size = tf.io.gfile.stat(path).length
  if 0 < size < 16:  # Shorter than one empty record (8 + 4 + 0 + 4 bytes).
    return False
  try:
    for _ in tf.data.TFRecordDataset(path).take(1):
      pass
  except tf.errors.DataLossError:  # Its first 12 bytes are not a TFRecord header.
    return False
  return True


def list_record_files(pattern: str) -> list[str]:
  """`list_files` without the files that are not TFRecords (warned about, once each).

  A glob such as `selected/*` also matches the JSON summaries and PNG plots written
  beside the records. Files named like records are taken without reading them (cheap
  on gs://); only other names cost a read of their first record.
  """
  files = list_files(pattern)
  records = [f for f in files if _looks_like_records(f)]
  skipped = [f for f in files if f not in set(records) and f not in _warned]
  if skipped:
    _warned.update(skipped)
    logging.warning("%r: skipping %d file(s) that are not TFRecords: %s", pattern,
                    len(skipped), ", ".join(skipped))
  if not records:
    raise ValueError(f"no TFRecord files among the {len(files)} files matching {pattern!r}")
  return records


def broken_record_files(files) -> list[tuple[str, str]]:
  """(file, "truncated record at N" / "corrupted record at N") of each file whose TFRecord
  framing breaks: reads every file, so call it only once an error says one does."""
  broken = []
  for path in files:
    try:
      for _ in tf.data.TFRecordDataset(path).batch(1024):
        pass
    except tf.errors.DataLossError as e:
      match = re.search(r"(truncated|corrupted) record at \d+", e.message or "")
      broken.append((path, match.group(0) if match else "unreadable"))
  return broken


def data_loss_error(files, error: tf.errors.DataLossError) -> Exception:
  """A one-line error naming the broken file(s) among `files` that raised `error`.

  tf.data's DataLossError does not say which file is truncated; this scans `files` to
  find out. Returns `error` itself when no file is broken any more (e.g. a flaky read).
  """
  broken = broken_record_files(files)
  if not broken:
    return error
  (path, what), rest = broken[0], broken[1:]
  more = f" (and {len(rest)} more: {', '.join(p for p, _ in rest)})" if rest else ""
  return ValueError(f"{path}: {what}: a truncated or corrupt TFRecord file{more}; rewrite "
                    "it, or leave it out of the file pattern")
