r"""Filters and balances teacher predictions into the student's pseudo-labeled set.

Paper Sec. 3.1 (data filtering and balancing); algorithm in noisy_student/selection/selector.py.

  python -m noisy_student.select --predictions_dir=runs/x/predictions \
      --output_dir=runs/x/selected --min_threshold=0.3 --images_per_class=130000 \
      --seed=0 --shard_index=0 --num_shards=4

The flags are `settings.SelectSettings`; `--balancing=down_up|down|none` chooses how
classes are balanced. Run shards 0..N-1 as independent jobs (`--shard_index=auto`: the index from the
scheduler, data/records/shards.py). Pass 1 (every job, seconds) reads only the
label stats files; pass 2 streams this shard's prediction files. `--plan_only` stops after
pass 1 and writes selection.json / selection.png, to look before committing compute;
the job that completes pass 2 also writes samples.png (selected images per class).

Exits non-zero with one line on any refusal: stats that are not one complete labelling
run, an output directory selected with other settings, duplicate record keys, or an
empty selection (nothing reaches the threshold, or nothing was written).
"""


from data import cli
from data import config_flags
from data.input import pipeline
from data.records import shards
from noisy_student import settings as settings_lib
from noisy_student.common import job_io
from noisy_student.selection import selector


def main(argv):
  del argv
  s = config_flags.read(settings_lib.SelectSettings)
  # A user error (ValueError; an empty selection too) is one line and exit status 2
  # (data.cli), so a driver never marks this stage done.
  shard_index = shards.resolve_shard_index(s.shard_index, s.num_shards)
  config = selector.SelectionConfig(
      min_threshold=s.min_threshold, images_per_class=s.images_per_class,
      balance=s.balance, upsample=s.upsample, seed=s.seed)
  job = selector.SelectJob(
      predictions=s.predictions_dir, output_dir=s.output_dir, shard_index=shard_index,
      num_shards=s.num_shards, files_per_shard=s.num_output_shards,
      shuffle_buffer=s.shuffle_buffer, plan_only=s.plan_only, label_offset=s.label_offset)
  plan = selector.run_selection(job, config, shard_files=pipeline.shard_files)
  job_io.say(f"plan: {plan['total_before']:,} predictions -> {plan['total_kept']:,} kept "
             f"-> ~{plan['total_expected_after']:,.0f} expected; summary in "
             f"{job.output_dir}/selection.json, plot in {job.output_dir}/selection.png")


if __name__ == "__main__":
  config_flags.define(settings_lib.SelectSettings)
  cli.run(main)
