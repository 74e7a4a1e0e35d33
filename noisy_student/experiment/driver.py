"""Stages of the Noisy Student loop, run as resumable subprocesses (paper Algorithm 1).

Each stage is one or more `python -m ...` commands (labelling and selection run as N
shard jobs, as they would on a cluster). A stage that succeeds writes a completion
marker `workdir/.stages/<name>.json` holding the stage's key: a hash of its settings
(with the workdir written as `$WORKDIR`, so a copied workdir keeps its finished stages)
and of the keys of the stages it reads from. A command whose settings are a dataclass
(noisy_student/settings.py) is keyed on the settings it parses to, not on its spelling,
and runs from a flagfile the driver writes (`workdir/flags/`); a marker written under
older flag names is recognised by parsing its recorded commands again. Rerunning the
driver skips a stage whose marker holds the same key. An unfinished stage with the same
key resumes (the trainer from its last checkpoint, the labeller by skipping finished
output files), its recorded seconds and logs then covering all its attempts; a stage
whose key changed (a setting changed, here or upstream) first deletes its outputs and
logs and runs afresh, and so, through their keys, do the stages downstream of it.

While a stage's shard jobs run, the driver prints a line per finished job and, every
`heartbeat_seconds`, how many are done and each running job's latest output line (its
whole output is in `workdir/logs/<stage>.<i>.log`).

The stage jobs die with the driver (Linux parent-death signal), so stopping the driver
never leaves orphaned training or labelling jobs behind.

Every command is also appended to `workdir/commands.sh`, so a user can run the same
stages by hand, e.g. the labelling shards as N parallel jobs on a cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

from data import config_flags
from data import fileio

MARKER_DIR = ".stages"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of the pipeline.

  Attributes:
    name: unique, path-like ("iter1/label").
    commands: argument lists for `python -m`, e.g. ("noisy_student.label", "--...").
    parallel: how many of the commands may run at the same time.
    inputs: names of earlier stages whose outputs this one reads.
    outputs: paths or glob patterns this stage writes; deleted before a rerun with
      changed settings, so that no output of the old settings survives.
  """
  name: str
  commands: tuple[tuple[str, ...], ...]
  parallel: int = 1
  inputs: tuple[str, ...] = ()
  outputs: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.commands:
      raise ValueError(f"stage {self.name} has no commands (e.g. --label_shards=0)")


def same_path(a: str, b: str) -> bool:
  """Whether two spellings of a workdir name the same place: "runs/x/", "./runs/x" and
  its absolute path, seen from the current directory; a URL ("gs://b/x") by its text."""
  if "://" in a or "://" in b:
    return a.rstrip("/") == b.rstrip("/")
  return os.path.realpath(a) == os.path.realpath(b)


def _now() -> str:
  """The time now in UTC, to the second, as markers and logs record it."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def display(command: tuple[str, ...]) -> str:
  return shlex.join(("python", "-m") + tuple(command))


class StageRunner:
  """Runs stages once each, recording markers, logs and the commands used."""

  def __init__(self, workdir: str, python: str = sys.executable, env: dict | None = None,
               heartbeat_seconds: float = 60.0):
    self.workdir = workdir
    self.python = python
    self.heartbeat_seconds = heartbeat_seconds
    # Unbuffered children: their progress lines reach the console as they happen.
    self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    _gfile().makedirs(os.path.join(workdir, MARKER_DIR))
    _gfile().makedirs(os.path.join(workdir, "logs"))
    self.keys: dict[str, str] = {}  # Stage name -> key, for the stages seen so far.
    self.ran: set[str] = set()  # The stages that (re)ran in this driver.

  def marker_path(self, name: str, suffix: str = "") -> str:
    return os.path.join(self.workdir, MARKER_DIR,
                        name.replace("/", "__") + suffix + ".json")

  def is_done(self, name: str) -> bool:
    """Whether the stage finished with the settings it was last run with."""
    key = self.marker(name).get("key")
    return key is not None and key == self.keys.get(name, key)

  def marker(self, name: str, suffix: str = "") -> dict:
    """What the finished stage recorded: key, commands, seconds, git commit, time; with
    suffix ".started", what its unfinished run has recorded so far. {} if nothing."""
    path = self.marker_path(name, suffix)
    return fileio.read_json(path) if _gfile().exists(path) else {}

  def key(self, stage: Stage) -> str:
    """Hash of the stage's settings and of the keys of the stages it reads from."""
    return self._key(stage, stage.commands, self.workdir)

  def _key(self, stage: Stage, commands, workdir: str) -> str:
    missing = [name for name in stage.inputs if name not in self.keys]
    if missing:
      raise ValueError(f"stage {stage.name} reads from {missing}, which have not run "
                       "before it in the plan")
    text = json.dumps({"commands": [_canonical(c, workdir) for c in commands],
                       "inputs": {name: self.keys[name] for name in stage.inputs}},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def _same_settings_as_recorded(self, stage: Stage, key: str) -> str | None:
    """The workdir the stage's finished run recorded its commands in, if that run had
    these settings, spelled otherwise; else None.

    A marker from before a flag was renamed, or from a driver that wrote its flags in
    another order, holds another key for the same settings: its recorded commands are
    parsed again (renamed flags are aliases) and keyed as today. Only when none of the
    stages it reads from ran again since it finished, in this driver or an earlier one
    that stopped before reaching it: then their outputs are the ones it read.
    """
    marker = self.marker(stage.name)
    if (not marker.get("commands") or any(n in self.ran for n in stage.inputs)
        or self._an_input_finished_after(stage, marker)):
      return None
    recorded = tuple(tuple(shlex.split(c)[2:]) for c in marker["commands"])
    # The marker's workdir, else (no workdir, or one that drivers before 6a87fb9 wrote on
    # rekeying: today's, not the commands') where its commands put the stage's outputs.
    for workdir in (marker.get("workdir"), _recorded_workdir(stage, recorded, self.workdir)):
      try:
        if workdir is not None and self._key(stage, recorded, workdir) == key:
          return workdir
      except Exception:  # A recorded flag that no longer parses: the settings differ.
        return None
    return None

  def _an_input_finished_after(self, stage: Stage, marker: dict) -> bool:
    """Whether a stage `stage` reads from finished (ran again) after `marker`'s run.

    Markers record when they finished (ISO time, to the second, in UTC; kept on
    rekeying), as every driver has written them. A marker without the time was not
    written by one, so nothing says what it read: it counts as run after, and the stage
    reruns.
    """
    finished = marker.get("finished")
    if not finished:
      return True
    inputs = [self.marker(n).get("finished") for n in stage.inputs]
    return any(_when(t) > _when(finished) for t in inputs if t)

  def run(self, stage: Stage) -> bool:
    """Runs `stage` unless it finished with the same key. Returns True if it ran now."""
    key = self.keys[stage.name] = self.key(stage)
    self._record_commands(stage, key)
    marker = self.marker(stage.name)
    if marker.get("key") == key:
      self._refresh_flagfiles(stage, marker)
      print(f"[{stage.name}] done already, skipping", flush=True)
      return False
    recorded_in = self._same_settings_as_recorded(stage, key)
    if recorded_in:
      # The marker keeps its commands, so it keeps the workdir they were written in: a
      # later driver (a copied workdir, another new default) must parse them there again.
      marker = dict(marker, key=key, workdir=recorded_in, rekeyed_from=marker["key"])
      fileio.write_json_atomic(self.marker_path(stage.name), marker)
      self._refresh_flagfiles(stage, marker)
      print(f"[{stage.name}] done already (same settings, spelled as before), skipping",
            flush=True)
      return False
    self.ran.add(stage.name)
    started_path = self.marker_path(stage.name, ".started")
    started = self.marker(stage.name, ".started")
    if started.get("key") != key and (started or marker):
      print(f"[{stage.name}] settings changed: deleting its old outputs", flush=True)
      _delete(stage.outputs)
    if marker:
      _gfile().remove(self.marker_path(stage.name))
    # An unfinished run with this key is resumed: its seconds count towards the stage's
    # (an older driver's marker counted none) and its logs are kept. A fresh run's logs
    # start empty, so no job's log mixes two settings.
    earlier = started if started.get("key") == key else {}
    if not earlier:
      for log in _gfile().glob(self._log_path(stage.name, "*")):
        _gfile().remove(log)
    progress = {"stage": stage.name, "key": key,
                "attempts": earlier.get("attempts", 1) + 1 if earlier else 1,
                "seconds": earlier.get("seconds", 0.0)}
    fileio.write_json_atomic(started_path, progress)
    print(f"[{stage.name}] starting: {len(stage.commands)} command(s)"
          + (f", attempt {progress['attempts']} (resuming)" if earlier else ""), flush=True)
    for command in stage.commands:
      print(f"  $ {display(command)}", flush=True)
    with self._counting_seconds(started_path, progress) as elapsed:
      if len(stage.commands) == 1:
        self._run_one(stage.name, 0, stage.commands[0], stream=True,
                      attempt=progress["attempts"])
      else:
        self._run_many(stage, progress["attempts"])
    seconds = progress["seconds"] + elapsed()
    fileio.write_json_atomic(self.marker_path(stage.name), {
        "stage": stage.name,
        "key": key,
        "workdir": self.workdir,
        "git_commit": git_commit(),
        "commands": [display(c) for c in stage.commands],
        "seconds": round(seconds, 1),
        "attempts": progress["attempts"],
        "finished": _now(),
    })
    # Finished: a later run of this stage (its marker removed by hand) starts afresh.
    _gfile().remove(started_path)
    print(f"[{stage.name}] finished in {seconds:.0f}s"
          + (f" over {progress['attempts']} attempts" if earlier else ""), flush=True)
    return True

  @contextlib.contextmanager
  def _counting_seconds(self, path: str, progress: dict):
    """Yields a function giving the seconds since entry. Meanwhile, every
    `heartbeat_seconds`, and on leaving (a failure included), the stage's seconds so far
    (`progress["seconds"]` plus those) are written to its `.started` marker, so that a
    run that is stopped and resumed counts all its attempts, less at most a heartbeat of
    each attempt killed outright (preempted, SIGKILL)."""
    start = time.time()
    stop = threading.Event()

    def write():
      seconds = round(progress["seconds"] + time.time() - start, 1)
      try:
        fileio.write_json_atomic(path, dict(progress, seconds=seconds))
      except Exception as e:  # pylint: disable=broad-except
        # A lost count must not stop the stage; the stage's seconds then undercount.
        print(f"[{progress['stage']}] could not record its seconds so far in {path}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", flush=True)

    def keep_writing():
      while not stop.wait(self.heartbeat_seconds):
        write()

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
      yield lambda: time.time() - start
    finally:
      stop.set()
      writer.join()
      write()

  def _run_many(self, stage: Stage, attempt: int = 1) -> None:
    """Runs the stage's jobs, `parallel` at a time, reporting their progress. A job
    starts only when a slot is free and no job has failed, so the first failure ends the
    stage once the jobs already running have ended (not hours later); it is raised then,
    and any later failure is printed."""
    latest: dict[int, str] = {}  # Job index -> its latest output line, while it runs.
    start, total, done = time.time(), len(stage.commands), 0
    queue = list(enumerate(stage.commands))[::-1]
    failure: BaseException | None = None
    with futures.ThreadPoolExecutor(max(1, stage.parallel)) as pool:
      running: dict[futures.Future, int] = {}

      def fill():
        while queue and len(running) < max(1, stage.parallel):
          i, command = queue.pop()
          running[pool.submit(self._run_one, stage.name, i, command, False, latest,
                              attempt)] = i

      fill()
      beat = start + self.heartbeat_seconds
      while running:
        finished, _ = futures.wait(running, timeout=max(0.0, beat - time.time()),
                                   return_when=futures.FIRST_COMPLETED)
        for job in finished:
          index = running.pop(job)
          try:
            seconds = job.result()
          except Exception as e:  # pylint: disable=broad-except
            if failure is None:
              failure = e
              print(f"[{stage.name}] job {index} failed; {len(queue)} job(s) not started, "
                    f"waiting for {len(running)} running", flush=True)
              queue.clear()
            else:
              print(f"[{stage.name}] job {index} failed too: "
                    f"{str(e).splitlines()[0]}", flush=True)
            continue
          done += 1
          print(f"[{stage.name}] job {index} finished in {_duration(seconds)} "
                f"({done}/{total} done)", flush=True)
        fill()
        if running and time.time() >= beat:
          self._heartbeat(stage.name, done, total, time.time() - start, dict(latest))
          beat = time.time() + self.heartbeat_seconds
    if failure is not None:
      raise failure

  @staticmethod
  def _heartbeat(name: str, done: int, total: int, seconds: float,
                 latest: dict[int, str]) -> None:
    print(f"[{name}] {done}/{total} jobs done, {len(latest)} running, "
          f"{_duration(seconds)} so far", flush=True)
    for index in sorted(latest):
      line = latest[index]
      print(f"    job {index}: {line[:117] + '...' if len(line) > 120 else line}",
            flush=True)

  def _run_one(self, name: str, index: int, command: tuple[str, ...], stream: bool,
               latest: dict[int, str] | None = None, attempt: int = 1) -> float:
    """Runs one job, its output to its log (and the console if `stream`); returns its
    seconds. While it runs, `latest[index]` is its latest output line. A resumed
    attempt's output follows the earlier attempts' in the log: what stopped them stays."""
    start = time.time()
    if latest is not None:
      latest[index] = "(starting)"
    log_path = self._log_path(name, index)
    argv = [self.python, "-m", *self._flagfile_command(name, index, command)]
    resuming = attempt > 1 and _gfile().exists(log_path)
    with _gfile().GFile(log_path, "a" if resuming else "w") as log:
      if resuming:
        log.write(f"\n# attempt {attempt}, resumed at {_now()}\n")
      log.write(f"$ {display(command)}\n")
      process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=self.env, text=True, bufsize=1,
                                 preexec_fn=_die_with_parent)
      for line in process.stdout:
        log.write(line)
        log.flush()
        if _is_noise(line):
          continue
        if stream:
          sys.stdout.write(line)
          sys.stdout.flush()
        if latest is not None and line.strip():
          latest[index] = line.strip()
      returncode = process.wait()
      if latest is not None:
        latest.pop(index, None)
    if returncode != 0:
      with _gfile().GFile(log_path) as log:
        tail = "".join(log.readlines()[-25:])
      raise RuntimeError(f"stage {name} failed (exit {returncode}): {display(command)}\n"
                         f"last lines of {log_path}:\n{tail}")
    return time.time() - start

  def _log_path(self, name: str, index: int | str) -> str:
    return os.path.join(self.workdir, "logs", f"{name.replace('/', '__')}.{index}.log")

  def _flagfile_command(self, name: str, index: int, command: tuple[str, ...]):
    """A command whose settings are a dataclass runs from a flagfile written beside the
    logs (`flags/<stage>.<i>.flags`, e.g. to rerun it by hand); others as they are."""
    from noisy_student import settings  # The settings import TensorFlow.
    if command[0] not in settings.COMMANDS:
      return command
    path = os.path.join(self.workdir, "flags", f"{name.replace('/', '__')}.{index}.flags")
    _gfile().makedirs(os.path.dirname(path))
    fileio.write_text_atomic(path, f"# stage {name}: python -m {command[0]} "
                             f"--flagfile={path}\n" + "".join(a + "\n" for a in command[1:]))
    return (command[0], f"--flagfile={path}")

  def _refresh_flagfiles(self, stage: Stage, marker: dict) -> None:
    """A finished stage taken from the workdir this one was copied from keeps that one's
    flagfiles, which name it (a hand rerun would write there): they are written again."""
    ran_in = marker.get("workdir")
    if ran_in and not same_path(ran_in, self.workdir):
      for i, command in enumerate(stage.commands):
        self._flagfile_command(stage.name, i, command)

  def _record_commands(self, stage: Stage, key: str) -> None:
    path = os.path.join(self.workdir, "commands.sh")
    existing = (_gfile().GFile(path).read() if _gfile().exists(path)
                else "#!/usr/bin/env bash\nset -e\n")
    suffix = " &" if len(stage.commands) > 1 else ""
    lines = ([f"# stage {stage.name} (key {key})\n"]
             + [display(c) + suffix + "\n" for c in stage.commands]
             + (["wait\n"] if suffix else []))
    block = "".join(lines)
    # A block of the same stage and key is replaced, not kept: in a copied workdir its
    # commands name the original workdir (a hand rerun would write there), and the same
    # settings spelled otherwise (another operational flag) must not run twice.
    start = existing.find(lines[0])
    if start < 0:
      updated = existing + block
    else:
      end = existing.find("\n# stage ", start)  # The next stage's block, if any.
      updated = existing[:start] + block + (existing[end + 1:] if end >= 0 else "")
    if updated != existing:
      fileio.write_text_atomic(path, updated)


def _when(finished: str) -> datetime.datetime:
  """A marker's finished time. Drivers before this one wrote it without a zone, in the
  local time of their machine: read as this machine's (the same one, as a rule). A
  workdir on gs:// is shared by machines in other zones, which UTC times compare across."""
  when = datetime.datetime.fromisoformat(finished)
  return when if when.tzinfo else when.astimezone()


def _duration(seconds: float) -> str:
  """35s, 3m05s, 2h07m."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  return f"{minutes // 60}h{minutes % 60:02d}m"


def _canonical(command: tuple[str, ...], workdir: str) -> list[str]:
  """A command as its settings say it, with the workdir written as `$WORKDIR`.

  A command whose settings are a dataclass (`settings.COMMANDS`) is parsed and written
  again: only non-default settings, in a fixed order, under today's names, without the
  operational ones (checkpoint and logging periods: they do not change the outputs).
  Others are taken as spelled.
  """
  from noisy_student import settings  # The settings import TensorFlow.
  module, args = command[0], list(command[1:])
  cls = settings.COMMANDS.get(module)
  if cls is not None:
    args = config_flags.to_args(config_flags.parse_args(cls, args), operational=False)
  return [module] + [arg.replace(workdir, "$WORKDIR") for arg in args]


def _recorded_workdir(stage: Stage, recorded, workdir: str) -> str | None:
  """The workdir a marker without one was written in: where the stage's first output,
  relative to today's workdir, sits in its recorded commands."""
  for output in stage.outputs:
    relative = os.path.relpath(output, workdir)
    if relative.startswith(".."):
      continue
    for arg in (a for command in recorded for a in command):
      at = arg.find("/" + relative)
      if at > 0 and "=" in arg[:at]:
        return arg[arg.index("=") + 1:at]
  return None


def git_commit() -> str | None:
  """The project's commit, '+dirty' when tracked files differ; None outside git."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    run = lambda *args: subprocess.run(("git", "-C", root) + args, capture_output=True,
                                       text=True, check=True).stdout.strip()
    commit = run("rev-parse", "HEAD")
    return commit + ("+dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
  except (OSError, subprocess.CalledProcessError):
    return None


def _gfile():
  """tf.io.gfile, for every path of the workdir (gs:// too); the driver itself runs no
  TensorFlow ops, so TensorFlow is imported on first use."""
  import tensorflow as tf
  return tf.io.gfile


def _delete(patterns: tuple[str, ...]) -> None:
  for pattern in patterns:
    for path in _gfile().glob(pattern):
      if _gfile().isdir(path):
        _gfile().rmtree(path)
      else:
        _gfile().remove(path)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
  """In the child, before exec: SIGTERM when the driver dies (Linux; else a no-op)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    pass


def _is_noise(line: str) -> bool:
  """TensorFlow start-up chatter that says nothing about the stage's progress."""
  return any(s in line for s in ("oneDNN custom operations", "cpu_feature_guard",
                                 "This TensorFlow binary is optimized",
                                 "rebuild TensorFlow with", "port.cc:", "E0000 ", "W0000 "))
