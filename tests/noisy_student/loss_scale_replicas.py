"""Float16 loss scaling over 2 logical CPUs: an overflow on replica 1 alone, applied by
keras.optimizers.LossScaleOptimizer with and without
optimization.skip_non_finite_together (own process: logical devices come first).

  python tests/noisy_student/loss_scale_replicas.py   # prints RESULT {json}
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from noisy_student.training import optimization  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def run(together: bool) -> dict:
  with strategy.scope():
    v = keras.Variable(np.ones([3], np.float32))
    opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    opt.build([v])

  def step(overflow_on_replica_1: bool):
    def replica_fn():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      bad = tf.logical_and(tf.constant(overflow_on_replica_1), tf.equal(replica, 1))
      grads = [tf.where(bad, tf.constant(np.inf, tf.float32), tf.ones([3]))]
      if together:
        grads = optimization.skip_non_finite_together(grads)
      opt.apply(grads, [v])
    strategy.run(tf.function(replica_fn))
    return {"values": [np.asarray(x).tolist()
                       for x in strategy.experimental_local_results(v.value)],
            "scale": float(np.asarray(opt.dynamic_scale))}

  scale = float(np.asarray(opt.dynamic_scale))
  return {"scale_before": scale, "overflow": step(True), "clean": step(False)}


print("RESULT " + json.dumps({"keras_alone": run(False), "together": run(True)}))
