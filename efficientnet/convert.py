r"""Converts an official TF1 EfficientNet / Noisy Student checkpoint to a Keras model.

  python -m efficientnet.convert --checkpoint=noisy-student-efficientnet-l2 \
      --model_name=efficientnet-l2 --output=l2.keras [--image_size=800] \
      [--noinclude_head --num_classes=10] [--nouse_ema]

--checkpoint is a prefix (`.../model.ckpt`) or the directory of an extracted archive,
local or `gs://`. --output ending in `.keras` is one model file; any other path becomes a
model_dir (`model.keras` + `model_config.json`, as the trainer exports). Both are what
`noisy_student.label --teacher=` and `noisy_student.evaluate --model=` read. The model
takes [0, 255] pixels at --image_size (default: the variant's resolution; 475 for the
`noisy_student_efficientnet-l2_475` archive). See docs/pretrained_checkpoints.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid

from absl import app
from absl import flags
import tensorflow as tf

import efficientnet
from efficientnet import tf1_checkpoint

MODEL_FILE = "model.keras"
CONFIG_FILE = "model_config.json"
TMP_MARK = ".tmp-"  # As data/fileio.py: readers skip files named so.


def convert(checkpoint: str, model_name: str, output: str, *, image_size: int | None = None,
            include_head: bool = True, num_classes: int | None = None,
            use_ema: bool = True) -> str:
  """Builds `model_name`, imports `checkpoint` into it and saves it to `output`.

  Args:
    checkpoint: TF1 checkpoint prefix or directory.
    model_name: the checkpoint's variant, "efficientnet-b0" .. "efficientnet-l2".
    output: a `.keras` file, or a model_dir.
    image_size: input resolution; None means the variant's.
    include_head: import the classifier; its class count is the checkpoint's.
    num_classes: classes of a fresh classifier when `include_head` is False (default
      1000); with the head, it must agree with the checkpoint if given.
    use_ema: read the EMA shadow variables where present.

  Returns:
    The path of the written `.keras` file.
  """
  found = tf1_checkpoint.num_classes_in_checkpoint(checkpoint)
  if include_head:
    if found is None:
      raise ValueError(f"{checkpoint} has no classifier; pass include_head=False")
    if num_classes not in (None, found):
      raise ValueError(f"{checkpoint} has {found} classes, not {num_classes}")
    num_classes = found
  num_classes = num_classes or 1000
  variant = efficientnet.get_variant(model_name)
  image_size = image_size or variant.resolution
  model = efficientnet.build_model(variant.name, num_classes=num_classes,
                                   input_shape=(image_size, image_size, 3))
  tf1_checkpoint.load_tf1_checkpoint(model, checkpoint, use_ema=use_ema,
                                     include_head=include_head)
  if output.endswith(".keras"):
    _save_atomic(model, output)
    return output
  path = os.path.join(output, MODEL_FILE)
  _save_atomic(model, path)
  config = {"model_name": variant.name, "num_classes": num_classes,
            "image_size": image_size, "small_image": False, "preprocess_mode": "imagenet",
            "weights": "ema" if use_ema else "raw", "source_checkpoint": checkpoint,
            "include_head": include_head}
  _write_atomic(os.path.join(output, CONFIG_FILE),
                lambda tmp: _write_text(tmp, json.dumps(config, indent=2, sort_keys=True)))
  return path


def _write_atomic(path: str, write) -> None:
  """Calls write(tmp) on a temporary name beside `path`, then renames it into place."""
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = os.path.join(directory, f"{TMP_MARK}{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
  try:
    write(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)


def _write_text(path: str, text: str) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text + "\n")


def _save_atomic(model, path: str) -> None:
  # Keras saves to a local file (it insists on the .keras suffix); tf.io.gfile copies
  # it next to the destination (which may be gs://) under a temporary name.
  with tempfile.TemporaryDirectory() as local:
    local_file = os.path.join(local, MODEL_FILE)
    model.save(local_file)
    _write_atomic(path, lambda tmp: tf.io.gfile.copy(local_file, tmp, overwrite=True))


def define_flags(flag_values=None):
  """Defines the command's flags (on `flag_values`, default absl's global FLAGS).

  Called only when run as a command, so importing `convert` defines no global flags.
  """
  kw = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
  flags.DEFINE_string("checkpoint", None, "TF1 checkpoint prefix or directory "
                      "(local or gs://).", required=True, **kw)
  flags.DEFINE_enum("model_name", None, list(efficientnet.VARIANT_NAMES),
                    "The checkpoint's variant.", required=True, **kw)
  flags.DEFINE_string("output", None, "A .keras file, or a model_dir.", required=True, **kw)
  flags.DEFINE_integer("image_size", None, "Input resolution (default: the variant's; "
                       "475 for the l2_475 archive).", **kw)
  flags.DEFINE_bool("include_head", True, "Import the classifier.", **kw)
  flags.DEFINE_integer("num_classes", None, "Classes of a fresh classifier with "
                       "--noinclude_head (default 1000).", **kw)
  flags.DEFINE_bool("use_ema", True, "Read the ExponentialMovingAverage shadow variables "
                    "where present.", **kw)


def main(argv):
  del argv
  f = flags.FLAGS
  path = convert(f.checkpoint, f.model_name, f.output, image_size=f.image_size,
                 include_head=f.include_head, num_classes=f.num_classes,
                 use_ema=f.use_ema)
  print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
