r"""Filters and balances teacher predictions into the student's pseudo-labeled set.

Paper Sec. 3.1 (data filtering and balancing); algorithm in noisy_student/selection.py.

  python -m noisy_student.select --predictions=runs/x/predictions \
      --output_dir=runs/x/selected --min_threshold=0.3 --images_per_class=130000 \
      --seed=0 --shard_index=0 --num_shards=4

Run shards 0..N-1 as independent jobs (`--shard_index=auto`: the index from the
scheduler, data/shards.py). Pass 1 (every job, seconds) reads only the
label stats files; pass 2 streams this shard's prediction files. `--plan_only` stops after
pass 1 and writes selection.json / selection.png, to look before committing compute;
the job that completes pass 2 also writes samples.png (selected images per class).

Exits non-zero with one line on any refusal: stats that are not one complete labelling
run, an output directory selected with other settings, duplicate record keys, or an
empty selection (nothing reaches the threshold, or nothing was written).
"""


from absl import flags

from data import cli
from data import pipeline
from data import shards
from noisy_student import job_io
from noisy_student import selection

_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "Labelling output directory, or a glob of its prediction "
    "TFRecords (their stats files must lie beside them).", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.", required=True)
_MIN_THRESHOLD = flags.DEFINE_float("min_threshold", 0.3, "Lowest confidence threshold "
                                    "(multiple of 0.01).")
_IMAGES_PER_CLASS = flags.DEFINE_integer("images_per_class", None, "K, target images "
                                         "per class (required unless --no_balance).")
_NO_BALANCE = flags.DEFINE_bool("no_balance", False, "Plain filter: keep confidence >= "
                                "min_threshold once; no per-class K.")
_NO_UPSAMPLE = flags.DEFINE_bool("no_upsample", False, "Never duplicate: cap the copy "
                                 "factor at 1.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds stochastic rounding and the shuffle.")
_SHARD_INDEX = flags.DEFINE_string(
    "shard_index", "0", "This job's shard, 0..num_shards-1, or 'auto': from the "
    "scheduler (JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, TPU_WORKER_ID or "
    "CLOUD_TPU_TASK_ID; data/shards.py).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of pass-2 jobs.")
_NUM_OUTPUT_SHARDS = flags.DEFINE_integer("num_output_shards", 1, "Output files per "
                                          "shard (files total = num_shards * this).")
_SHUFFLE_BUFFER = flags.DEFINE_integer("shuffle_buffer", 10000, "Records held for the "
                                       "output shuffle (bounds memory).")
_PLAN_ONLY = flags.DEFINE_bool("plan_only", False, "Pass 1 only: write selection.json "
                               "and selection.png.")


def main(argv):
  del argv
  # A user error (ValueError; an empty selection too) is one line and exit status 2
  # (data.cli), so a driver never marks this stage done.
  shard_index = shards.resolve_shard_index(_SHARD_INDEX.value, _NUM_SHARDS.value)
  config = selection.SelectionConfig(
      min_threshold=_MIN_THRESHOLD.value, images_per_class=_IMAGES_PER_CLASS.value,
      balance=not _NO_BALANCE.value, upsample=not _NO_UPSAMPLE.value, seed=_SEED.value)
  job = selection.SelectJob(
      predictions=_PREDICTIONS.value, output_dir=_OUTPUT_DIR.value,
      shard_index=shard_index, num_shards=_NUM_SHARDS.value,
      files_per_shard=_NUM_OUTPUT_SHARDS.value, shuffle_buffer=_SHUFFLE_BUFFER.value,
      plan_only=_PLAN_ONLY.value)
  plan = selection.run_selection(job, config, shard_files=pipeline.shard_files)
  job_io.say(f"plan: {plan['total_before']:,} predictions -> {plan['total_kept']:,} kept "
             f"-> ~{plan['total_expected_after']:,.0f} expected; summary in "
             f"{job.output_dir}/selection.json, plot in {job.output_dir}/selection.png")


if __name__ == "__main__":
  cli.run(main)
