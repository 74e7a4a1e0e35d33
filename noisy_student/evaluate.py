r"""Evaluates a trained model: accuracy, ImageNet-A/-C/-P-style robustness, FGSM / PGD.

The measurements of the paper's Sec. 3.3 (Tables 2-4, Fig. 7) for any model and dataset:

  python -m noisy_student.evaluate --model=MODEL_DIR_OR_KERAS --suite=SUITE \
      --output_dir=DIR [--eval_pattern=TFRECORDS | --image_folder=ROOT] ...

  clean          top-1 / top-5 (the exported model already holds the EMA weights),
                 --per_class for per-class top-1.
  imagenet_a     top-1 / top-5 among a class subset (logits outside it are masked):
                 --class_subset=imagenet_a (the 200 ImageNet-A classes; the default for
                 1000-class models) | "3,5,7" | FILE.
  corruptions    ImageNet-C: --corruption_pattern='.../{corruption}/{severity}/*.tfrecord'
                 (e.g. from data.make_corrupted) or --corruption_root=ROOT with
                 ROOT/<corruption>/<severity>/<class>/*.JPEG; errors per corruption and
                 severity, CE / mCE, and with the clean set (--eval_pattern) relative mCE.
  perturbations  ImageNet-P-style sequences built from the clean set (data.robustness.perturbations);
                 flip probability, top-5 distance, FR / mFR.
  adversarial    FGSM and PGD in pixel space, accuracy per --epsilons (0-255 units).

Normalisation (corruptions, perturbations): --normalizer=auto uses --baseline_results
(the results.json of the same suite for a baseline model, e.g. the teacher) when given;
else AlexNet's ImageNet-C errors for 1000-class models; else none (raw errors only, and
the output says so). AlexNet's ImageNet-P flip rates are not included: mFR always needs a
baseline model.

Output in --output_dir (one directory per suite): results.json (all numbers; top-level
"top1"/"top5" for clean and imagenet_a), results.md (a readable table) and PNG plots
(accuracy vs severity, flip probability per perturbation, accuracy vs epsilon); every file
written atomically.

Each suite is a plug-in of noisy_student/evaluation/ (registry.py names them): it computes
its results dict and, separately, renders the table and plots from it.

--strategy / --tpu as for noisy_student.train and noisy_student.label: the model is
loaded under the strategy and every model call (and attack step) runs on its replicas,
each on its share of the batch; the input is read on this host. One replica (the CPU
default) gives the same numbers as no strategy.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf

from data import config_flags
from data.config_flags import setting
from data.input import pipeline
from data.robustness import perturbations as perturb
from noisy_student.common import strategy as strategy_lib
from noisy_student.evaluation import baselines
from noisy_student.evaluation import corruptions as corruptions_lib
from noisy_student.evaluation import model as model_lib
from noisy_student.evaluation import outputs
from noisy_student.evaluation import perturbations as perturbations_lib
from noisy_student.evaluation import registry
from noisy_student.evaluation import robustness as rb
from noisy_student.evaluation import sources

SUITES = tuple(registry.SUITES)  # ("clean", "imagenet_a", "corruptions", ...)
NORMALIZERS = ("auto", "alexnet", "baseline", "none")
PREPROCESS_MODES = ("auto", "imagenet", "small")
FILL_MODES = ("reflect", "nearest", "wrap", "constant")
IMAGE_EXTENSIONS = sources.IMAGE_EXTENSIONS
RESULTS_JSON, RESULTS_MD = outputs.RESULTS_JSON, outputs.RESULTS_MD
# Importable from here as before the suites became plug-ins.
Source, folder_files, folder_dataset, iterate_batches = (
    sources.Source, sources.folder_files, sources.folder_dataset, sources.iterate_batches)
clean_source = sources.clean_source
corruption_source = corruptions_lib.corruption_source
perturbation_predictions = perturbations_lib.perturbation_predictions
Evaluator = model_lib.Evaluator
load_baseline = baselines.load_baseline
write_outputs = outputs.write_outputs


def _expand_all(value: tuple, everything: tuple) -> tuple:
  """("all",), as `--corruptions=all` parses, means every one; other lists as given."""
  return everything if tuple(value) == ("all",) else tuple(value)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate: the flags of `python -m noisy_student.evaluate` (module docstring).

  Every field is a flag (`data.config_flags`); `--data_pattern` and `--batch_size` are the
  old names of `--eval_pattern` and `--eval_batch_size`.
  """
  model: str = setting(None, "A model_dir (model.keras + model_config.json) or a .keras "
                       "file.", required=True)
  suite: str = setting("clean", "What to measure.", choices=SUITES)
  output_dir: str = setting(None, "results.json, results.md and plots go here (one "
                            "directory per suite).", required=True)
  eval_pattern: str = setting("", "Clean eval TFRecords (glob or comma list).",
                              aliases=["data_pattern"])
  image_folder: str = setting("", "Or a class-folder tree ROOT/<class>/<image>.")
  eval_batch_size: int = setting(256, "Images per model call.", aliases=["batch_size"])
  label_offset: int = setting(0, "1 for 1-based ImageNet TPU TFRecords.")
  max_examples: int = setting(0, "Evaluate only the first N images (0: all).")
  max_bad_records: int = setting(
      pipeline.DEFAULT_MAX_BAD_RECORDS, "Records that do not decode or have a label out of "
      "range are skipped and counted; more than this many per data source stop the run.")
  preprocess_mode: str = setting(
      "auto", "Eval preprocessing; auto: the model's stored preprocess_mode (older model "
      "dirs: small for small-image models).", choices=PREPROCESS_MODES)
  per_class: bool = setting(False, "clean: also per-class top-1.")
  class_subset: str = setting("", "imagenet_a | comma list | FILE of class indices.")
  corruption_pattern: str = setting("", "TFRecords with {corruption} and {severity} "
                                    "placeholders.")
  corruption_root: str = setting("", "ImageNet-C folders ROOT/<corruption>/<severity>/"
                                 "<class>/*.JPEG.")
  corruptions: tuple[str, ...] = setting(rb.CORRUPTIONS, "all (the 15 ImageNet-C ones, "
                                         "the default) or a list.")
  severities: tuple[int, ...] = setting(rb.SEVERITIES, "Severities to evaluate.")
  baseline_results: str = setting("", "results.json of the same suite for a baseline "
                                  "model: normalises CE / FR by it.")
  normalizer: str = setting("auto", "auto: baseline if given, else AlexNet for 1000-class "
                            "corruptions, else none.", choices=NORMALIZERS)
  alexnet_clean_error: float = setting(rb.ALEXNET_CLEAN_ERROR, "AlexNet's clean ImageNet "
                                       "error for the AlexNet-relative mCE.")
  perturbations: tuple[str, ...] = setting(
      perturb.PERTURBATIONS, "all (the default) or a list of " +
      ",".join(perturb.PERTURBATIONS))
  num_frames: int = setting(perturb.DEFAULT_NUM_FRAMES, "Frames per sequence.")
  fill_mode: str = setting("reflect", "Fill outside the image for geometric "
                           "perturbations.", choices=FILL_MODES)
  attacks: tuple[str, ...] = setting(("fgsm", "pgd"), "Attacks to run.")
  epsilons: tuple[float, ...] = setting((0, 1, 2, 4, 8, 16), "L-inf budgets in 0-255 "
                                        "pixel units.")
  pgd_steps: int = setting(10, "PGD steps.")
  pgd_step_size: float = setting(0.0, "PGD step (pixel units); 0: 2.5*eps/steps.")
  pgd_random_start: bool = setting(True, "PGD starts at a random point of the ball.")
  seed: int = setting(0, "Seed of perturbation sequences and PGD starts.")
  strategy: str = setting(
      "auto", "tf.distribute strategy, one host: auto (a TPU if one is named or "
      "reachable, else every local GPU, else the CPU), tpu, mirrored or one_device; "
      "each replica scores its share of a batch.", choices=strategy_lib.STRATEGIES)
  tpu: str | None = setting(None, "TPU name or grpc:// address (implies --strategy=tpu "
                            "under auto); 'local' on a TPU VM.")

  def __post_init__(self):
    object.__setattr__(self, "corruptions", _expand_all(self.corruptions, rb.CORRUPTIONS))
    object.__setattr__(self, "perturbations",
                       _expand_all(self.perturbations, perturb.PERTURBATIONS))
    if not self.model or not self.output_dir:
      raise ValueError("--model and --output_dir are required")
    if self.suite not in registry.SUITES:
      raise ValueError(f"suite must be one of {tuple(registry.SUITES)}, "
                       f"got {self.suite!r}")
    if self.normalizer not in NORMALIZERS:
      raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
    needs_clean = registry.SUITES[self.suite].needs_clean_data
    if needs_clean and not (self.eval_pattern or self.image_folder):
      raise ValueError(f"--suite={self.suite} needs --eval_pattern or --image_folder")
    if self.eval_pattern and self.image_folder:
      raise ValueError("give --eval_pattern or --image_folder, not both")
    if self.suite == "corruptions" and bool(self.corruption_pattern) == bool(
        self.corruption_root):
      raise ValueError("--suite=corruptions needs exactly one of --corruption_pattern "
                       "and --corruption_root")
    if self.normalizer == "baseline" and not self.baseline_results:
      raise ValueError("--normalizer=baseline needs --baseline_results")
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
    if self.eval_batch_size < 1:
      raise ValueError(f"--eval_batch_size must be >= 1, got {self.eval_batch_size}")
    for name in ("max_examples", "max_bad_records"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


def evaluate(config: EvalConfig, strategy: tf.distribute.Strategy | None = None) -> dict:
  """Runs one suite and writes its outputs; returns the results dict.

  The suite's plug-in picks its baseline (before the model runs, so a mismatched one
  fails early), computes its numbers, and renders them; the keys every suite shares
  ("suite", "model", "data", "config", "seconds", the skipped records) are added here.
  The model runs under `strategy` (default: `--strategy` / `--tpu`).
  """
  outputs.check_output_dir(config.output_dir, config.suite)
  start = time.time()
  suite = registry.SUITES[config.suite]
  strategy = strategy or strategy_lib.get_strategy(config.strategy, config.tpu)
  strategy_lib.require_one_host(strategy, "noisy_student.evaluate",
                                "use --strategy=mirrored, tpu or one_device")
  ev = model_lib.Evaluator(config, strategy)
  baseline = suite.baseline(config, ev.num_classes)
  results = suite.compute(ev, baseline)
  skipped = ev.skipped_total()
  results = {"suite": config.suite, "model": config.model, "model_config": ev.model_config,
             "data": suite.data(config), "config": dataclasses.asdict(config),
             "seconds": round(time.time() - start, 1), **results, **skipped}
  if len(ev.skipped) > 1:
    results["skipped_by_source"] = ev.skipped
  table = suite.table(results, baseline)
  table += (f"\n\n- not scored: {skipped['unlabeled_records']} records without a label, "
            f"{skipped['failed_records']} records that do not decode or whose label is "
            f"outside [0, {ev.num_classes})")
  outputs.write_outputs(config.output_dir, results, table, suite.plots(results, baseline))
  return results


def config_from_flags(flag_values=None) -> EvalConfig:
  """The EvalConfig of parsed absl flags (`FLAGS` or a FlagValues from `define_flags`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return config_flags.read(EvalConfig, flags.FLAGS if flag_values is None else flag_values)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  config = config_from_flags()
  evaluate(config)
  with tf.io.gfile.GFile(os.path.join(config.output_dir, RESULTS_MD)) as md:
    print(md.read())


def define_flags(flag_values=None):
  """Defines the entry's flags, made from `EvalConfig` (on `flag_values`, default absl's
  global FLAGS)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  config_flags.define(EvalConfig, flags.FLAGS if flag_values is None else flag_values)


if __name__ == "__main__":
  from data import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
