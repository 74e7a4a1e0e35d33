"""Image sources for `data.make_tfrecords`: Fashion-MNIST IDX files, image folders, TFDS.

A source is a list of lightweight `Item`s (enumerated cheaply, in a deterministic order)
plus a `load(item)` that returns the encoded bytes. `make_tfrecords` shuffles the items
with the seed, assigns them to shards and calls `load` inside its parallel workers, so
only the shard being written holds image bytes in memory (TFDS sources excepted: see
`TfdsSource`).

Source specs (the `--source` flag):
  * `fashion_mnist:train` / `fashion_mnist:test`: the IDX files (Xiao et al. 2017),
    encoded as 28x28 grey PNGs.
  * `folder:PATH`: one subfolder per class (class index = position in the sorted
    subfolder names), or a flat folder of images (unlabeled, label -1).
  * `tfds:NAME/SPLIT`: any TensorFlow Datasets image dataset.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import struct
import urllib.request

import numpy as np
import tensorflow as tf

from data import fileio
from data.records import schema

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# What fills it (the Makefile runs it as root; otherwise the error says to).
FASHION_MNIST_INSTALL = "sudo apt-get install -y dataset-fashion-mnist"
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "noisy_student",
    "fashion-mnist")

# The dataset's official addresses (github.com/zalandoresearch/fashion-mnist README),
# tried in order, and the MD5s of the official .gz files. Local copies are checked by
# structure only (Debian's package recompresses the .gz files, so their MD5s differ).
FASHION_MNIST_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_FASHION_MNIST_COUNT = {"train": 60000, "test": 10000}

# The one list of image-file extensions of class folders (`folder_images`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm")


class CorruptImage(Exception):
  """An image that cannot be decoded; `make_tfrecords` skips, counts and lists it."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to write. `ref` is source-specific (an index or a path)."""
  image_id: str
  label: int
  filename: str
  ref: object


@dataclasses.dataclass(frozen=True)
class Encoded:
  data: bytes
  image_format: str  # "png" or "jpeg"
  height: int
  width: int


# ----------------------------------------------------------------------------- IDX files


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (`.gz` or raw) into a numpy array of its stored shape.

  Format (LeCun's MNIST page): 2 zero bytes, a dtype code, the number of dimensions,
  then one big-endian uint32 per dimension, then the data in C order.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (magic {data[:4]!r})")
  ndim = data[3]
  dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = int(np.prod(dims)) * dtype.itemsize
  payload = data[4 + 4 * ndim:]
  if len(payload) != expected:
    raise ValueError(f"{path}: {len(payload)} data bytes, header {dims} needs {expected}")
  return np.frombuffer(payload, dtype=dtype).reshape(dims)


def _download(url: str, path: str) -> None:
  """Downloads `url` to `path` atomically (a partial download never has the final name)."""
  with fileio.atomic_path(path) as tmp:
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
      while chunk := response.read(1 << 20):
        f.write(chunk)


def _md5(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def _find_or_download(name: str, search_dirs, cache_dir: str, download_fn) -> str:
  """The path of one Fashion-MNIST file: found locally, else downloaded into cache_dir."""
  for directory in search_dirs:
    for candidate in (name, name[:-len(".gz")]):  # Also accept uncompressed copies.
      path = os.path.join(directory, candidate)
      if os.path.isfile(path):
        return path
  target = os.path.join(cache_dir, name)
  errors = []
  for base in FASHION_MNIST_URLS:
    try:
      logging.info("downloading %s%s to %s", base, name, target)
      download_fn(base + name, target)
    except Exception as e:  # pylint: disable=broad-except  # Try the next mirror.
      errors.append(f"{base}{name}: {e}")
      continue
    if _md5(target) == FASHION_MNIST_MD5[name]:
      return target
    errors.append(f"{base}{name}: MD5 mismatch")
    os.remove(target)
  raise FileNotFoundError(
      f"Fashion-MNIST file {name} not found in {', '.join(search_dirs)} and the download "
      f"into {cache_dir} failed ({'; '.join(errors)}). Install Debian's package: "
      f"`{FASHION_MNIST_INSTALL}` (it fills {DEFAULT_FASHION_MNIST_DIR}), or pass "
      "--fashion_mnist_dir=DIR holding the four IDX .gz files")


def load_fashion_mnist(split: str, directory: str = DEFAULT_FASHION_MNIST_DIR, *,
                       cache_dir: str = DEFAULT_CACHE_DIR, download_fn=_download):
  """Returns (images [n, 28, 28] uint8, labels [n] uint8) of one Fashion-MNIST split.

  Looks in `directory`, then in `cache_dir`; where the files are absent, downloads them
  from the official addresses into `cache_dir` (atomically, MD5-checked).
  """
  if split not in _FASHION_MNIST_PREFIX:
    raise ValueError(f"Fashion-MNIST split must be train or test, got {split!r}")
  prefix = _FASHION_MNIST_PREFIX[split]
  paths = [_find_or_download(f"{prefix}-{kind}-ubyte.gz", [directory, cache_dir],
                             cache_dir, download_fn)
           for kind in ("images-idx3", "labels-idx1")]
  images, labels = read_idx(paths[0]), read_idx(paths[1])
  if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
    raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape}, {labels.shape} "
                     f"in {paths}")
  if len(labels) != _FASHION_MNIST_COUNT[split]:
    logging.warning("%s has %d images; the official %s split has %d", paths[0],
                    len(labels), split, _FASHION_MNIST_COUNT[split])
  return images, labels


# ------------------------------------------------------------------------------- sources


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a [h, w] or [h, w, 3] uint8 array (deterministic: fixed zlib level)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


class FashionMnistSource:
  """Fashion-MNIST: ids `fashion_mnist/{split}/{index:06d}`, 28x28 grey PNGs."""

  def __init__(self, split: str, directory: str = DEFAULT_FASHION_MNIST_DIR, **kwargs):
    self.split = split
    self.name = f"fashion_mnist:{split}"
    self.class_names = list(FASHION_MNIST_CLASSES)
    self._images, self._labels = load_fashion_mnist(split, directory, **kwargs)

  def items(self) -> list[Item]:
    return [Item(f"fashion_mnist/{self.split}/{i:06d}", int(label), f"{i:06d}.png", i)
            for i, label in enumerate(self._labels)]

  def load(self, item: Item) -> Encoded:
    return Encoded(encode_png(self._images[item.ref]), "png", 28, 28)


def _encoded_from_file_bytes(data: bytes, where: str) -> Encoded:
  """Validates image bytes by fully decoding them; keeps JPEG/PNG bytes as they are.

  Other formats (BMP, GIF, TIFF, ...) and JPEGs in colour spaces `tf.io.decode_jpeg`
  cannot read (CMYK) are re-encoded (PNG, resp. RGB JPEG at quality 95).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # A full decode: truncated files fail here, not in training.
      fmt, mode, (width, height) = image.format, image.mode, image.size
      fmt = "JPEG" if fmt == "MPO" else fmt  # Camera JPEGs with extra frames.
      if fmt == "PNG" or (fmt == "JPEG" and mode in ("L", "RGB")):
        return Encoded(data, fmt.lower(), height, width)
      buf = io.BytesIO()
      if fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        return Encoded(buf.getvalue(), "jpeg", height, width)
      keep = "RGBA" if "A" in mode or "transparency" in image.info else "RGB"
      image.convert(keep if mode not in ("L", "RGB") else mode).save(buf, format="PNG")
      return Encoded(buf.getvalue(), "png", height, width)
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types.
    raise CorruptImage(f"{where}: {type(e).__name__}: {e}") from e


def list_images(directory: str) -> list[str]:
  """Image files (IMAGE_EXTENSIONS) under `directory`, recursive, sorted.

  Hidden files and folders are skipped (so are temporaries, `.tmp-*`). Local or remote
  paths (tf.io.gfile).
  """
  found = []
  for root, dirs, files in tf.io.gfile.walk(directory):
    dirs[:] = sorted(d.rstrip("/") for d in dirs if not d.startswith("."))
    found.extend(os.path.join(root, f) for f in files
                 if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(found)


def folder_images(root: str) -> tuple[list[str], list[int], list[str] | None]:
  """(image paths, labels, class names) of an image folder: the one class-folder listing.

  `root/<class>/.../<image>`: class index = position of <class> among the sorted
  non-hidden subfolders. A folder without subfolders holds unlabeled images (label -1,
  class names None).

  Raises:
    FileNotFoundError: no folder at `root`.
    ValueError: no images.
  """
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist")
  classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                   if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(root, d)))
  if classes:
    pairs = [(f, c) for c, d in enumerate(classes)
             for f in list_images(os.path.join(root, d))]
  else:
    pairs = [(f, schema.UNLABELED) for f in list_images(root)]
  if not pairs:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}")
  return [f for f, _ in pairs], [c for _, c in pairs], classes or None


class FolderSource:
  """A folder with one subfolder per class, or a flat folder of unlabeled images.

  Class index = position of the subfolder name in sorted order. Ids are
  `{folder name}/{path relative to the folder}`, stable across seeds and shard counts.
  """

  def __init__(self, path: str):
    path = os.path.normpath(path)
    self.path = path
    self.name = f"folder:{path}"
    self.split = "train"
    files, labels, self.class_names = folder_images(path)
    self._files = list(zip(files, labels))

  def items(self) -> list[Item]:
    base = os.path.basename(self.path)
    out = []
    for f, label in self._files:
      rel = os.path.relpath(f, self.path).replace(os.sep, "/")
      out.append(Item(f"{base}/{rel}", label, rel, f))
    return out

  def load(self, item: Item) -> Encoded:
    try:
      with open(item.ref, "rb") as f:
        data = f.read()
    except OSError as e:
      raise CorruptImage(f"{item.filename}: unreadable: {e}") from e
    return _encoded_from_file_bytes(data, item.filename)


class TfdsSource:
  """A TensorFlow Datasets split. The stored encoded bytes are kept (PNG, or JPEG where
  TFDS stores JPEG), read with `SkipDecoding`, so nothing is re-compressed.

  The split is held in memory as encoded bytes (fine for CIFAR/SVHN-sized sets; for
  ImageNet use the TPU conversion script's TFRecords with `label_offset=1`).
  """

  def __init__(self, spec: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if "/" not in spec:
      raise ValueError(f"TFDS source must be NAME/SPLIT, got {spec!r}")
    name, split = spec.split("/", 1)
    self.name = f"tfds:{spec}"
    self.split = "".join(c if c.isalnum() else "_" for c in split)
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
      raise ValueError(f"TFDS dataset {name!r} has no Image feature")
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    self.class_names = list(features[label_key].names) if label_key else None
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={image_keys[0]: tfds.decode.SkipDecoding()})
    self._data = []
    for ex in ds.as_numpy_iterator():
      label = int(ex[label_key]) if label_key else schema.UNLABELED
      self._data.append((ex[image_keys[0]], label))
    self._prefix = f"{name}/{self.split}"

  def items(self) -> list[Item]:
    return [Item(f"{self._prefix}/{i:06d}", label, f"{i:06d}", i)
            for i, (_, label) in enumerate(self._data)]

  def load(self, item: Item) -> Encoded:
    return _encoded_from_file_bytes(self._data[item.ref][0], item.image_id)


def make_source(spec: str, *, fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR,
                cache_dir: str = DEFAULT_CACHE_DIR, tfds_data_dir: str | None = None):
  """Builds a source from its `--source` spec (see the module docstring)."""
  kind, _, arg = spec.partition(":")
  if kind == "fashion_mnist":
    return FashionMnistSource(arg or "train", fashion_mnist_dir, cache_dir=cache_dir)
  if kind == "folder":
    return FolderSource(arg)
  if kind == "tfds":
    return TfdsSource(arg, data_dir=tfds_data_dir)
  raise ValueError(f"unknown source {spec!r}: use fashion_mnist:train|test, folder:PATH "
                   f"or tfds:NAME/SPLIT")
