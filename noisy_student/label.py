r"""Pseudo-labels unlabeled TFRecords with a trained teacher, one shard per job.

Paper Algorithm 1, step 2; the work is in noisy_student/labeling.py.

  python -m noisy_student.label --teacher=runs/x/teacher \
      --input_pattern='data/unlabeled-*' --output_dir=runs/x/predictions \
      --shard_index=0 --num_shards=8 [--batch_size=64] \
      [--soft_label_top_k=0] [--storage=float32|float16] [--strategy=auto]

Run shards 0..N-1 as independent jobs (together they cover every input file once);
`--shard_index=auto` takes the index from a Kubernetes Indexed Job, a Slurm array or a
TPU worker (data/shards.py). A preempted job is simply rerun: finished output files are
skipped. The stored soft label
is the teacher's T = 1 distribution; the temperature belongs to the student's training
(`noisy_student.train --teacher_temperature`). Refusals (no input files, an output
directory labelled with other settings, ...) exit non-zero with one line.
"""


from absl import flags

from data import cli
from data import shards
from noisy_student import labeling
from noisy_student import strategy as strategy_lib

_TEACHER = flags.DEFINE_string("teacher", None, "Teacher model_dir or .keras file.",
                               required=True)
_INPUT_PATTERN = flags.DEFINE_string("input_pattern", None, "Glob(s) of unlabeled "
                                     "TFRecords (comma-separated).", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.", required=True)
_SHARD_INDEX = flags.DEFINE_string(
    "shard_index", "0", "This job's shard, 0..num_shards-1, or 'auto': from the "
    "scheduler (JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID, TPU_WORKER_ID or "
    "CLOUD_TPU_TASK_ID; data/shards.py).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of labelling jobs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Deprecated; only 1 is accepted. "
                                  "Labels are stored at T = 1: sharpen with "
                                  "noisy_student.train --teacher_temperature.")
_TOP_K = flags.DEFINE_integer("soft_label_top_k", 0, "Store only the k most probable "
                              "classes (0: the full vector).")
_STORAGE = flags.DEFINE_enum("storage", "float32", list(labeling.STORAGES),
                             "Precision of the stored full soft-label vector.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Expected class count; a "
                                    "teacher with another is an error.")
_LABEL_OFFSET = flags.DEFINE_integer("label_offset", 0, "1 for ImageNet TPU TFRecords.")
_NOISED = flags.DEFINE_bool("noised", False, "Ablation: keep dropout and stochastic "
                            "depth on while labelling (not reproducible).")
_STRATEGY = flags.DEFINE_enum("strategy", "auto", list(strategy_lib.STRATEGIES),
                              "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address (strategy tpu/auto).")


def main(argv):
  del argv
  if _TEMPERATURE.value != 1.0:
    raise ValueError(f"--temperature={_TEMPERATURE.value:g} is no longer applied here "
                     "(labels are stored at T = 1 and selection filters on that "
                     "confidence); pass --teacher_temperature to noisy_student.train instead")
  # A user error (ValueError) is one line and exit status 2 (data.cli), so a driver
  # never marks this stage done.
  shard_index = shards.resolve_shard_index(_SHARD_INDEX.value, _NUM_SHARDS.value)
  config = labeling.LabelConfig(
      teacher=_TEACHER.value, input_pattern=_INPUT_PATTERN.value,
      output_dir=_OUTPUT_DIR.value, shard_index=shard_index,
      num_shards=_NUM_SHARDS.value, batch_size=_BATCH_SIZE.value,
      soft_label_top_k=_TOP_K.value, storage=_STORAGE.value,
      num_classes=_NUM_CLASSES.value, label_offset=_LABEL_OFFSET.value,
      noised=_NOISED.value)
  labeling.run_labeling(config, strategy_lib.get_strategy(_STRATEGY.value, _TPU.value))


if __name__ == "__main__":
  cli.run(main)
