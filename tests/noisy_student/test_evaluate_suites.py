"""The suites as plug-ins: the registry, and the results.json keys every suite writes.

The keys were pinned before the suites moved out of noisy_student/evaluate.py into
noisy_student/evaluation/ (readers such as report.py depend on them); a key that appears
or disappears here is a change of the output format, not a refactoring.
"""
import pytest
from absl import flags

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
                      "seed", "sequences", "top5_distance"},
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
# The flags of EvalConfig; eval_pattern and eval_batch_size were data_pattern and
# batch_size until the flags were renamed to the names every command uses (docs/flags.md);
# strategy and tpu came with distributed evaluation.
CONFIG_FIELDS = {
    "model", "suite", "output_dir", "eval_pattern", "image_folder", "eval_batch_size",
    "label_offset", "max_examples", "max_bad_records", "preprocess_mode", "per_class",
    "class_subset", "corruption_pattern", "corruption_root", "corruptions", "severities",
    "baseline_results", "normalizer", "alexnet_clean_error", "perturbations", "num_frames",
    "fill_mode", "attacks", "epsilons", "pgd_steps", "pgd_step_size", "pgd_random_start",
    "seed", "strategy", "tpu"}


def _args(suite: str, setup, corrupted) -> list[str]:  # pylint: disable=redefined-outer-name
  data = f"--eval_pattern={setup['data']}"
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
  r = run(setup, "keys_per_class", "--suite=clean", f"--eval_pattern={setup['data']}",
          "--per_class")
  assert set(r) == COMMON | KEYS["clean"] | {"per_class_top1"}
  assert r["plots"] == ["per_class.png"]


def test_the_registry_holds_the_five_suites_in_flag_order():
  from noisy_student import evaluate as ev
  from noisy_student.evaluation import registry
  from noisy_student.evaluation import suite as suite_lib
  assert list(registry.SUITES) == ["clean", "imagenet_a", "corruptions", "perturbations",
                                   "adversarial"]
  assert ev.SUITES == tuple(registry.SUITES)
  assert all(isinstance(s, suite_lib.Suite) for s in registry.SUITES.values())
  assert [n for n, s in registry.SUITES.items() if not s.needs_clean_data] == ["corruptions"]
  fv = flags.FlagValues()
  ev.define_flags(fv)
  assert fv["suite"].parser.enum_values == list(registry.SUITES)


def test_a_new_suite_is_one_registry_entry(setup, monkeypatch):
  """A plug-in computes its numbers, then renders them; evaluate adds the common keys."""
  from noisy_student import evaluate as ev
  from noisy_student.evaluation import registry
  from noisy_student.evaluation import sources
  from noisy_student.evaluation import suite as suite_lib

  def compute(evaluator, baseline):
    assert baseline is None
    batches = evaluator.batches(sources.clean_source(evaluator.config))
    return {"valid_rows": sum(int(b["valid"].sum()) for b in batches)}

  toy = suite_lib.Suite(compute=compute, table=lambda r, b: f"## toy: {r['valid_rows']}",
                        plots=lambda r, b: {"toy": lambda ax: ax.plot([0, r["valid_rows"]])})
  monkeypatch.setitem(registry.SUITES, "toy", toy)
  out = setup["root"] / "toy"
  r = ev.evaluate(ev.EvalConfig(model=setup["model"], suite="toy", output_dir=str(out),
                                eval_pattern=setup["data"], eval_batch_size=10))
  assert r["valid_rows"] == 24 and r["data"] == setup["data"]
  assert set(r) == COMMON - {"plots"} | {"valid_rows"}
  assert "## toy: 24" in (out / "results.md").read_text()
  assert (out / "toy.png").exists()
