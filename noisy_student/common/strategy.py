"""Choosing a tf.distribute strategy, and who writes what under multi-worker training.

`auto` picks a TPU when one is named or reachable, else every local GPU (Mirrored for
several, OneDevice for one), else a multi-worker strategy when TF_CONFIG describes a
cluster, else the CPU.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "one_device")


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
