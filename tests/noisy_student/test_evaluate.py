"""noisy_student.evaluate end to end: a tiny trained model, tiny TFRecords, every suite."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

from data.records import schema
from noisy_student import evaluate as ev
from noisy_student.common import model_io
from tests.noisy_student.test_attacks import brightness_task
from tests.noisy_student.test_attacks import trained_tiny_model

N = 24


def _png(image) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def write_records(path, images, labels):
  import tensorflow as tf
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tf.io.TFRecordWriter(path) as w:
    for i, (image, label) in enumerate(zip(images, labels)):
      w.write(schema.make_example(schema.image_features(
          _png(image), f"img-{i}", int(label))).SerializeToString())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  model_dir = str(root / "model")
  model_io.save_model(trained_tiny_model(), model_dir,
                      {"num_classes": 2, "image_size": 32, "small_image": True})
  images, labels = brightness_task(N, seed=3)
  write_records(str(root / "data/test-00000.tfrecord"), images, labels)
  return {"root": root, "model": model_dir, "data": str(root / "data/test-*"),
          "images": images, "labels": labels}


def run(setup, out: str, *args) -> dict:
  """Parses the CLI flags in-process (as `python -m noisy_student.evaluate` would)."""
  fv = flags.FlagValues()
  ev.define_flags(fv)
  fv(["evaluate", f"--model={setup['model']}", f"--output_dir={setup['root'] / out}",
      *args])
  ev.evaluate(ev.config_from_flags(fv))
  out_dir = setup["root"] / out
  assert (out_dir / "results.md").exists()
  return json.loads((out_dir / "results.json").read_text())


def test_clean(setup):
  r = run(setup, "clean", "--suite=clean", f"--eval_pattern={setup['data']}", "--per_class",
          "--eval_batch_size=10")  # 24 = 10 + 10 + 4 padded rows
  assert r["suite"] == "clean" and r["count"] == N and r["failed_records"] == 0
  assert r["top1"] > 0.9 and r["top5"] == 1.0
  assert set(r["per_class_top1"]) == {"0", "1"}
  assert (setup["root"] / "clean/per_class.png").exists()


@pytest.mark.slow  # ~30 s of TensorFlow start-up; the flags are parsed in-process above.
def test_clean_cli_subprocess(setup):
  out = setup["root"] / "cli"
  # --data_pattern: the old name of --eval_pattern, as older scripts spell it.
  proc = subprocess.run(
      [sys.executable, "-m", "noisy_student.evaluate", f"--model={setup['model']}",
       "--suite=clean", f"--data_pattern={setup['data']}", f"--output_dir={out}",
       "--max_examples=5"], capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "top-1 %" in proc.stdout
  assert json.loads((out / "results.json").read_text())["count"] == 5


def test_imagenet_a_style_subset(setup):
  # With the subset {1}, every prediction is class 1: top-1 = the share of label 1.
  r = run(setup, "subset", "--suite=imagenet_a", f"--eval_pattern={setup['data']}",
          "--class_subset=1")
  assert r["class_subset"] == [1]
  assert r["top1"] == pytest.approx(np.mean(setup["labels"] == 1))


def test_imagenet_a_folder_with_subset_labels(setup):
  # A folder tree with one class folder per subset class: folder i is class subset[i].
  root = setup["root"] / "folder_a"
  for i, (image, label) in enumerate(zip(setup["images"], setup["labels"])):
    if label == 1:
      (root / "only_class").mkdir(parents=True, exist_ok=True)
      (root / "only_class" / f"{i}.png").write_bytes(_png(image))
  r = run(setup, "subset_folder", "--suite=imagenet_a", f"--image_folder={root}",
          "--class_subset=1")
  assert r["count"] == int(np.sum(setup["labels"] == 1)) and r["top1"] == 1.0


def test_imagenet_a_needs_a_subset_for_small_models(setup):
  with pytest.raises(ValueError, match="class_subset"):
    run(setup, "subset_missing", "--suite=imagenet_a", f"--eval_pattern={setup['data']}")


@pytest.fixture(scope="module")
def corrupted(setup):
  pytest.importorskip("imagecorruptions")
  from data import make_corrupted as mc
  out = str(setup["root"] / "data-c")
  mc.make_corrupted(mc.CorruptConfig(
      input_pattern=setup["data"], output_dir=out, corruptions=("gaussian_noise", "brightness"),
      severities=(1, 5)))
  return out


def test_corruptions_with_and_without_baseline(setup, corrupted):
  common = ["--suite=corruptions", "--corruptions=gaussian_noise,brightness",
            "--severities=1,5", f"--eval_pattern={setup['data']}",
            f"--corruption_pattern={corrupted}/{{corruption}}/{{severity}}/*.tfrecord"]
  teacher = run(setup, "c_teacher", *common)
  assert teacher["normalization"]["by"] == "none" and "mce" not in teacher
  assert set(teacher["errors"]) == {"gaussian_noise", "brightness"}
  assert teacher["counts"]["brightness"]["5"] == N
  # The model classifies by brightness: the brightness corruption breaks it, more so at
  # severity 5; zero-mean noise barely matters.
  assert teacher["errors"]["brightness"]["5"] > max(teacher["errors"]["brightness"]["1"], 0.3)
  assert teacher["errors"]["gaussian_noise"]["1"] < 0.2
  assert (setup["root"] / "c_teacher/accuracy_vs_severity.png").exists()
  baseline = str(setup["root"] / "c_teacher/results.json")
  student = run(setup, "c_student", *common, f"--baseline_results={baseline}")
  assert student["normalization"]["by"] == "baseline"
  assert student["ce"]["brightness"] == pytest.approx(100.0)  # its own baseline
  assert student["mce"] == pytest.approx(100.0)
  assert student["relative_ce"]["brightness"] == pytest.approx(100.0)
  if teacher["errors"]["gaussian_noise"]["1"] == teacher["errors"]["gaussian_noise"]["5"] == 0:
    assert student["ce"]["gaussian_noise"] is None  # NaN: nothing to normalise by
    assert student["unnormalised"] == ["gaussian_noise"]
  text = (setup["root"] / "c_student/results.md").read_text()
  assert "mCE: 100.00" in text and "baseline model" in text


def test_corruptions_from_imagenet_c_folders(setup, corrupted):
  # The same images laid out as ImageNet-C folders give the same errors.
  import tensorflow as tf
  root = setup["root"] / "imagenet-c"
  for sev in (1, 5):
    for raw in tf.data.TFRecordDataset(
        tf.io.gfile.glob(f"{corrupted}/brightness/{sev}/*.tfrecord")).as_numpy_iterator():
      feats = tf.train.Example.FromString(raw).features.feature
      label = feats[schema.LABEL].int64_list.value[0]
      path = root / "brightness" / str(sev) / f"class{label}"
      path.mkdir(parents=True, exist_ok=True)
      (path / (feats[schema.ID].bytes_list.value[0].decode() + ".png")).write_bytes(
          feats[schema.ENCODED].bytes_list.value[0])
  r = run(setup, "c_folders", "--suite=corruptions", "--corruptions=brightness",
          "--severities=1,5", f"--corruption_root={root}")
  tf_r = json.loads((setup["root"] / "c_teacher/results.json").read_text())
  assert r["errors"]["brightness"] == pytest.approx(tf_r["errors"]["brightness"])


def test_perturbations_with_baseline(setup):
  common = ["--suite=perturbations", f"--eval_pattern={setup['data']}", "--num_frames=3",
            "--perturbations=gaussian_noise,brightness", "--max_examples=12",
            "--eval_batch_size=20"]  # 6 sequences of 3 frames per model call
  first = run(setup, "p_teacher", *common)
  assert first["count"] == 12
  assert first["rule"] == {"gaussian_noise": "first frame", "brightness": "previous frame"}
  assert all(0 <= v <= 1 for v in first["flip_probability"].values())
  # A +-0.2 brightness sweep crosses this brightness classifier's boundary.
  assert first["flip_probability"]["brightness"] > 0
  assert first["normalization"]["by"] == "none"
  baseline = str(setup["root"] / "p_teacher/results.json")
  second = run(setup, "p_student", *common, f"--baseline_results={baseline}")
  # Deterministic sequences: the same model flips exactly as often as its baseline.
  assert second["flip_probability"] == first["flip_probability"]
  assert second["fr"]["brightness"] == pytest.approx(100.0)
  assert second["mfr"] == pytest.approx(100.0)
  with pytest.raises(ValueError, match="num_frames"):
    run(setup, "p_bad", *common[:2], "--num_frames=4", f"--baseline_results={baseline}")
  # Results from an earlier definition of the sequences (no "sequences" field: version 1)
  # are not a baseline for this one.
  assert first["sequences"] == 2
  old = dict(first)
  del old["sequences"]
  old_path = setup["root"] / "p_old.json"
  old_path.write_text(json.dumps(old))
  with pytest.raises(ValueError, match="version 1.*version 2"):
    run(setup, "p_bad_version", *common, f"--baseline_results={old_path}")


def test_adversarial(setup):
  r = run(setup, "adv", "--suite=adversarial", f"--eval_pattern={setup['data']}",
          "--epsilons=0,8,32", "--pgd_steps=3", "--eval_batch_size=16")
  fgsm, pgd = r["accuracy"]["fgsm"], r["accuracy"]["pgd"]
  assert fgsm["0"] == pgd["0"] > 0.9
  assert fgsm["0"] >= fgsm["8"] >= fgsm["32"] and fgsm["32"] < 0.2
  assert pgd["32"] <= fgsm["32"] + 1e-9
  assert (setup["root"] / "adv/accuracy_vs_epsilon.png").exists()


def test_config_errors(setup):
  with pytest.raises(ValueError, match="eval_pattern"):
    ev.EvalConfig(model="m", suite="clean", output_dir="o")
  with pytest.raises(ValueError, match="corruption_pattern"):
    ev.EvalConfig(model="m", suite="corruptions", output_dir="o")
  with pytest.raises(ValueError, match="separate --output_dir"):
    run(setup, "clean", "--suite=adversarial", f"--eval_pattern={setup['data']}")


def _parse(*args) -> ev.EvalConfig:
  fv = flags.FlagValues()
  ev.define_flags(fv)
  fv(["evaluate", "--model=m", "--output_dir=o", *args])
  return ev.config_from_flags(fv)


def test_flags_are_made_from_the_config():
  """Defaults and list flags behave as the hand-written flags did; old names are aliases."""
  from data.robustness import perturbations as perturb
  from noisy_student.evaluation import robustness as rb
  default = _parse("--eval_pattern=p")
  assert default == ev.EvalConfig(model="m", output_dir="o", eval_pattern="p")
  assert (default.suite, default.eval_batch_size, default.normalizer) == (
      "clean", 256, "auto")
  assert default.corruptions == rb.CORRUPTIONS and default.severities == (1, 2, 3, 4, 5)
  assert default.perturbations == perturb.PERTURBATIONS
  assert default.attacks == ("fgsm", "pgd") and default.epsilons == (0, 1, 2, 4, 8, 16)
  spelled = _parse("--eval_pattern=p", "--corruptions=all", "--perturbations=all",
                   "--severities=1,2,3,4,5", "--epsilons=0,1,2,4,8,16")
  assert spelled == default
  lists = _parse("--eval_pattern=p", "--corruptions=fog, snow", "--severities=1,5",
                 "--epsilons=0,0.5", "--attacks=fgsm")
  assert (lists.corruptions, lists.severities, lists.epsilons, lists.attacks) == (
      ("fog", "snow"), (1, 5), (0.0, 0.5), ("fgsm",))
  assert _parse("--data_pattern=p", "--batch_size=7") == _parse(
      "--eval_pattern=p", "--eval_batch_size=7")
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--eval_pattern=p", "--normalizer=median")


def test_records_without_a_label_are_counted_and_reported(setup):
  """Unlabeled records cannot be scored; they are counted, never silently dropped."""
  labels = np.array(setup["labels"])
  labels[[1, 5, 6]] = -1
  write_records(str(setup["root"] / "partly/test-00000.tfrecord"), setup["images"], labels)
  r = run(setup, "partly_out", "--suite=clean",
          f"--eval_pattern={setup['root'] / 'partly/test-*'}")
  assert r["count"] == N - 3 and r["unlabeled_records"] == 3 and r["failed_records"] == 0
  table = (setup["root"] / "partly_out/results.md").read_text()
  assert "3 records without a label" in table
  adv = run(setup, "partly_adv", "--suite=adversarial", "--epsilons=0", "--attacks=fgsm",
            f"--eval_pattern={setup['root'] / 'partly/test-*'}")
  assert adv["unlabeled_records"] == 3


def _bad_records_file(setup, name):
  """The test images plus an undecodable PNG, a non-Example and a label outside [0, 2)."""
  import tensorflow as tf
  path = setup["root"] / name / "test-00000.tfrecord"
  write_records(str(path), setup["images"], setup["labels"])
  with tf.io.TFRecordWriter(str(path.parent / "test-00001.tfrecord")) as w:
    w.write(schema.make_example(schema.image_features(
        _png(setup["images"][0])[:40], "bad/png", 0)).SerializeToString())
    w.write(b"not an Example")
    w.write(schema.make_example(schema.image_features(
        _png(setup["images"][0]), "bad/label", 5)).SerializeToString())
  return str(path.parent / "test-*")


def test_bad_records_are_skipped_counted_and_limited(setup):
  pattern = _bad_records_file(setup, "bad")
  r = run(setup, "bad_out", "--suite=clean", f"--eval_pattern={pattern}")
  assert r["count"] == N and r["failed_records"] == 3
  with pytest.raises(ValueError, match="more than --max_bad_records=2"):
    run(setup, "bad_limit", "--suite=clean", f"--eval_pattern={pattern}",
        "--max_bad_records=2")


def test_truncated_file_is_named(setup):
  pattern = _bad_records_file(setup, "truncated")
  path = setup["root"] / "truncated" / "test-00000.tfrecord"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match=f"{path}: truncated record at"):
    run(setup, "truncated_out", "--suite=clean", f"--eval_pattern={pattern}")


STRATEGY_SUITES = {
    "clean": ["--per_class"],
    "adversarial": ["--epsilons=0,16", "--pgd_steps=2"],
    "perturbations": ["--num_frames=2", "--perturbations=gaussian_noise,rotate",
                      "--max_examples=6"],
}


def _numbers(r: dict) -> dict:
  return {k: v for k, v in r.items() if k not in ("seconds", "config")}


@pytest.mark.parametrize("suite", list(STRATEGY_SUITES))
def test_one_replica_strategy_gives_the_same_numbers_as_none(setup, suite):
  """--strategy=mirrored on this CPU (one replica) against the model run with no
  strategy at all: the same numbers, to the bit."""
  import tensorflow as tf
  args = [f"--suite={suite}", f"--eval_pattern={setup['data']}", "--eval_batch_size=10",
          *STRATEGY_SUITES[suite]]
  fv = flags.FlagValues()
  ev.define_flags(fv)
  fv(["evaluate", f"--model={setup['model']}",
      f"--output_dir={setup['root'] / f'no_strategy_{suite}'}", *args])
  ev.evaluate(ev.config_from_flags(fv), strategy=tf.distribute.get_strategy())
  plain = json.loads((setup["root"] / f"no_strategy_{suite}" / "results.json").read_text())
  mirrored = run(setup, f"mirrored_{suite}", *args, "--strategy=mirrored")
  assert mirrored["config"]["strategy"] == "mirrored"
  assert _numbers(mirrored) == _numbers(plain)


def test_strategy_flags_parse():
  assert (_parse("--eval_pattern=p").strategy, _parse("--eval_pattern=p").tpu) == (
      "auto", None)
  tpu = _parse("--eval_pattern=p", "--strategy=tpu", "--tpu=my-pod")
  assert (tpu.strategy, tpu.tpu) == ("tpu", "my-pod")
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--eval_pattern=p", "--strategy=horovod")


def test_multi_worker_is_refused(setup, monkeypatch):
  import tensorflow as tf
  monkeypatch.setattr(ev.strategy_lib, "get_strategy", lambda name, tpu: object.__new__(
      tf.distribute.MultiWorkerMirroredStrategy))
  with pytest.raises(ValueError, match="runs on one host"):
    run(setup, "multi_worker", f"--eval_pattern={setup['data']}", "--strategy=multi_worker")


def test_image_folders_are_listed_by_the_one_class_folder_listing(tmp_path):
  """evaluate --image_folder lists classes as data.make_tfrecords does (sorted class
  folders, nested images, hidden files and temporaries skipped) and names an image that
  tf.io.decode_image cannot read instead of dropping it."""
  from noisy_student.evaluation import sources
  for rel in ("b/2.png", "b/deeper/1.jpg", "a/1.png", "a/.tmp-x.png", ".hidden/3.png"):
    (tmp_path / "imgs" / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "imgs" / rel).write_bytes(b"x")
  files, labels, classes = sources.folder_files(str(tmp_path / "imgs"))
  assert classes == ["a", "b"] and labels == [0, 1, 1]
  assert [f[len(str(tmp_path / "imgs")) + 1:] for f in files] == [
      "a/1.png", "b/2.png", "b/deeper/1.jpg"]
  (tmp_path / "imgs" / "b" / "scan.tif").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"scan\.tif: evaluation decodes with tf.io.decode_image"):
    sources.folder_files(str(tmp_path / "imgs"))
  (tmp_path / "flat").mkdir()
  (tmp_path / "flat" / "1.png").write_bytes(b"x")
  with pytest.raises(ValueError, match="no class folders"):
    sources.folder_files(str(tmp_path / "flat"))
