"""Which shard a job is: `--shard_index=auto` takes it from the job scheduler.

A sharded job (noisy_student.label, noisy_student.select; later data.make_tfrecords)
runs N times with N indexes. Schedulers that start N copies of one command give each
copy its index in an environment variable:

  JOB_COMPLETION_INDEX   Kubernetes Indexed Job (`completionMode: Indexed`), 0..N-1
  SLURM_ARRAY_TASK_ID    Slurm job array: submit with `--array=0-<N-1>` (the raw task id
                         is the shard, so a resubmission of some failed ids keeps them)
  TPU_WORKER_ID          GKE TPU slices (set in each pod); on a Cloud TPU VM export it from
                         the metadata server's `agent-worker-number` (docs/tpu_imagenet.md)
  CLOUD_TPU_TASK_ID      the Cloud TPU runtime's task id, where it is set

`num_shards` is never taken from the environment: a Slurm resubmission of a few failed
ids, or a Job's `parallelism`, would give another count than the run's, so it stays an
explicit flag (and each job's output directory pins it).
"""

from __future__ import annotations

import os
from typing import Mapping

AUTO = "auto"
# Checked in this order; several may be set at once (a GKE TPU pod of an Indexed Job
# has JOB_COMPLETION_INDEX and TPU_WORKER_ID), and then they must agree.
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "TPU_WORKER_ID",
                   "CLOUD_TPU_TASK_ID")


# The --shard_index help of every sharded command (label, select, make_tfrecords).
SHARD_INDEX_HELP = ("This job's shard, 0..num_shards-1, or 'auto': from the scheduler "
                    "(" + ", ".join(INDEX_VARIABLES[:-1]) + " or " + INDEX_VARIABLES[-1]
                    + "; data/records/shards.py).")


def index_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
  """(shard index, the variable it came from) from the scheduler's variables.

  Raises:
    ValueError: none of INDEX_VARIABLES is set, one is not an integer, or two disagree.
  """
  environ = os.environ if environ is None else environ
  found = {name: environ[name].strip() for name in INDEX_VARIABLES
           if environ.get(name, "").strip()}
  if not found:
    raise ValueError(f"--shard_index=auto: none of {', '.join(INDEX_VARIABLES)} is set "
                     "(run under a Kubernetes Indexed Job, a Slurm array, or export one)")
  for name, value in found.items():
    if not value.lstrip("-").isdigit():
      raise ValueError(f"--shard_index=auto: {name}={value!r} is not an integer")
  if len({int(v) for v in found.values()}) > 1:
    described = ", ".join(f"{k}={v}" for k, v in found.items())
    raise ValueError(f"--shard_index=auto: the scheduler variables disagree ({described}); "
                     "pass --shard_index explicitly")
  name = next(iter(found))
  return int(found[name]), name


def resolve_shard_index(value: str | int, num_shards: int,
                        environ: Mapping[str, str] | None = None) -> int:
  """The shard index for a `--shard_index` value: an integer, or "auto".

  Args:
    value: an int, a string of one, or "auto" (from the environment, see module doc).
    num_shards: the run's shard count; the index must be in [0, num_shards).
    environ: default os.environ.
  Raises:
    ValueError (one line): not an integer or "auto", no scheduler variable, or an index
      out of range (naming the variable it came from).
  """
  check_num_shards(num_shards)  # Before the environment is read.
  source = "--shard_index"
  if isinstance(value, str) and value.strip().lower() == AUTO:
    index, name = index_from_environment(environ)
    source = f"--shard_index=auto ({name})"
  else:
    try:
      index = int(value)
    except (TypeError, ValueError):
      raise ValueError(f"--shard_index must be an integer or 'auto', "
                       f"got {value!r}") from None
  check_shard(index, num_shards, source)
  return index


def check_num_shards(num_shards: int) -> None:
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")


def check_shard(shard_index: int, num_shards: int, source: str = "") -> None:
  """The one check of a job's shard: num_shards >= 1 and 0 <= shard_index < num_shards.

  Every sharded job (label, select, the file sharding of data.input.pipeline.shard_files)
  calls it.

  Args:
    source: where the index came from, to name in the message (e.g. "--shard_index").
  Raises:
    ValueError (one line).
  """
  check_num_shards(num_shards)
  if not 0 <= shard_index < num_shards:
    what = f"{source}: shard index" if source else "shard_index"
    raise ValueError(f"{what} {shard_index} out of range for num_shards {num_shards}")
