r"""Pseudo-labels unlabeled TFRecords with a trained teacher, one shard per job.

Paper Algorithm 1, step 2; the work is in noisy_student/labeling.py.

  python -m noisy_student.label --teacher=runs/x/teacher \
      --input_pattern='data/unlabeled-*' --output_dir=runs/x/predictions \
      --shard_index=0 --num_shards=8 [--batch_size=64] [--temperature=1.0] \
      [--soft_label_top_k=0] [--storage=float32|float16] [--strategy=auto]

Run shards 0..N-1 as independent jobs (together they cover every input file once). A
preempted job is simply rerun: finished output files are skipped.
"""

from absl import app
from absl import flags

from noisy_student import labeling
from noisy_student import strategy as strategy_lib

_TEACHER = flags.DEFINE_string("teacher", None, "Teacher model_dir or .keras file.",
                               required=True)
_INPUT_PATTERN = flags.DEFINE_string("input_pattern", None, "Glob(s) of unlabeled "
                                     "TFRecords (comma-separated).", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.", required=True)
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This job's shard.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Number of labelling jobs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Soft-label temperature T: "
                                  "q ∝ p^(1/T).")
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
  config = labeling.LabelConfig(
      teacher=_TEACHER.value, input_pattern=_INPUT_PATTERN.value,
      output_dir=_OUTPUT_DIR.value, shard_index=_SHARD_INDEX.value,
      num_shards=_NUM_SHARDS.value, batch_size=_BATCH_SIZE.value,
      temperature=_TEMPERATURE.value, soft_label_top_k=_TOP_K.value,
      storage=_STORAGE.value, num_classes=_NUM_CLASSES.value,
      label_offset=_LABEL_OFFSET.value, noised=_NOISED.value)
  labeling.run_labeling(config, strategy_lib.get_strategy(_STRATEGY.value, _TPU.value))


if __name__ == "__main__":
  app.run(main)
