"""The trainer on a tiny conv net: resume, outputs, EMA evaluation, warm start, float16."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.common import model_io
from noisy_student.training import optimization
from noisy_student.training import trainer as trainer_lib
from tests.noisy_student.tiny_task import TinyConfig, TinyTask

SCHEDULE = optimization.ScheduleConfig(base_lr=0.5, labeled_batch_size=8, steps_per_epoch=8,
                                       warmup_epochs=0.25, decay_epochs=0.5)


def make_trainer(model_dir, *, steps=8, task=None, seed=3, **kwargs):
  trainer_lib.set_seed(seed, deterministic=False)
  config = trainer_lib.TrainerConfig(
      model_dir=str(model_dir), train_steps=steps, steps_per_loop=2,
      checkpoint_every_steps=kwargs.pop("checkpoint_every_steps", 4),
      schedule=SCHEDULE, seed=seed, **kwargs)
  task = task or TinyTask(TinyConfig(unlabeled_ratio=1.0, dropout_rate=0.3))
  return trainer_lib.Trainer(config, task)


def weights(t):
  return {"model": t.model.get_weights(), "ema": t.ema_model.get_weights(),
          "opt": [np.asarray(v) for v in t.optimizer.variables]}


class Crash(Exception):
  pass


def test_resume_after_a_crash_ends_like_an_uninterrupted_run(tmp_path):
  """Checkpoint at 4, crash at 6, restart: same step count and weights as no crash."""
  whole = make_trainer(tmp_path / "whole")
  whole.train()

  def crash(step):
    if step == 6:
      raise Crash()

  with pytest.raises(Crash):
    make_trainer(tmp_path / "crashed").train(on_loop_end=crash)
  resumed = make_trainer(tmp_path / "crashed")
  resumed.train()
  assert int(resumed.global_step.numpy()) == int(whole.global_step.numpy()) == 8
  a, b = weights(whole), weights(resumed)
  for key in a:
    assert len(a[key]) == len(b[key])
    for x, y in zip(a[key], b[key]):
      np.testing.assert_array_equal(x, y, err_msg=key)
  # The restarted process really resumed (ckpt-4 existed) instead of starting over.
  assert sorted(os.listdir(tmp_path / "crashed" / "ckpt")) == sorted(
      os.listdir(tmp_path / "whole" / "ckpt"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("run")
  t = make_trainer(model_dir, eval_every_steps=4, keep_checkpoints=1)
  result = t.train()
  return t, model_dir, result


def test_model_dir_layout(trained):
  t, model_dir, result = trained
  names = set(os.listdir(model_dir))
  assert {"ckpt", "train", "eval", "eval_metrics.json", "eval_history.json",
          "model.keras", "model_config.json"} <= names
  assert not [n for n in names if n.startswith(".tmp-")]
  # keep_checkpoints=1: only the final one.
  assert sorted(os.listdir(model_dir / "ckpt")) == [
      "checkpoint", "ckpt-8.data-00000-of-00001", "ckpt-8.index"]
  metrics = json.loads((model_dir / "eval_metrics.json").read_text())
  assert metrics == result
  assert set(metrics) == {"step", "top1", "top5", "loss", "num_examples", "num_skipped",
                          "weights"}
  assert metrics["step"] == 8 and metrics["num_examples"] == 64
  assert metrics["weights"] == "ema"
  history = json.loads((model_dir / "eval_history.json").read_text())
  assert [h["step"] for h in history] == [4, 8]
  assert os.listdir(model_dir / "train") and os.listdir(model_dir / "eval")


def test_exported_model_is_the_ema_model(trained):
  t, model_dir, _ = trained
  model, config = model_io.load_model(str(model_dir))
  assert config["train_steps"] == 8 and config["weights"] == "ema"
  x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
  np.testing.assert_allclose(model(x, training=False), t.ema_model(x, training=False),
                             rtol=1e-5, atol=1e-5)
  # The EMA really differs from the raw weights after 8 steps.
  assert not np.allclose(t.model(x, training=False), t.ema_model(x, training=False))


def test_evaluation_uses_the_ema_weights(trained):
  t, _, result = trained
  task = t.task
  logits = t.ema_model(task.images, training=False).numpy()
  top1 = float(np.mean(logits.argmax(-1) == task.labels))
  assert result["top1"] == pytest.approx(top1)
  ce = -np.log(np.exp(logits - logits.max(-1, keepdims=True)) /
               np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
  assert result["loss"] == pytest.approx(float(ce[np.arange(64), task.labels].mean()), rel=1e-4)


def test_rerunning_a_finished_run_changes_nothing(trained):
  t, model_dir, result = trained
  before = (model_dir / "model.keras").stat().st_mtime_ns
  again = make_trainer(model_dir, eval_every_steps=4, keep_checkpoints=1)
  assert again.train() == result
  assert int(again.global_step.numpy()) == 8
  assert (model_dir / "model.keras").stat().st_mtime_ns == before
  for x, y in zip(again.model.get_weights(), t.model.get_weights()):
    np.testing.assert_array_equal(x, y)


def test_optimizer_follows_the_schedule(trained):
  t, _, _ = trained
  got = float(t.optimizer.learning_rate)
  assert got == pytest.approx(float(optimization.learning_rate_at(8, SCHEDULE)))


@pytest.mark.parametrize("source", ["model_dir", "checkpoint"])
def test_warm_start(trained, tmp_path, source):
  t, model_dir, _ = trained
  path = str(model_dir) if source == "model_dir" else str(model_dir / "ckpt" / "ckpt-8")
  student = make_trainer(tmp_path, steps=1, init_from=path)
  student._restore_or_initialize()
  for name in ("model", "ema_model"):  # The EMA starts from the warm-started weights.
    for x, y in zip(getattr(student, name).get_weights(), t.ema_model.get_weights()):
      np.testing.assert_allclose(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision(tmp_path, precision):
  policy = keras.mixed_precision.global_policy()
  try:
    trainer_lib.set_precision(precision)
    t = make_trainer(tmp_path, steps=2, precision=precision,
                     task=TinyTask(TinyConfig(with_eval=False)))
    # float16 gets dynamic loss scaling; bfloat16 has float32's range and needs none.
    assert isinstance(t.optimizer, keras.optimizers.LossScaleOptimizer) == (
        precision == "float16")
    assert t.model.layers[1].compute_dtype == precision
    assert t.model.layers[-1].compute_dtype == "float32"  # float32 logits
    t.train()
    assert int(t.global_step.numpy()) == 2
    model, _ = model_io.load_model(str(tmp_path))
    assert all(w.dtype == "float32" for w in model.weights)
  finally:
    keras.mixed_precision.set_global_policy(policy)


def test_config_checks():
  with pytest.raises(ValueError, match="precision"):
    trainer_lib.TrainerConfig(model_dir="x", train_steps=1, precision="int8")
  with pytest.raises(ValueError, match="train_steps"):
    trainer_lib.TrainerConfig(model_dir="x", train_steps=0)
  with pytest.raises(ValueError, match="data_position"):
    trainer_lib.TrainerConfig(model_dir="x", train_steps=1, data_position="iterator")


class _EvalKilledOnce(TinyTask):
  """The first evaluation dies (as a process killed while evaluating would)."""

  def __init__(self, config):
    super().__init__(config)
    self.kill = True

  def eval_dataset(self, ctx):
    if self.kill:
      self.kill = False
      raise Crash()
    return super().eval_dataset(ctx)


def test_resume_keeps_the_evaluation_of_the_resumed_step(tmp_path):
  """Killed during the evaluation at step 4 (checkpoint 4 written): the rerun evaluates
  step 4 before training on, so eval_history.json has every evaluation."""
  task = _EvalKilledOnce(TinyConfig(unlabeled_ratio=1.0))
  with pytest.raises(Crash):
    make_trainer(tmp_path, task=task, eval_every_steps=4).train()
  assert (tmp_path / "ckpt" / "ckpt-4.index").exists()
  make_trainer(tmp_path, task=task, eval_every_steps=4).train()
  history = json.loads((tmp_path / "eval_history.json").read_text())
  assert [h["step"] for h in history] == [4, 8]
  # A rerun of the finished run adds nothing.
  make_trainer(tmp_path, task=task, eval_every_steps=4).train()
  assert json.loads((tmp_path / "eval_history.json").read_text()) == history
