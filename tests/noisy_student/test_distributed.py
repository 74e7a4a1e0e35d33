"""Distribution: MirroredStrategy over 2 logical CPUs vs one device (training and
evaluation); 2-worker training.

Each case runs in its own process (logical devices must be configured before any op,
and a multi-worker strategy owns its process), via tests/noisy_student/run_tiny.py and
eval_replicas.py.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.common import strategy as strategy_lib
from tests.noisy_student.test_evaluate import setup  # noqa: F401  (fixture)

HERE = os.path.dirname(__file__)
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SCRIPT = os.path.join(HERE, "run_tiny.py")
# float32 sums over 2 x 4 rows instead of 8: rounding-level differences only.
TOLERANCE = 1e-5


def _result(output: str) -> dict:
  lines = [l for l in output.splitlines() if l.startswith("RESULT ")]
  assert lines, output[-3000:]
  return json.loads(lines[-1][len("RESULT "):])


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def test_mirrored_two_replicas_equals_one_device(tmp_path):
  """Same global batch (8 labeled + 8 unlabeled), sync BN: same weights, EMA and slots."""
  proc = subprocess.run([sys.executable, SCRIPT, "compare", str(tmp_path), "6"],
                        capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  diffs = _result(proc.stdout)
  assert diffs["moved"] > 1e-3  # training changed the weights measurably
  assert diffs["model"] < TOLERANCE
  assert diffs["ema_model"] < TOLERANCE
  assert diffs["optimizer"] < TOLERANCE


def test_replicas_draw_their_own_dropout_masks(tmp_path):
  """Keras advances a SeedGenerator alike on every replica, so row j of each replica
  would get the same masks; the trainer offsets replica r's seeds for the step. Replica
  0 draws what it drew before, the state stays equal on every replica and advances as
  on one device (which is left untouched)."""
  proc = subprocess.run([sys.executable, SCRIPT, "noise", str(tmp_path), "6"],
                        capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _result(proc.stdout)
  assert (r["one_device_states"], r["states"]) == (0, 1)
  assert r["plain_same"]            # Keras alone: the same masks on both replicas.
  assert not r["distinct_same"]     # With the offset: masks of their own.
  assert r["replica0_as_before"]
  (replica0, replica1), = r["after_training"]
  assert replica0 == replica1 == r["one_device_after_training"][0]
  assert replica0[1] == 6           # One draw per step, and the offset undone.
  assert r["after_masks"] == [[[replica0[0], 7]] * 2]


def test_without_ema_replicas_keep_one_set_of_bn_statistics(tmp_path):
  """Keras keeps BN moving statistics per replica; without the EMA (which averages them)
  the trainer averages them every step, so every replica evaluates and exports one
  model (without it the replicas differ after 6 steps by about 2e-4)."""
  proc = subprocess.run([sys.executable, SCRIPT, "no_ema", str(tmp_path), "6"],
                        capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _result(proc.stdout)
  assert r["count"] == 2 and r["moved"] > 1e-2
  assert r["replica_difference"] == 0.0


def test_float16_overflow_on_one_replica_skips_the_step_everywhere():
  """Keras checks replica 0's gradients before they are summed, so an overflow on
  replica 1 alone is applied (the weights become inf); the trainer makes every replica
  see it: the step is skipped, the loss scale halves, and the next clean step applies."""
  proc = subprocess.run([sys.executable, os.path.join(HERE, "loss_scale_replicas.py")],
                        capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _result(proc.stdout)
  alone, together = r["keras_alone"], r["together"]
  assert not np.isfinite(alone["overflow"]["values"]).any()      # what it guards against
  assert together["overflow"] == {"values": [[1.0] * 3] * 2,
                                  "scale": together["scale_before"] / 2}
  # Then the summed gradient 2, unscaled by the halved scale, at learning rate 0.1.
  expected = 1.0 - 0.1 * 2.0 / (together["scale_before"] / 2)
  np.testing.assert_allclose(together["clean"]["values"], [[expected] * 3] * 2, rtol=1e-6)


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def test_two_workers_complete(tmp_path):
  ports = _free_ports(2)
  cluster = {"worker": [f"localhost:{p}" for p in ports]}
  procs = []
  for index in range(2):
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    procs.append(subprocess.Popen(
        [sys.executable, SCRIPT, "multi_worker", str(tmp_path / "run"), "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(TF_CONFIG=tf_config), cwd=REPO))
  outputs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=600)
      outputs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for code, out, err in outputs:
    assert code == 0, err[-3000:]
  results = [_result(out) for _, out, _ in outputs]
  assert results[0] == results[1]  # both workers computed the same evaluation
  assert results[0]["step"] == 6 and results[0]["num_examples"] == 64
  run = tmp_path / "run"
  assert (run / "model.keras").exists() and (run / "eval_metrics.json").exists()
  assert sorted(os.listdir(run / "ckpt")) == [
      "checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index",
      "ckpt-6.data-00000-of-00001", "ckpt-6.index"]
  # The non-chief worker's temporary checkpoint directory is gone.
  assert not [n for n in os.listdir(run / "ckpt") if n.startswith(".worker")]


def test_auto_strategy_on_this_cpu_machine(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  monkeypatch.delenv("TPU_NAME", raising=False)
  strategy = strategy_lib.get_strategy("auto")
  assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
  assert strategy_lib.is_chief(strategy)
  assert strategy_lib.write_dir("/m/ckpt", strategy) == "/m/ckpt"
  with pytest.raises(ValueError, match="strategy must be one of"):
    strategy_lib.get_strategy("horovod")


def test_evaluation_on_two_replicas_equals_one_device(setup, tmp_path):  # noqa: F811
  """noisy_student.evaluate under MirroredStrategy over 2 logical CPUs: each replica
  scores half of every batch (odd batches padded), and the numbers are the one-device
  ones (accuracy, per-class accuracy, FGSM accuracy, flip probabilities)."""
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, "eval_replicas.py"), setup["model"],
       setup["data"], str(tmp_path)],
      capture_output=True, text=True, timeout=900, env=_env(), cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for suite, (one, two) in _result(proc.stdout).items():
    assert (one.pop("replicas"), two.pop("replicas")) == (1, 2)
    assert one == two, suite
