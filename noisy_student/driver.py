"""Stages of the Noisy Student loop, run as resumable subprocesses (paper Algorithm 1).

Each stage is one or more `python -m ...` commands (labelling and selection run as N
shard jobs, as they would on a cluster). A stage that succeeds writes a completion
marker `workdir/.stages/<name>.json`; rerunning the driver skips marked stages and
re-runs the unfinished one, whose own command resumes (the trainer from its last
checkpoint, the labeller by skipping finished output files).

Every command is also appended to `workdir/commands.sh`, so a user can run the same
stages by hand, e.g. the labelling shards as N parallel jobs on a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import subprocess
import sys
import time
from concurrent import futures

from data import fileio

MARKER_DIR = ".stages"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of the pipeline.

  Attributes:
    name: unique, path-like ("iter1/label").
    commands: argument lists for `python -m`, e.g. ("noisy_student.label", "--...").
    parallel: how many of the commands may run at the same time.
  """
  name: str
  commands: tuple[tuple[str, ...], ...]
  parallel: int = 1


def display(command: tuple[str, ...]) -> str:
  return shlex.join(("python", "-m") + tuple(command))


class StageRunner:
  """Runs stages once each, recording markers, logs and the commands used."""

  def __init__(self, workdir: str, python: str = sys.executable, env: dict | None = None):
    self.workdir = workdir
    self.python = python
    # Unbuffered children: their progress lines reach the console as they happen.
    self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    os.makedirs(os.path.join(workdir, MARKER_DIR), exist_ok=True)
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)

  def marker_path(self, name: str) -> str:
    return os.path.join(self.workdir, MARKER_DIR, name.replace("/", "__") + ".json")

  def is_done(self, name: str) -> bool:
    return os.path.exists(self.marker_path(name))

  def run(self, stage: Stage) -> bool:
    """Runs `stage` unless its marker exists. Returns True if it ran now."""
    self._record_commands(stage)
    if self.is_done(stage.name):
      print(f"[{stage.name}] done already, skipping", flush=True)
      return False
    print(f"[{stage.name}] starting: {len(stage.commands)} command(s)", flush=True)
    for command in stage.commands:
      print(f"  $ {display(command)}", flush=True)
    start = time.time()
    if len(stage.commands) == 1:
      self._run_one(stage.name, 0, stage.commands[0], stream=True)
    else:
      self._run_many(stage)
    seconds = time.time() - start
    fileio.write_json_atomic(self.marker_path(stage.name), {
        "stage": stage.name,
        "commands": [display(c) for c in stage.commands],
        "seconds": round(seconds, 1),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    print(f"[{stage.name}] finished in {seconds:.0f}s", flush=True)
    return True

  def _run_many(self, stage: Stage) -> None:
    with futures.ThreadPoolExecutor(max(1, stage.parallel)) as pool:
      jobs = [pool.submit(self._run_one, stage.name, i, c, False)
              for i, c in enumerate(stage.commands)]
      for job in futures.as_completed(jobs):
        job.result()

  def _run_one(self, name: str, index: int, command: tuple[str, ...], stream: bool) -> None:
    log_path = os.path.join(self.workdir, "logs", f"{name.replace('/', '__')}.{index}.log")
    argv = [self.python, "-m", *command]
    with open(log_path, "w") as log:
      process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=self.env, text=True, bufsize=1)
      for line in process.stdout:
        log.write(line)
        log.flush()
        if stream and not _is_noise(line):
          sys.stdout.write(line)
          sys.stdout.flush()
      returncode = process.wait()
    if returncode != 0:
      with open(log_path) as log:
        tail = "".join(log.readlines()[-25:])
      raise RuntimeError(f"stage {name} failed (exit {returncode}): {display(command)}\n"
                         f"last lines of {log_path}:\n{tail}")

  def _record_commands(self, stage: Stage) -> None:
    path = os.path.join(self.workdir, "commands.sh")
    existing = open(path).read() if os.path.exists(path) else "#!/usr/bin/env bash\nset -e\n"
    header = f"# stage {stage.name}\n"
    if header in existing:
      return
    suffix = " &" if len(stage.commands) > 1 else ""
    lines = [header] + [display(c) + suffix + "\n" for c in stage.commands]
    if suffix:
      lines.append("wait\n")
    fileio.write_text_atomic(path, existing + "".join(lines))


def _is_noise(line: str) -> bool:
  """TensorFlow start-up chatter that says nothing about the stage's progress."""
  return any(s in line for s in ("oneDNN custom operations", "cpu_feature_guard",
                                 "This TensorFlow binary is optimized",
                                 "rebuild TensorFlow with", "port.cc:", "E0000 ", "W0000 "))
