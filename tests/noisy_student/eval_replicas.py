"""Evaluates one model on one CPU device and on 2 replicas (logical CPUs), one process.

  python tests/noisy_student/eval_replicas.py MODEL EVAL_PATTERN OUT_DIR

Prints `RESULT {suite: [numbers on one device, numbers on 2 replicas]}` (results.json
without "seconds" and "config"), for tests/noisy_student/test_distributed.py. A batch of
7 splits into 4 + 4 rows, the last one padding.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import tensorflow as tf  # noqa: E402

# Before any op: two logical CPU devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from noisy_student import evaluate as ev  # noqa: E402

SUITES = {"clean": dict(per_class=True),
          "adversarial": dict(attacks=("fgsm",), epsilons=(0, 16)),
          "perturbations": dict(num_frames=2, perturbations=("gaussian_noise", "rotate"),
                                max_examples=6)}

if __name__ == "__main__":
  model, pattern, out = sys.argv[1:4]
  found = {}
  for suite, settings in SUITES.items():
    found[suite] = []
    for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
      config = ev.EvalConfig(model=model, suite=suite, output_dir=f"{out}/{suite}_{name}",
                             eval_pattern=pattern, eval_batch_size=7, **settings)
      results = ev.evaluate(config, strategy)
      found[suite].append({k: v for k, v in results.items()
                           if k not in ("seconds", "config")})
      found[suite][-1]["replicas"] = strategy.num_replicas_in_sync
  print("RESULT " + json.dumps(found))
