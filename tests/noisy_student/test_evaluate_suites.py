"""The results.json of every suite keeps its keys (readers such as report.py depend on them).

Pinned before the suites moved out of noisy_student/evaluate.py into plug-ins; a key that
appears or disappears here is a change of the output format, not a refactoring.
"""
import pytest

from tests.noisy_student.test_evaluate import corrupted  # noqa: F401  (fixture)
from tests.noisy_student.test_evaluate import run
from tests.noisy_student.test_evaluate import setup  # noqa: F401  (fixture)

COMMON = {"config", "data", "failed_records", "model", "model_config", "plots", "seconds",
          "suite", "unlabeled_records"}
KEYS = {
    "clean": {"count", "top1", "top5"},
    "imagenet_a": {"class_subset", "count", "top1", "top5"},
    "corruptions": {"clean_error", "counts", "errors", "mean_error", "normalization",
                    "severities", "skipped_by_source", "top5_errors"},
    "perturbations": {"count", "fill_mode", "flip_probability", "frame_accuracy",
                      "mean_flip_probability", "normalization", "num_frames", "rule",
                      "seed", "top5_distance"},
    "adversarial": {"accuracy", "count", "epsilons", "pgd", "top5", "units"},
}
WITH_BASELINE = {
    "corruptions": {"ce", "corruptions", "mce", "relative_ce", "relative_mce",
                    "relative_unnormalised", "unnormalised"},
    "perturbations": {"fr", "mfr", "mt5d", "t5d_ratio"},
    "adversarial": {"baseline_results"},
}
NORMALIZATION = {
    "corruptions": ({"by", "note"}, {"baseline_clean_error", "baseline_model",
                                     "baseline_results", "by", "note"}),
    "perturbations": ({"by", "note"}, {"baseline_model", "baseline_results", "by", "note",
                                       "unnormalised"}),
}
PLOTS = {"clean": [], "imagenet_a": [], "corruptions": ["accuracy_vs_severity.png"],
         "perturbations": ["flip_probability.png"],
         "adversarial": ["accuracy_vs_epsilon.png"]}
CONFIG_FIELDS = {
    "model", "suite", "output_dir", "data_pattern", "image_folder", "batch_size",
    "label_offset", "max_examples", "max_bad_records", "preprocess_mode", "per_class",
    "class_subset", "corruption_pattern", "corruption_root", "corruptions", "severities",
    "baseline_results", "normalizer", "alexnet_clean_error", "perturbations", "num_frames",
    "fill_mode", "attacks", "epsilons", "pgd_steps", "pgd_step_size", "pgd_random_start",
    "seed"}


def _args(suite: str, setup, corrupted) -> list[str]:  # pylint: disable=redefined-outer-name
  data = f"--data_pattern={setup['data']}"
  return {
      "clean": [data],
      "imagenet_a": [data, "--class_subset=1"],
      "corruptions": [data, "--corruptions=brightness", "--severities=1",
                      f"--corruption_pattern={corrupted}/{{corruption}}/{{severity}}/*.tfrecord"],
      "perturbations": [data, "--num_frames=2", "--perturbations=brightness",
                        "--max_examples=4"],
      "adversarial": [data, "--epsilons=0,8", "--pgd_steps=1"],
  }[suite]


@pytest.mark.parametrize("suite", list(KEYS))
def test_results_json_keys(suite, setup, corrupted):  # pylint: disable=redefined-outer-name
  args = [f"--suite={suite}", *_args(suite, setup, corrupted)]
  r = run(setup, f"keys_{suite}", *args)
  assert set(r) == COMMON | KEYS[suite]
  assert set(r["config"]) == CONFIG_FIELDS
  assert r["plots"] == PLOTS[suite]
  if suite in NORMALIZATION:
    assert set(r["normalization"]) == NORMALIZATION[suite][0]
  if suite in WITH_BASELINE:
    baseline = setup["root"] / f"keys_{suite}" / "results.json"
    b = run(setup, f"keys_{suite}_baseline", *args, f"--baseline_results={baseline}")
    assert set(b) == COMMON | KEYS[suite] | WITH_BASELINE[suite]
    if suite in NORMALIZATION:
      assert set(b["normalization"]) == NORMALIZATION[suite][1]


def test_per_class_adds_its_key_and_plot(setup):  # pylint: disable=redefined-outer-name
  r = run(setup, "keys_per_class", "--suite=clean", f"--data_pattern={setup['data']}",
          "--per_class")
  assert set(r) == COMMON | KEYS["clean"] | {"per_class_top1"}
  assert r["plots"] == ["per_class.png"]
