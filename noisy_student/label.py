r"""Pseudo-labels unlabeled TFRecords with a trained teacher, one shard per job.

Paper Algorithm 1, step 2; the work is in noisy_student/labeling/labeller.py.

  python -m noisy_student.label --teacher=runs/x/teacher \
      --unlabeled_pattern='data/unlabeled-*' --output_dir=runs/x/predictions \
      --shard_index=0 --num_shards=8 [--eval_batch_size=64] \
      [--soft_label_top_k=0] [--storage=float32|float16] [--strategy=auto]

Run shards 0..N-1 as independent jobs (together they cover every input file once);
`--shard_index=auto` takes the index from a Kubernetes Indexed Job, a Slurm array or a
TPU worker (data/records/shards.py). A preempted job is simply rerun: finished output files are
skipped. The stored soft label
is the teacher's T = 1 distribution; the temperature belongs to the student's training
(`noisy_student.train --teacher_temperature`). The flags are `settings.LabelSettings`.
Refusals (no input files, an output
directory labelled with other settings, ...) exit non-zero with one line.
"""


from data import cli
from data import config_flags
from data.records import shards
from noisy_student import settings as settings_lib
from noisy_student.common import strategy as strategy_lib
from noisy_student.labeling import labeller


def main(argv):
  del argv
  s = config_flags.read(settings_lib.LabelSettings)
  if s.teacher_temperature != 1.0:
    raise ValueError(f"--teacher_temperature={s.teacher_temperature:g} is not applied "
                     "here (labels are stored at T = 1 and selection filters on that "
                     "confidence); pass it to noisy_student.train instead")
  # A user error (ValueError) is one line and exit status 2 (data.cli), so a driver
  # never marks this stage done.
  shard_index = shards.resolve_shard_index(s.shard_index, s.num_shards)
  config = labeller.LabelConfig(
      teacher=s.teacher, input_pattern=s.unlabeled_pattern, output_dir=s.output_dir,
      shard_index=shard_index, num_shards=s.num_shards, batch_size=s.eval_batch_size,
      soft_label_top_k=s.soft_label_top_k, storage=s.storage,
      num_classes=s.num_classes, label_offset=s.label_offset, noised=s.noised)
  labeller.run_labeling(config, strategy_lib.get_strategy(s.strategy, s.tpu))


if __name__ == "__main__":
  config_flags.define(settings_lib.LabelSettings)
  cli.run(main)
