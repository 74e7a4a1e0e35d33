"""What the sharded, resumable jobs (noisy_student.label, noisy_student.select) write.

Paper Algorithm 1 steps 2-3 run as many independent jobs over one output directory,
retried at will, sometimes twice at once. Three things keep that safe:

* Owner-tagged temporaries. Every output is written under
  `.tmp-<host>.<pid>.<random>-<name>` and renamed into place when complete (the last
  rename wins; two jobs on one shard write the same bytes). A temporary is *stale* only
  if its job is known to be dead: same host and no such process, or, for another host
  (or an untagged name), untouched for `STALE_AFTER_SECONDS`. Cleanup removes only stale
  ones, so a job never deletes the file another live job is writing. Readers skip every
  temporary (`data.fileio.is_temporary`).
* A settings file per output directory (`pin_settings`): the first job writes the
  settings its outputs depend on; every later job, and every reader, compares. Outputs
  of other settings are an error, never silently mixed in.
* Console output that survives its reader going away (`say`, `progress`): a job whose
  stdout/stderr pipe is closed keeps working, silently.

Paths go through tf.io.gfile and only string operations (never os.path.abspath or local
file calls), so all of this works on gs:// as well; settings name files by basename, so
a job rerun from another directory or mount matches its first run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid

import tensorflow as tf

from data import fileio

STALE_AFTER_SECONDS = 3600


def _process_space() -> str:
  """This machine's name, and on Linux its PID namespace and boot: a pid is checked for
  life only where it means the same process (containers that share a host name have
  PID namespaces of their own, and a reboot reuses pids)."""
  parts = [socket.gethostname()]
  try:
    parts.append(os.readlink("/proc/self/ns/pid"))
    with open("/proc/sys/kernel/random/boot_id") as f:
      parts.append(f.read().strip())
  except OSError:
    pass  # Not Linux: the host name alone.
  return "|".join(parts)


_HOST = hashlib.sha1(_process_space().encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- temporaries


def owner_tag(pid: int | None = None) -> str:
  """`<host hash>.<pid>`: who writes a temporary (the pid defaults to this process)."""
  return f"{_HOST}.{os.getpid() if pid is None else pid}"


def temporary_path(path: str) -> str:
  """A fresh temporary name next to `path`, unique to this process and call."""
  directory, name = os.path.split(path)
  return os.path.join(directory,
                      f"{fileio.TMP_MARK}{owner_tag()}.{uuid.uuid4().hex[:8]}-{name}")


def atomic_path(path: str):
  """`fileio.atomic_path` with an owner-tagged temporary (see `temporary_path`)."""
  return fileio.atomic_path(path, temporary_path(path))


def write_text_atomic(path: str, text: str) -> None:
  fileio.write_text_atomic(path, text, temporary_path(path))


def write_json_atomic(path: str, obj) -> None:
  fileio.write_json_atomic(path, obj, temporary_path(path))


def dumps_compact(obj: dict) -> str:
  """JSON with one line per top-level key: per-class lists stay on one line each."""
  lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'), sort_keys=True)}"
           for k, v in obj.items()]
  return "{\n" + ",\n".join(lines) + "\n}\n"


def _owner(name: str) -> tuple[str, int] | None:
  """(host hash, pid) of an owner-tagged temporary's basename, else None."""
  tag = name[len(fileio.TMP_MARK):].split("-", 1)[0].split(".")
  if len(tag) == 3 and len(tag[0]) == 8 and tag[1].isdigit():
    return tag[0], int(tag[1])
  return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's process.
  return True


def is_stale(path: str, now: float | None = None) -> bool:
  """Whether the temporary `path` is a leftover of a job that is no longer running."""
  owner = _owner(os.path.basename(path))
  if owner is not None and owner[0] == _HOST:
    return not _alive(owner[1])
  try:
    mtime = tf.io.gfile.stat(path).mtime_nsec / 1e9
  except tf.errors.NotFoundError:
    return False  # Already renamed or removed by its job.
  return (time.time() if now is None else now) - mtime > STALE_AFTER_SECONDS


def remove_stale_temporaries(directory: str) -> list[str]:
  """Removes the stale temporaries in `directory` (not recursive); returns them."""
  if not tf.io.gfile.isdir(directory):
    return []
  removed = []
  for entry in tf.io.gfile.listdir(directory):
    path = os.path.join(directory, entry.rstrip("/"))
    if fileio.is_temporary(entry) and is_stale(path):
      try:
        tf.io.gfile.remove(path)
        removed.append(path)
      except tf.errors.NotFoundError:
        pass  # Another job's cleanup was first.
  return removed


# --------------------------------------------------------------------------- settings


def fingerprint(names: list[str]) -> dict:
  """{count, sha256} of a list of names: a small stand-in for a long list."""
  digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
  return {"count": len(names), "sha256": digest}


def _short(value) -> str:
  text = json.dumps(value, sort_keys=True)
  return text if len(text) <= 120 else text[:117] + "..."


def settings_diff(found: dict, wanted: dict, prefix: str = "") -> str:
  """`key: old (in the directory) vs new (now)` for every differing (nested) key."""
  parts = []
  for k in sorted(set(found) | set(wanted)):
    old, new = found.get(k), wanted.get(k)
    if old == new:
      continue
    if isinstance(old, dict) and isinstance(new, dict):
      parts.append(settings_diff(old, new, f"{prefix}{k}."))
    else:
      parts.append(f"{prefix}{k}: {_short(old)} (in the directory) vs {_short(new)} (now)")
  return "; ".join(parts)


def pin_settings(path: str, settings: dict, what: str) -> dict:
  """The first job writes `settings` to `path`; a later job with others is refused.

  Two first jobs racing may both write (the last one wins); each reads the file back,
  so a job whose settings lost the race fails here instead of mixing its outputs in
  (compare the file with the returned dict again before publishing, to catch a race
  lost after the read-back).

  Returns:
    `settings` as they read back from JSON.

  Raises:
    ValueError: `path` holds other settings.
  """
  settings = json.loads(json.dumps(settings))  # As they read back (tuples -> lists).
  if not tf.io.gfile.exists(path):
    write_json_atomic(path, settings)
  found = fileio.read_json(path)
  if found != settings:
    raise ValueError(f"{os.path.dirname(path)} holds {what} made with other settings "
                     f"({settings_diff(found, settings)}); use a fresh --output_dir or "
                     "delete this one")
  return settings


# --------------------------------------------------------------------------- console


def _silence(stream) -> None:
  """Points the file descriptor under `stream` at /dev/null: later writes, and the
  interpreter's final flush, succeed instead of failing with EPIPE again."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)
  except (OSError, ValueError, AttributeError):
    pass


class GuardedStream:
  """A text stream whose write/flush failures (closed or broken pipe) are swallowed:
  the first failure silences the stream for good."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    try:
      return self._stream.write(text)
    except (OSError, ValueError):
      _silence(self._stream)
      return len(text)

  def flush(self) -> None:
    try:
      self._stream.flush()
    except (OSError, ValueError):
      _silence(self._stream)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def say(message: str) -> None:
  """Prints a line to stdout now; never fails because the reader has gone."""
  stream = GuardedStream(sys.stdout)
  stream.write(message + "\n")
  stream.flush()


def progress(**kwargs):
  """A tqdm bar on stderr that keeps quiet, instead of raising, once stderr is gone."""
  from tqdm import tqdm
  return tqdm(file=GuardedStream(sys.stderr), **kwargs)
