"""The driver's whole flow, one iteration, with its workdir on TF's in-memory filesystem.

records (made from class folders of PNGs on ram://) -> split -> teacher -> label ->
select -> student -> evaluate -> report, planned by `iterate.plan` and run by
`driver.StageRunner` (markers, flagfiles, commands.sh in the workdir), except that each
command's `main` runs in this process: `ram://` is per-process memory, which the
driver's subprocesses would not see. A stand-in for gs://: a local-only call (open,
os.path.exists, glob, savefig to a path...) either fails on these paths or leaves a
`ram:` folder in the working directory, which the `ram` fixture checks is still empty.
"""
import contextlib
import functools
import importlib

from absl import flags
import numpy as np
import tensorflow as tf

from data import cli
from data import config_flags
from data import make_tfrecords
from data import split as split_lib
from noisy_student import settings as settings_lib
from noisy_student import summarize
from noisy_student.experiment import driver
from noisy_student.experiment import iterate
from noisy_student.experiment import report

C, SIZE = 3, 16
TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 3
LABELED, DEV = 4, 1  # Per class, the dev images among the labeled ones.


def _write_class_folders(root: str, per_class: int, seed: int) -> None:
  """`root/<class>/<i>.png`: tiny class-dependent PNGs, written through tf.io.gfile."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(("a", "b", "c")):
    tf.io.gfile.makedirs(f"{root}/{name}")
    for i in range(per_class):
      image = np.clip(rng.normal(40 + 80 * c, 20, [SIZE, SIZE, 3]), 0, 255)
      with tf.io.gfile.GFile(f"{root}/{name}/{i:03d}.png", "wb") as f:
        f.write(tf.io.encode_png(image.astype(np.uint8)).numpy())


# How each stage command defines its flags (on absl's global FLAGS, as its __main__ does).
_DEFINE = {module: functools.partial(config_flags.define, cls)
           for module, cls in settings_lib.COMMANDS.items()}
_DEFINE["data.split"] = functools.partial(config_flags.define, split_lib.SplitSettings)
_DEFINE["data.make_tfrecords"] = functools.partial(config_flags.define,
                                                  make_tfrecords.RecordsConfig)


@contextlib.contextmanager
def _global_flags(module: str, args):
  """absl's global FLAGS holding `module`'s flags, parsed from `args` as its entry point
  parses them (`data.cli`), removed afterwards."""
  fv = flags.FLAGS
  before = set(fv)
  _DEFINE[module](fv)
  try:
    cli.parse_flags(module)([module, *args])
    yield
  finally:
    fv.unparse_flags()
    for name in set(fv) - before:
      delattr(fv, name)


def _run_in_process(runner, name, index, command, stream, latest=None, attempt=1):
  """`driver.StageRunner._run_one`, with the command's main run in this process: the
  driver still writes its flagfile into the workdir and the command reads it from
  there; only the subprocess is gone (it would not see this process's ram://)."""
  del stream, latest, attempt
  module, *args = runner._flagfile_command(name, index, command)  # pylint: disable=protected-access
  with _global_flags(module, args):
    importlib.import_module(module).main([module])


def _config(root: str) -> iterate.ExperimentConfig:
  tiny = iterate.ModelSpec(width=0.1, depth=0.1)
  return iterate.ExperimentConfig(
      workdir=root, train_source=f"folder:{root}/images/train",
      test_source=f"folder:{root}/images/test",
      train_source_images=C * TRAIN_PER_CLASS, num_classes=C, image_size=SIZE,
      record_shards=2, labeled_per_class=LABELED, dev_per_class=DEV, iterations=1,
      teacher=tiny, students=(tiny,),
      noise=iterate.NoiseSpec(augment="none", randaugment_magnitude=0.0,
                              randaugment_layers=0),
      unlabeled_augment="none", batch_size=3, unlabeled_ratio=1.0,
      teacher_train_steps=2, student_train_steps=2, eval_every_steps=0,
      label_shards=1, parallel_jobs=1, min_threshold=0.0, images_per_class=4,
      train_controls=False,
      extra_train_flags=("--steps_per_loop=2", "--eval_batch_size=8", "--strategy=one_device"))


def _count(pattern: str) -> int:
  return sum(1 for f in tf.io.gfile.glob(pattern) for _ in tf.data.TFRecordDataset(f))


def test_the_whole_flow_on_a_remote_filesystem(ram, monkeypatch):
  c = _config(ram)
  _write_class_folders(f"{ram}/images/train", TRAIN_PER_CLASS, seed=0)
  _write_class_folders(f"{ram}/images/test", TEST_PER_CLASS, seed=1)
  monkeypatch.setattr(driver.StageRunner, "_run_one", _run_in_process)
  stages = iterate.plan(c)
  assert [s.name for s in stages] == [
      "data/records_train", "data/records_test", "data/split", "iter0/teacher",
      "iter0/teacher_test", "iter1/label", "iter1/select", "iter1/student",
      "iter1/student_test"]
  runner = driver.StageRunner(c.workdir)
  for stage in stages:
    assert runner.run(stage)
  result = report.write(c)

  unlabeled = C * (TRAIN_PER_CLASS - LABELED)
  assert _count(c.path("data", "records", "test-*")) == C * TEST_PER_CLASS
  assert _count(c.path("data", "split", "labeled-*")) == C * (LABELED - DEV)
  assert _count(c.path("data", "split", "unlabeled-*")) == unlabeled
  assert _count(c.path("iter1", "predictions", "*.tfrecord")) == unlabeled
  assert _count(c.path("iter1", "selected", "*.tfrecord")) == result["iterations"][0][
      "num_pseudo_labeled"] > 0
  for model_dir in (c.model_dir(0), c.model_dir(1)):
    for name in ("model.keras", "model_config.json", "config.json", "flags.txt",
                 "eval_metrics.json", "test/results.json", "test/results.md"):
      assert tf.io.gfile.exists(f"{model_dir}/{name}"), f"{model_dir}/{name}"
    assert tf.io.gfile.exists(f"{model_dir}/ckpt/ckpt-2.index")
    for logdir in ("train", "eval"):
      assert tf.io.gfile.glob(f"{model_dir}/{logdir}/events.out.tfevents.*"), logdir
  for name in ("selection.json", "selection.png", "samples.png"):
    assert tf.io.gfile.exists(c.path("iter1", "selected", name)), name
  for name in ("report.json", "report.md", "report.png", "commands.sh"):
    assert tf.io.gfile.stat(c.path(name)).length > 0, name
  assert 0 <= result["iterations"][0]["student_accuracy"] <= 1
  assert result["iterations"][0]["pseudo_label_accuracy"] is not None
  assert summarize.load(c.workdir)["baseline_accuracy"] == result["baseline_accuracy"]
  # The markers and flagfiles on ram:// are read back: a rerun skips every stage.
  again = driver.StageRunner(c.workdir)
  assert not any(again.run(stage) for stage in stages)
