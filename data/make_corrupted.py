r"""Builds an ImageNet-C-style corrupted copy of any TFRecord dataset (paper Sec. 3.3).

ImageNet-C (Hendrycks & Dietterich 2019) applies 15 corruptions at 5 severities to the
validation set. This entry does the same to any dataset in this project's TFRecord schema
with `imagecorruptions` (install the maintained fork: `pip install -e .[corruptions]`,
i.e. `imagecorruptions-imaug`; the 2020 release breaks on NumPy 2):

  python -m data.make_corrupted --input_pattern='data/fmnist/test-*.tfrecord' \
      --output_dir=data/fmnist-c [--corruptions=all] [--severities=1,2,3,4,5] \
      [--shard_index=0 --num_shards=1] [--max_examples=0] [--seed=0]

The flags are `CorruptConfig`'s fields (`data.config_flags`); `--num_shards` counts
parallel workers, each writing one file per variant.

Output: `{output_dir}/{corruption}/{severity}/{shard:05d}-of-{num_shards:05d}.tfrecord`,
each a copy of the input records (ids, labels, hidden labels, every other feature kept)
with `image/encoded` replaced by the corrupted image as PNG (lossless, so
jpeg_compression's artefacts are the only JPEG ones) plus `corruption/name` and
`corruption/severity`; and `{output_dir}/manifest-{shard}-of-{n}.json`. Every file is
written atomically; finished files are skipped on a re-run unless --overwrite.

* Images are decoded with 3 channels (grey is replicated, as the training pipeline does),
  so noise is drawn per channel as in ImageNet-C. `imagecorruptions` needs >= 32x32:
  smaller images are zero-padded centred to 32 (Fashion-MNIST 28 -> 32, the pipeline's
  "small" mode does the same) or, with --small_images=resize, resized (bicubic).
* Deterministic: each (corruption, severity, image id) gets its own seed from --seed, so
  the output does not depend on sharding, ordering or --max_examples.
* Sharding: worker k of n takes records k, k+n, k+2n, ... (in sorted-file order) and
  writes its own file per corruption and severity; run the n workers in parallel.
  Cost on one CPU core at 32x32: ~0.26 s per image for all 75 variants.
* Bad records (not a tf.train.Example, no image, an image that does not decode) are
  skipped, as the labeller skips them: counted and listed (index, id, error) in the
  manifest. More than --max_bad_records of them, or a truncated input file (named),
  stop the run and leave no output behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import zlib

import numpy as np
from PIL import Image

from data import cli
from data import config_flags
from data import fileio
from data.config_flags import setting
from data.input import pipeline
from data.records import schema
from data.records import shards

# The 15 benchmark corruptions (ImageNet-C order) and the 4 held-out validation ones.
COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
          "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
          "elastic_transform", "pixelate", "jpeg_compression")
VALIDATION = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# These two take a `seed` argument; the others draw from NumPy's global generator.
_SEEDED_BY_ARGUMENT = ("glass_blur", "impulse_noise")
MIN_SIZE = 32
CORRUPTION_KEY = "corruption/name"
SEVERITY_KEY = "corruption/severity"


# --corruptions names for sets of corruptions.
CORRUPTION_SETS = {"all": COMMON, "common": COMMON, "validation": VALIDATION}
SMALL_IMAGES = ("pad", "resize")


@dataclasses.dataclass(frozen=True)
class CorruptConfig:
  """What to corrupt: the flags of `python -m data.make_corrupted` (`data.config_flags`)."""
  input_pattern: str = setting(None, "TFRecords to corrupt (glob, comma list).",
                               required=True)
  output_dir: str = setting(None, "Writes {corruption}/{severity}/*.tfrecord here.",
                            required=True)
  corruptions: tuple[str, ...] = setting(
      COMMON, "all (the 15 ImageNet-C ones, the default), validation (the 4 extra), or a "
      "list.")
  severities: tuple[int, ...] = setting((1, 2, 3, 4, 5), "Comma-separated severities in "
                                        "1..5.")
  shard_index: int = setting(0, "This worker's index.")
  num_shards: int = setting(1, "Number of parallel workers.")
  max_examples: int = setting(0, "Only the first N input records (0: all).")
  seed: int = setting(0, "Global seed; per-image seeds derive from it and the id.")
  small_images: str = setting("pad", "Images under 32x32: zero-pad centred, or resize "
                              "(bicubic).", choices=SMALL_IMAGES)
  overwrite: bool = setting(False, "Rewrite variants whose file already exists.")
  max_bad_records: int = setting(pipeline.DEFAULT_MAX_BAD_RECORDS, "Bad records are "
                                 "skipped and listed in the manifest; more than this many "
                                 "stop it.")

  def __post_init__(self):
    # `--corruptions=all` parses as ("all",): a set's name stands for its corruptions.
    named = len(self.corruptions) == 1 and self.corruptions[0] in CORRUPTION_SETS
    object.__setattr__(self, "corruptions", CORRUPTION_SETS[self.corruptions[0]] if named
                       else tuple(self.corruptions))
    object.__setattr__(self, "severities", tuple(self.severities))
    if not self.input_pattern or not self.output_dir:
      raise ValueError("--input_pattern and --output_dir are required")
    shards.check_shard(self.shard_index, self.num_shards)
    unknown = [c for c in self.corruptions if c not in COMMON + VALIDATION]
    if unknown:
      raise ValueError(f"unknown corruptions {unknown}; choose from {COMMON + VALIDATION}")
    if any(s not in (1, 2, 3, 4, 5) for s in self.severities):
      raise ValueError(f"severities must be in 1..5, got {self.severities}")
    if self.small_images not in SMALL_IMAGES:
      raise ValueError(f"small_images must be pad or resize, got {self.small_images!r}")
    for name in ("max_examples", "max_bad_records"):
      if getattr(self, name) < 0:
        raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")


def output_path(output_dir: str, corruption: str, severity: int, shard_index: int,
                num_shards: int) -> str:
  return os.path.join(output_dir, corruption, str(severity),
                      f"{shard_index:05d}-of-{num_shards:05d}.tfrecord")


def to_min_size(image: np.ndarray, min_size: int = MIN_SIZE, policy: str = "pad") -> np.ndarray:
  """[h, w, 3] uint8 -> at least min_size on each side (zero-pad centred or resize)."""
  h, w = image.shape[:2]
  if h >= min_size and w >= min_size:
    return image
  if policy == "resize":
    scale = min_size / min(h, w)
    size = (max(min_size, round(w * scale)), max(min_size, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
  ph, pw = max(min_size - h, 0), max(min_size - w, 0)
  return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def variant_seed(seed: int, corruption: str, severity: int, image_id: bytes) -> int:
  """A 32-bit seed that depends only on (seed, corruption, severity, image id)."""
  key = f"{seed}/{corruption}/{severity}/".encode() + image_id
  return zlib.crc32(key)


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
  """[h, w, 3] uint8 (h, w >= 32) -> the corrupted [h, w, 3] uint8 image, deterministic."""
  from imagecorruptions import corrupt  # Optional dependency: imported on use.
  kwargs = {"seed": seed} if corruption in _SEEDED_BY_ARGUMENT else {}
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    out = corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
  finally:
    np.random.set_state(state)
  # A few corruptions can return a different size for odd shapes; keep the input's.
  if out.shape[:2] != image.shape[:2]:
    out = np.asarray(Image.fromarray(out).resize(image.shape[1::-1], Image.BICUBIC))
  return np.ascontiguousarray(out[..., :3], dtype=np.uint8)


def decode_rgb(encoded: bytes) -> np.ndarray:
  """Any PIL-readable image -> [h, w, 3] uint8 (grey replicated)."""
  with Image.open(io.BytesIO(encoded)) as img:
    return np.asarray(img.convert("RGB"))


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def corrupted_example(example, image: np.ndarray, corruption: str, severity: int):
  """A copy of the tf.train.Example with the image replaced and the variant recorded."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = tf.train.Example()
  out.CopyFrom(example)
  feats = out.features.feature
  feats[schema.ENCODED].bytes_list.value[:] = [encode_png(image)]
  feats[schema.FORMAT].bytes_list.value[:] = [b"png"]
  feats[schema.HEIGHT].int64_list.value[:] = [image.shape[0]]
  feats[schema.WIDTH].int64_list.value[:] = [image.shape[1]]
  feats[CORRUPTION_KEY].bytes_list.value[:] = [corruption.encode()]
  feats[SEVERITY_KEY].int64_list.value[:] = [severity]
  return out


def _image_id(example, index: int) -> bytes:
  feats = example.features.feature
  for key in (schema.ID, schema.FILENAME):
    if key in feats and feats[key].bytes_list.value and feats[key].bytes_list.value[0]:
      return feats[key].bytes_list.value[0]
  return f"record-{index}".encode()  # Records without an id: their position.


def _record_id(serialized: bytes) -> str:
  """The id of a record for the list of bad ones ("" when it has none or is no Example)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    feats = tf.train.Example.FromString(serialized).features.feature
  except Exception:  # pylint: disable=broad-except  # Not an Example: no id.
    return ""
  for key in (schema.ID, schema.FILENAME):
    if key in feats and feats[key].bytes_list.value:
      return feats[key].bytes_list.value[0].decode("utf-8", "replace")
  return ""


def shard_records(files: list[str], shard_index: int, num_shards: int, max_examples: int):
  """Yields (global index, serialized) of this shard's records, in file order.

  A truncated file is a ValueError naming it.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.TFRecordDataset(files)
  if max_examples:
    ds = ds.take(max_examples)
  try:
    for index, serialized in enumerate(ds.as_numpy_iterator()):
      if index % num_shards == shard_index:
        yield index, serialized
  except tf.errors.DataLossError as e:
    raise fileio.data_loss_error(files, e) from None


def decode_record(serialized: bytes, index: int):
  """(tf.train.Example, its image [h, w, 3] uint8); ValueError says why it is bad."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  try:
    example = tf.train.Example.FromString(serialized)
  except message.DecodeError as e:
    raise ValueError(f"not a tf.train.Example ({e})") from None
  encoded = example.features.feature[schema.ENCODED].bytes_list.value
  if not encoded:
    raise ValueError(f"no {schema.ENCODED}")
  try:
    return example, decode_rgb(encoded[0])
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types.
    raise ValueError(f"the image does not decode ({type(e).__name__}: {e})") from None


def _progress_bar(config: CorruptConfig, num_variants: int, show: bool):
  """A tqdm bar of this shard's records (its total is known only with --max_examples)."""
  import tqdm  # pylint: disable=g-import-not-at-top
  total = (len(range(config.shard_index, config.max_examples, config.num_shards))
           if config.max_examples else None)
  return tqdm.tqdm(total=total, unit="img", disable=not show or not num_variants,
                   desc=f"shard {config.shard_index}/{config.num_shards}, "
                        f"{num_variants} variants")


def make_corrupted(config: CorruptConfig, show_progress: bool = True) -> dict:
  """Writes this shard's corrupted files; returns the manifest (also written as JSON).

  `show_progress`: a progress bar on stderr (records done, rate, bad records so far).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = fileio.list_files(config.input_pattern)
  variants = [(c, s) for c in config.corruptions for s in config.severities]
  paths = {v: output_path(config.output_dir, *v, config.shard_index, config.num_shards)
           for v in variants}
  todo = [v for v in variants if config.overwrite or not tf.io.gfile.exists(paths[v])]
  count, bad = 0, []
  with contextlib.ExitStack() as stack:
    bar = stack.enter_context(_progress_bar(config, len(todo), show_progress))
    writers = {v: stack.enter_context(tf.io.TFRecordWriter(
        stack.enter_context(fileio.atomic_path(paths[v])))) for v in todo}
    # Writers close (LIFO) before their atomic renames, and before the bar.
    for index, serialized in (shard_records(files, config.shard_index, config.num_shards,
                                            config.max_examples) if todo else ()):
      try:
        example, image = decode_record(serialized, index)
      except ValueError as e:
        bad.append({"index": index, "id": _record_id(serialized), "error": str(e)})
        bar.set_postfix(bad=len(bad), refresh=False)
        bar.update()
        if len(bad) > config.max_bad_records:
          raise ValueError(f"more than --max_bad_records={config.max_bad_records} bad "
                           f"records in {config.input_pattern} (the last: record {index}, "
                           f"{e}); fix or remove them, or raise --max_bad_records") from None
        continue
      image_id = _image_id(example, index)
      image = to_min_size(image, MIN_SIZE, config.small_images)
      for c, s in todo:
        out = corrupt_image(image, c, s, variant_seed(config.seed, c, s, image_id))
        writers[(c, s)].write(corrupted_example(example, out, c, s).SerializeToString())
      count += 1
      bar.update()
  if bad:
    print(f"skipped {len(bad)} bad records (listed in the manifest)")
  manifest = {"input_pattern": config.input_pattern, "input_files": files,
              "corruptions": list(config.corruptions), "severities": list(config.severities),
              "shard_index": config.shard_index, "num_shards": config.num_shards,
              "max_examples": config.max_examples, "seed": config.seed,
              "small_images": config.small_images, "written": [f"{c}/{s}" for c, s in todo],
              "skipped_existing": [f"{c}/{s}" for c, s in variants if (c, s) not in todo],
              "examples_in_shard": count, "num_bad_records": len(bad),
              "bad_records": bad}
  fileio.write_json_atomic(os.path.join(
      config.output_dir, f"manifest-{config.shard_index:05d}-of-{config.num_shards:05d}.json"),
      manifest)
  return manifest


def main(argv):
  del argv
  config = config_flags.read(CorruptConfig)
  manifest = make_corrupted(config)
  print(f"shard {config.shard_index}/{config.num_shards}: {manifest['examples_in_shard']} "
        f"images x {len(manifest['written'])} variants written, "
        f"{len(manifest['skipped_existing'])} already present, under {config.output_dir}")


if __name__ == "__main__":
  config_flags.define(CorruptConfig)
  cli.run(main)
