r"""Evaluates a trained model: accuracy, ImageNet-A/-C/-P-style robustness, FGSM / PGD.

The measurements of the paper's Sec. 3.3 (Tables 2-4, Fig. 7) for any model and dataset:

  python -m noisy_student.evaluate --model=MODEL_DIR_OR_KERAS --suite=SUITE \
      --output_dir=DIR [--data_pattern=TFRECORDS | --image_folder=ROOT] ...

  clean          top-1 / top-5 (the exported model already holds the EMA weights),
                 --per_class for per-class top-1.
  imagenet_a     top-1 / top-5 among a class subset (logits outside it are masked):
                 --class_subset=imagenet_a (the 200 ImageNet-A classes; the default for
                 1000-class models) | "3,5,7" | FILE.
  corruptions    ImageNet-C: --corruption_pattern='.../{corruption}/{severity}/*.tfrecord'
                 (e.g. from data.make_corrupted) or --corruption_root=ROOT with
                 ROOT/<corruption>/<severity>/<class>/*.JPEG; errors per corruption and
                 severity, CE / mCE, and with the clean set (--data_pattern) relative mCE.
  perturbations  ImageNet-P-style sequences built from the clean set (data.perturbations);
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

Each suite is a plug-in of noisy_student/evaluators/ (registry.py names them): it computes
its results dict and, separately, renders the table and plots from it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import tensorflow as tf

from data import perturbations as perturb
from data import pipeline
from noisy_student import robustness as rb
from noisy_student.evaluators import baselines
from noisy_student.evaluators import corruptions as corruptions_lib
from noisy_student.evaluators import model as model_lib
from noisy_student.evaluators import outputs
from noisy_student.evaluators import perturbations as perturbations_lib
from noisy_student.evaluators import registry
from noisy_student.evaluators import sources

SUITES = tuple(registry.SUITES)  # ("clean", "imagenet_a", "corruptions", ...)
NORMALIZERS = ("auto", "alexnet", "baseline", "none")
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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate; see the module docstring and the flags of `main`."""
  model: str
  suite: str
  output_dir: str
  data_pattern: str = ""
  image_folder: str = ""
  batch_size: int = 256
  label_offset: int = 0
  max_examples: int = 0
  max_bad_records: int = pipeline.DEFAULT_MAX_BAD_RECORDS
  preprocess_mode: str = "auto"
  per_class: bool = False
  class_subset: str = ""
  corruption_pattern: str = ""
  corruption_root: str = ""
  corruptions: tuple[str, ...] = rb.CORRUPTIONS
  severities: tuple[int, ...] = rb.SEVERITIES
  baseline_results: str = ""
  normalizer: str = "auto"
  alexnet_clean_error: float = rb.ALEXNET_CLEAN_ERROR
  perturbations: tuple[str, ...] = perturb.PERTURBATIONS
  num_frames: int = perturb.DEFAULT_NUM_FRAMES
  fill_mode: str = "reflect"
  attacks: tuple[str, ...] = ("fgsm", "pgd")
  epsilons: tuple[float, ...] = (0, 1, 2, 4, 8, 16)
  pgd_steps: int = 10
  pgd_step_size: float = 0.0       # 0: 2.5 * epsilon / steps
  pgd_random_start: bool = True
  seed: int = 0

  def __post_init__(self):
    if self.suite not in registry.SUITES:
      raise ValueError(f"suite must be one of {tuple(registry.SUITES)}, "
                       f"got {self.suite!r}")
    if self.normalizer not in NORMALIZERS:
      raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {self.normalizer!r}")
    needs_clean = registry.SUITES[self.suite].needs_clean_data
    if needs_clean and not (self.data_pattern or self.image_folder):
      raise ValueError(f"--suite={self.suite} needs --data_pattern or --image_folder")
    if self.data_pattern and self.image_folder:
      raise ValueError("give --data_pattern or --image_folder, not both")
    if self.suite == "corruptions" and bool(self.corruption_pattern) == bool(
        self.corruption_root):
      raise ValueError("--suite=corruptions needs exactly one of --corruption_pattern "
                       "and --corruption_root")
    if self.normalizer == "baseline" and not self.baseline_results:
      raise ValueError("--normalizer=baseline needs --baseline_results")
    if self.num_frames < 2:
      raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
    if self.batch_size < 1:
      raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
    for name in ("max_examples", "max_bad_records"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


def evaluate(config: EvalConfig) -> dict:
  """Runs one suite and writes its outputs; returns the results dict.

  The suite's plug-in picks its baseline (before the model runs, so a mismatched one
  fails early), computes its numbers, and renders them; the keys every suite shares
  ("suite", "model", "data", "config", "seconds", the skipped records) are added here.
  """
  outputs.check_output_dir(config.output_dir, config.suite)
  start = time.time()
  suite = registry.SUITES[config.suite]
  ev = model_lib.Evaluator(config)
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


def config_from_flags(f) -> EvalConfig:
  """The EvalConfig of parsed absl flags (`FLAGS` or a FlagValues from `define_flags`)."""
  floats = lambda s: tuple(float(x) for x in s.split(",") if x.strip())
  names = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
  corruptions = rb.CORRUPTIONS if f.corruptions == "all" else names(f.corruptions)
  perturbations = (perturb.PERTURBATIONS if f.perturbations == "all"
                   else names(f.perturbations))
  return EvalConfig(
      model=f.model, suite=f.suite, output_dir=f.output_dir, data_pattern=f.data_pattern,
      image_folder=f.image_folder, batch_size=f.batch_size, label_offset=f.label_offset,
      max_examples=f.max_examples, max_bad_records=f.max_bad_records,
      preprocess_mode=f.preprocess_mode, per_class=f.per_class,
      class_subset=f.class_subset, corruption_pattern=f.corruption_pattern,
      corruption_root=f.corruption_root, corruptions=corruptions,
      severities=tuple(int(s) for s in names(f.severities)),
      baseline_results=f.baseline_results, normalizer=f.normalizer,
      alexnet_clean_error=f.alexnet_clean_error, perturbations=perturbations,
      num_frames=f.num_frames, fill_mode=f.fill_mode, attacks=names(f.attacks),
      epsilons=floats(f.epsilons), pgd_steps=f.pgd_steps, pgd_step_size=f.pgd_step_size,
      pgd_random_start=f.pgd_random_start, seed=f.seed)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = config_from_flags(flags.FLAGS)
  evaluate(config)
  with tf.io.gfile.GFile(os.path.join(config.output_dir, RESULTS_MD)) as md:
    print(md.read())


def define_flags(flag_values=None):
  """Defines the entry's flags (on `flag_values`, default absl's global FLAGS)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  kw = {"flag_values": fv}
  flags.DEFINE_string("model", None, "A model_dir (model.keras + model_config.json) or a "
                      ".keras file.", **kw)
  flags.DEFINE_enum("suite", "clean", list(SUITES), "What to measure.", **kw)
  flags.DEFINE_string("output_dir", None, "results.json, results.md and plots go here "
                      "(one directory per suite).", **kw)
  flags.DEFINE_string("data_pattern", "", "Clean eval TFRecords (glob or comma list).", **kw)
  flags.DEFINE_string("image_folder", "", "Or a class-folder tree ROOT/<class>/<image>.",
                      **kw)
  flags.DEFINE_integer("batch_size", 256, "Images per model call.", **kw)
  flags.DEFINE_integer("label_offset", 0, "1 for 1-based ImageNet TPU TFRecords.", **kw)
  flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N images (0: all).", **kw)
  flags.DEFINE_integer("max_bad_records", pipeline.DEFAULT_MAX_BAD_RECORDS,
                       "Records that do not decode or have a label out of range are "
                       "skipped and counted; more than this many per data source stop the "
                       "run.", **kw)
  flags.DEFINE_enum("preprocess_mode", "auto", ["auto", "imagenet", "small"],
                    "Eval preprocessing; auto: the model's stored preprocess_mode (older "
                    "model dirs: small for small-image models).", **kw)
  flags.DEFINE_bool("per_class", False, "clean: also per-class top-1.", **kw)
  flags.DEFINE_string("class_subset", "", "imagenet_a | comma list | FILE of class indices.",
                      **kw)
  flags.DEFINE_string("corruption_pattern", "", "TFRecords with {corruption} and "
                      "{severity} placeholders.", **kw)
  flags.DEFINE_string("corruption_root", "", "ImageNet-C folders ROOT/<corruption>/"
                      "<severity>/<class>/*.JPEG.", **kw)
  flags.DEFINE_string("corruptions", "all", "all (the 15 ImageNet-C ones) or a list.", **kw)
  flags.DEFINE_string("severities", "1,2,3,4,5", "Severities to evaluate.", **kw)
  flags.DEFINE_string("baseline_results", "", "results.json of the same suite for a "
                      "baseline model: normalises CE / FR by it.", **kw)
  flags.DEFINE_enum("normalizer", "auto", list(NORMALIZERS), "auto: baseline if given, "
                    "else AlexNet for 1000-class corruptions, else none.", **kw)
  flags.DEFINE_float("alexnet_clean_error", rb.ALEXNET_CLEAN_ERROR,
                     "AlexNet's clean ImageNet error for the AlexNet-relative mCE.", **kw)
  flags.DEFINE_string("perturbations", "all", "all or a list of " +
                      ",".join(perturb.PERTURBATIONS), **kw)
  flags.DEFINE_integer("num_frames", perturb.DEFAULT_NUM_FRAMES, "Frames per sequence.",
                       **kw)
  flags.DEFINE_enum("fill_mode", "reflect", ["reflect", "nearest", "wrap", "constant"],
                    "Fill outside the image for geometric perturbations.", **kw)
  flags.DEFINE_string("attacks", "fgsm,pgd", "Attacks to run.", **kw)
  flags.DEFINE_string("epsilons", "0,1,2,4,8,16", "L-inf budgets in 0-255 pixel units.",
                      **kw)
  flags.DEFINE_integer("pgd_steps", 10, "PGD steps.", **kw)
  flags.DEFINE_float("pgd_step_size", 0.0, "PGD step (pixel units); 0: 2.5*eps/steps.", **kw)
  flags.DEFINE_bool("pgd_random_start", True, "PGD starts at a random point of the ball.",
                    **kw)
  flags.DEFINE_integer("seed", 0, "Seed of perturbation sequences and PGD starts.", **kw)
  flags.mark_flags_as_required(["model", "output_dir"], flag_values=fv)


if __name__ == "__main__":
  from data import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
