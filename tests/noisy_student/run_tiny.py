"""Runs the trainer on the tiny task in its own process (distributed tests).

  python tests/noisy_student/run_tiny.py MODE MODEL_DIR [STEPS]

MODE: "compare" (one device vs MirroredStrategy over 2 logical CPUs; prints the largest
weight difference as JSON), "noise" (dropout masks per replica, over 2 logical CPUs),
"no_ema" (BN statistics per replica without an EMA, over 2 logical CPUs) or
"multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import tensorflow as tf  # noqa: E402

MODE, MODEL_DIR = sys.argv[1], sys.argv[2]
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 6
if MODE in ("compare", "noise", "no_ema"):
  # Before any op: two logical CPU devices.
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from noisy_student.common import strategy as strategy_lib  # noqa: E402
from noisy_student.training import optimization  # noqa: E402
from noisy_student.training import trainer  # noqa: E402
from tests.noisy_student.tiny_task import TinyConfig, TinyTask  # noqa: E402


def run(strategy, model_dir, sync_bn, dropout_rate=0.0, moving_average_decay=0.9999):
  trainer.set_seed(7, deterministic=False)
  config = trainer.TrainerConfig(
      model_dir=model_dir, train_steps=STEPS, steps_per_loop=3, checkpoint_every_steps=3,
      eval_every_steps=3, seed=7, moving_average_decay=moving_average_decay,
      schedule=optimization.ScheduleConfig(base_lr=0.5, labeled_batch_size=8,
                                           steps_per_epoch=2, warmup_epochs=0.5))
  task = TinyTask(TinyConfig(unlabeled_ratio=1.0, sync_batch_norm=sync_bn, shuffle=False,
                             dropout_rate=dropout_rate))
  t = trainer.Trainer(config, task, strategy)
  result = t.train()
  return t, result


if MODE == "compare":
  one, _ = run(tf.distribute.OneDeviceStrategy("/cpu:0"), MODEL_DIR + "/one", True)
  two, _ = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), MODEL_DIR + "/two", True)
  diffs = {}
  for name in ("model", "ema_model"):
    a, b = getattr(one, name), getattr(two, name)
    diffs[name] = max(float(np.max(np.abs(x - y)))
                      for x, y in zip(a.get_weights(), b.get_weights()))
  slots = [max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(one.optimizer.variables, two.optimizer.variables))]
  diffs["optimizer"] = max(slots)
  diffs["moved"] = max(float(np.max(np.abs(x - y))) for x, y in zip(
      one.model.get_weights(), one.ema_model.get_weights()))
  print("RESULT " + json.dumps(diffs))
elif MODE == "noise":
  one, _ = run(tf.distribute.OneDeviceStrategy("/cpu:0"), MODEL_DIR + "/one", True, 0.5)
  two, _ = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), MODEL_DIR + "/two",
               True, 0.5)
  states = two._seed_states  # noqa: SLF001
  ones = np.ones([2, 8, 8, 3], np.float32)

  def masks(distinct):
    def replica_fn():
      with strategy_lib.distinct_replica_noise(states if distinct else []):
        return two.model(ones, training=True)
    out = two.strategy.run(tf.function(replica_fn))
    return [np.asarray(x) for x in two.strategy.experimental_local_results(out)]

  def state_values():
    return [[np.asarray(x).tolist() for x in two.strategy.experimental_local_results(v.value)]
            for v in states]

  after_training = state_values()
  plain = masks(False)
  for v, value in zip(states, after_training):  # Back to the same seeds and counters.
    v.assign(value[0])
  distinct = masks(True)
  print("RESULT " + json.dumps({
      "one_device_states": len(one._seed_states),  # noqa: SLF001
      "states": len(states), "after_training": after_training,
      "one_device_after_training": [np.asarray(v).tolist()
                                    for v in strategy_lib.seed_states(one.model)],
      "plain_same": bool(np.array_equal(*plain)),
      "distinct_same": bool(np.array_equal(*distinct)),
      "replica0_as_before": bool(np.array_equal(plain[0], distinct[0])),
      "after_masks": state_values()}))
elif MODE == "no_ema":
  two, _ = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), MODEL_DIR, False,
               moving_average_decay=0.0)
  stats = [[np.asarray(x) for x in two.strategy.experimental_local_results(v.value)]
           for v in optimization.moving_statistics(two.model)]
  print("RESULT " + json.dumps({
      "count": len(stats),
      "replica_difference": max(float(np.max(np.abs(a - b))) for a, b in stats),
      "moved": max(float(np.max(np.abs(a - (1.0 if i % 2 else 0.0))))
                   for i, (a, _) in enumerate(stats))}))
else:
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  _, result = run(strategy, MODEL_DIR, False)
  print("RESULT " + json.dumps(result))
