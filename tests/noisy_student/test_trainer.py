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


def _image_summaries(logdir) -> dict:
  """{tag: [decoded uint8 images]} of the tf.summary.image events under `logdir`."""
  found = {}
  for path in tf.io.gfile.glob(os.path.join(str(logdir), "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          # [width, height, PNG, PNG, ...] (TensorBoard's image summary format).
          strings = tf.make_ndarray(value.tensor)
          found[value.tag] = (event.step, strings[:2].tolist(),
                              [tf.io.decode_png(s).numpy() for s in strings[2:]])
  return found


def test_first_noised_batch_is_an_image_summary(tmp_path):
  """train/ holds the first batch's labeled and unlabeled images, the ones replica 0's
  input pipeline gave the first step (TinyTask: 8 labeled + 8 unlabeled 8x8 images; an
  input whose order does not change between passes, as the real pipeline's does not)."""
  task = TinyTask(TinyConfig(unlabeled_ratio=1.0, shuffle=False, with_eval=False))
  make_trainer(tmp_path, steps=2, task=task).train()
  found = _image_summaries(tmp_path / "train")
  assert set(found) == {"input/labeled", "input/unlabeled"}
  ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                   num_replicas_in_sync=1)
  first = next(iter(task.train_dataset(ctx, seed=3)))
  want = np.clip(np.round(first["image"].numpy()), 0, 255).astype(np.uint8)
  for tag, rows in (("input/labeled", slice(0, 8)), ("input/unlabeled", slice(8, 16))):
    step, size, images = found[tag]
    assert step == 0 and size == [b"8", b"8"] and len(images) == 8
    np.testing.assert_array_equal(np.stack(images), want[rows])


def test_image_summary_is_optional_and_a_teacher_has_no_unlabeled_images(tmp_path):
  task = TinyTask(TinyConfig(with_eval=False))
  make_trainer(tmp_path / "teacher", steps=2, task=task, summary_images=3).train()
  found = _image_summaries(tmp_path / "teacher" / "train")
  assert list(found) == ["input/labeled"] and len(found["input/labeled"][2]) == 3
  make_trainer(tmp_path / "off", steps=2, task=task, summary_images=0).train()
  assert _image_summaries(tmp_path / "off" / "train") == {}


def test_profile_steps_trace_exactly_that_window(tmp_path, monkeypatch):
  """--profile_steps=3,4: the profiler starts after step 2 and stops after step 4 (the
  host loops of 2 steps end there), and leaves a TensorBoard profile run behind."""
  calls = []
  start, stop = tf.profiler.experimental.start, tf.profiler.experimental.stop
  t = make_trainer(tmp_path, steps=6, profile_steps=(3, 4), summary_images=0,
                   task=TinyTask(TinyConfig(with_eval=False)))
  monkeypatch.setattr(tf.profiler.experimental, "start", lambda logdir: (
      calls.append(("start", int(t.global_step.numpy()), logdir)), start(logdir)))
  monkeypatch.setattr(tf.profiler.experimental, "stop", lambda: (
      calls.append(("stop", int(t.global_step.numpy()))), stop()))
  t.train()
  assert calls == [("start", 2, str(tmp_path / "profile")), ("stop", 4)]
  runs = tf.io.gfile.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*"))
  assert len(runs) == 1 and tf.io.gfile.glob(os.path.join(runs[0], "*.xplane.pb"))


@pytest.mark.parametrize("steps, window, boundaries", [
    ((5, 7), (5, 7), [2, 4, 6, 7, 8]),  # Loops of 2 steps, cut at 4 (= 5 - 1) and 7.
    ((3,), (3, 3), [2, 3, 5, 7, 8]),    # Cut at 3; then loops of 2 again.
    ((), None, [2, 4, 6, 8]),
])
def test_profile_window_cuts_the_host_loops(tmp_path, steps, window, boundaries):
  config = trainer_lib.TrainerConfig(model_dir=str(tmp_path), train_steps=8,
                                     steps_per_loop=2, profile_steps=steps)
  assert config.profile_window == window
  t = trainer_lib.Trainer.__new__(trainer_lib.Trainer)
  t.config = config
  step, seen = 0, []
  while step < 8:
    step = t._next_boundary(step)
    seen.append(step)
  assert seen == boundaries


@pytest.mark.parametrize("steps", [(0, 3), (5, 4), (1, 2, 3)])
def test_bad_profile_steps(steps):
  with pytest.raises(ValueError, match="profile_steps must be FIRST,LAST"):
    trainer_lib.TrainerConfig(model_dir="x", train_steps=8, profile_steps=steps)


class _RecordingTask(TinyTask):
  def __init__(self, config):
    super().__init__(config)
    self.contexts = []

  def train_dataset(self, ctx, seed, initial_epoch=0):
    self.contexts.append((ctx.num_input_pipelines, ctx.input_pipeline_id,
                          ctx.num_replicas_in_sync, seed, initial_epoch))
    return super().train_dataset(ctx, seed, initial_epoch)


def test_inputs_come_from_one_function_per_input_pipeline(tmp_path, monkeypatch):
  """Training and evaluation input go through distribute_datasets_from_function, which
  calls the task's input function once per host with that host's InputContext (so each
  host of a pod slice reads its own files: test_train_flags.py pins what it reads)."""
  task = _RecordingTask(TinyConfig(labeled_batch=8))
  t = make_trainer(tmp_path, steps=4, task=task, summary_images=0)
  functions = []
  monkeypatch.setattr(t.strategy, "distribute_datasets_from_function",
                      lambda fn, options=None: functions.append(fn) or [])
  t._make_iterator(0)
  t.evaluate()
  train_fn, eval_fn = functions
  assert eval_fn == task.eval_dataset
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                   num_replicas_in_sync=4)
  batch = next(iter(train_fn(ctx)))
  assert task.contexts == [(2, 1, 4, 3, 0)]
  assert batch["image"].shape[0] == 2  # 8 labeled images / 4 replicas
  # A run resumed at step 3 ("skip") drops 3 steps of this host's 2 replicas.
  t._make_iterator(3)
  first_after_resume = next(iter(functions[-1](ctx)))
  np.testing.assert_array_equal(first_after_resume["image"],
                                list(train_fn(ctx).skip(6).take(1))[0]["image"])
