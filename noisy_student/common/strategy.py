"""Choosing a tf.distribute strategy, and who writes what under multi-worker training.

`auto` picks a TPU when one is named or reachable, else every local GPU (Mirrored for
several, OneDevice for one), else a multi-worker strategy when TF_CONFIG describes a
cluster, else the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os

import keras
import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "one_device")
# Between replicas' seeds of one noise layer (a prime, so that the seeds stay distinct
# after Keras folds them into int32 for up to 2,147 replicas).
_REPLICA_SEED_STRIDE = 1_000_003


def _tpu_available(tpu: str | None) -> bool:
  if tpu:
    return True
  if os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE"):
    return True
  # A TPU VM exposes its chips as /dev/accel* (v2-v4) or vfio devices (v5+).
  return any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))


def _tf_config_workers() -> int:
  cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
  if tpu not in (None, "", "local"):
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def get_strategy(name: str = "auto", tpu: str | None = None) -> tf.distribute.Strategy:
  """Returns the strategy `name` (one of STRATEGIES); see the module docstring for auto."""
  if name not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
  if name == "auto":
    if _tpu_available(tpu):
      name = "tpu"
    elif _tf_config_workers() > 1:
      name = "multi_worker"
    elif tf.config.list_physical_devices("GPU"):
      name = "mirrored"
    else:
      name = "one_device"
  if name == "tpu":
    strategy = _tpu_strategy(tpu)
  elif name == "multi_worker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  elif name == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
  else:
    gpus = tf.config.list_logical_devices("GPU")
    strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  logging.info("strategy %s with %d replica(s)", type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def require_one_host(strategy: tf.distribute.Strategy, tool: str, instead: str) -> None:
  """Refuses a multi-worker strategy for a tool whose input pipeline runs on one host.

  Under MultiWorkerMirroredStrategy each worker reads only its part of a distributed
  dataset, while these tools match the rows they get back to the records they read, in
  order, and every worker would write the same outputs: refusing is the only safe answer.
  """
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    raise ValueError(f"{tool} runs on one host: a multi-worker strategy "
                     "(--strategy=multi_worker, or a TF_CONFIG cluster under auto) is "
                     f"not supported; {instead}")


def task_type_and_id(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not getattr(resolver, "task_type", None):
    return None, 0
  return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one worker that writes summaries, metrics, configs and exports.

  Under MultiWorkerMirroredStrategy that is the "chief", or worker 0 when the cluster
  has no chief; every other strategy has a single host writing.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = task_type_and_id(strategy)
  if task_type in (None, "chief"):
    return True
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and "chief" not in cluster


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
  """Where this worker writes a checkpoint that every worker must save.

  Saving under MultiWorkerMirroredStrategy is collective: all workers save, the
  chief into `directory`, the others into a private temporary directory that
  `cleanup_write_dir` removes.
  """
  if is_chief(strategy):
    return directory
  task_type, task_id = task_type_and_id(strategy)
  return os.path.join(directory, f".worker_tmp_{task_type}_{task_id}")


def cleanup_write_dir(directory: str, strategy: tf.distribute.Strategy) -> None:
  if not is_chief(strategy):
    tf.io.gfile.rmtree(write_dir(directory, strategy))


def seed_states(model: keras.Model) -> list:
  """The [seed, counter] state variables of the model's keras.random.SeedGenerators
  (Dropout, stochastic depth)."""
  return [v for v in model.variables
          if v.name == "seed_generator_state" and tuple(v.shape) == (2,)]


@contextlib.contextmanager
def distinct_replica_noise(states: list):
  """Within a replica function: gives each replica its own dropout and stochastic-depth
  masks.

  A SeedGenerator's state is a mirrored variable that every replica advances alike, so
  without this row j of every replica's batch draws the same masks (the noise of a
  256-replica batch would be that of one replica's). Replica r's seeds are moved by
  r * _REPLICA_SEED_STRIDE for the body and moved back after it: replica 0 draws what a
  single device draws, and the state that is checkpointed is the same on every replica.
  """
  if not states:
    yield
    return
  replica = tf.distribute.get_replica_context().replica_id_in_sync_group
  offset = tf.stack([tf.cast(replica, tf.int64) * _REPLICA_SEED_STRIDE,
                     tf.constant(0, tf.int64)])
  for v in states:
    v.assign_add(tf.cast(offset, v.dtype))
  yield
  for v in states:
    v.assign_sub(tf.cast(offset, v.dtype))
