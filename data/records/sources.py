"""Image sources for `data.make_tfrecords`: Fashion-MNIST IDX files, image folders, TFDS.

Two kinds of source:
  * Listed sources (Fashion-MNIST, folders) enumerate lightweight `Item`s (names and
    labels, no image bytes) in a deterministic order: all at once (`items()`) for the
    single-process mode, which shuffles them with the seed, or lazily (`iter_items()`)
    for sharded jobs, which keep only the items of their own output files. `load(item)`
    returns the encoded bytes, called inside the writer threads, so only the files being
    written hold image bytes.
  * Streamed sources (TFDS) cut the split into contiguous ranges, one per output file
    (`file_ranges`), and yield the items of a range as TFDS reads them
    (`iter_range`), bytes included: nothing holds the split.

Source specs (the `--source` flag):
  * `fashion_mnist:train` / `fashion_mnist:test`: the IDX files (Xiao et al. 2017),
    encoded as 28x28 grey PNGs.
  * `folder:PATH`: one subfolder per class (class index = position in the sorted
    subfolder names), or a flat folder of images (unlabeled, label -1). Local or remote
    (gs://, ...): every listing and read goes through tf.io.gfile.
  * `tfds:NAME/SPLIT`: any TensorFlow Datasets image dataset (SPLIT may be a slice,
    e.g. `train[:10%]`).
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
from typing import Iterator

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
# The ones `tf.io.decode_image` reads inside a tf.data graph (noisy_student.evaluate's
# --image_folder); make_tfrecords re-encodes the others with PIL.
TF_DECODABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class CorruptImage(Exception):
  """An image that cannot be decoded; `make_tfrecords` skips, counts and lists it."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to write. `ref` is source-specific (an index, a path, or TFDS's bytes)."""
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
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  if path.endswith(".gz"):
    data = gzip.decompress(data)
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
      if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
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

  def iter_items(self) -> Iterator[Item]:
    for i, label in enumerate(self._labels):
      yield Item(f"fashion_mnist/{self.split}/{i:06d}", int(label), f"{i:06d}.png", i)

  def items(self) -> list[Item]:
    return list(self.iter_items())

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


# ------------------------------------------------------------------------ image folders


def _list_dir(directory: str) -> tuple[list[str], list[str]]:
  """(non-hidden subfolder names, image file names) of one folder, each sorted.

  One `listdir`; an entry is a folder when the listing marks it so (a trailing `/`, as
  gs:// does) or, for names without an image extension, when `isdir` says so. Image
  names are taken as files without asking: a flat folder of millions of images costs
  one listing, not one request per file.
  """
  subdirs, files = [], []
  for entry in tf.io.gfile.listdir(directory):
    name = entry.rstrip("/")
    if name.startswith("."):  # Hidden files and folders, temporaries (`.tmp-*`).
      continue
    if entry.endswith("/"):
      subdirs.append(name)
    elif name.lower().endswith(IMAGE_EXTENSIONS):
      files.append(name)
    elif tf.io.gfile.isdir(os.path.join(directory, name)):
      subdirs.append(name)
  return sorted(subdirs), sorted(files)


def _walk_images(directory: str, subdirs: list[str], files: list[str]) -> Iterator[str]:
  # Folders sort as `name/`: this depth-first order is the sorted order of full paths.
  entries = sorted([(d + "/", True) for d in subdirs] + [(f, False) for f in files])
  for name, is_dir in entries:
    if is_dir:
      yield from iter_images(os.path.join(directory, name[:-1]))
    else:
      yield os.path.join(directory, name)


def iter_images(directory: str) -> Iterator[str]:
  """Image files (IMAGE_EXTENSIONS) under `directory`, recursive, in sorted order, lazily.

  Hidden files and folders are skipped (so are temporaries, `.tmp-*`). Local or remote
  paths (tf.io.gfile); only one folder's listing is held at a time.
  """
  yield from _walk_images(directory, *_list_dir(directory))


def list_images(directory: str) -> list[str]:
  """`iter_images` as a sorted list."""
  return list(iter_images(directory))


def _folder_listing(root: str) -> tuple[list[str] | None, Iterator[tuple[str, int]]]:
  """(class names or None, a lazy iterator of (image path, label)): see `folder_images`."""
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist")
  classes, files = _list_dir(root)
  if not classes and not files:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}")
  if classes and files:  # Neither a class nor unlabeled: they would be left out unseen.
    raise ValueError(
        f"{root!r} holds class folders ({', '.join(classes[:3])}"
        f"{', ...' if len(classes) > 3 else ''}) and {len(files)} image(s) beside them "
        f"({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}): move the images into "
        "their class folder, or into a folder of their own")
  if classes:
    pairs = ((f, c) for c, d in enumerate(classes)
             for f in iter_images(os.path.join(root, d)))
  else:
    pairs = ((os.path.join(root, f), schema.UNLABELED) for f in files)
  return classes or None, pairs


def folder_images(root: str) -> tuple[list[str], list[int], list[str] | None]:
  """(image paths, labels, class names) of an image folder: the one class-folder listing.

  `root/<class>/.../<image>`: class index = position of <class> among the sorted
  non-hidden subfolders. A folder without subfolders holds unlabeled images (label -1,
  class names None). Local or remote paths (tf.io.gfile).

  Raises:
    FileNotFoundError: no folder at `root`.
    ValueError: no images; images directly in a root that has class folders.
  """
  classes, pairs = _folder_listing(root)
  pairs = list(pairs)
  if not pairs:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root!r}")
  return [f for f, _ in pairs], [c for _, c in pairs], classes


def _clean_root(path: str) -> str:
  """`path` without a trailing `/`; local paths normalised (os.path.normpath would turn
  `gs://b/x` into `gs:/b/x`, so remote ones are left alone)."""
  if "://" in path:
    return path.rstrip("/")
  return os.path.normpath(path)


class FolderSource:
  """A folder with one subfolder per class, or a flat folder of unlabeled images.

  Class index = position of the subfolder name in sorted order. Ids are
  `{folder name}/{path relative to the folder}`, stable across seeds and shard counts.
  Only the top folder is listed on construction; images are enumerated on use.
  """

  def __init__(self, path: str):
    path = _clean_root(path)
    self.path = path
    self.name = f"folder:{path}"
    self.split = "train"
    # The first enumeration uses this listing (a flat folder is listed once, not twice).
    self.class_names, self._pending = _folder_listing(path)

  def iter_items(self) -> Iterator[Item]:
    """Every image, lazily, in sorted path order (ValueError at the end if none)."""
    base = self.path.rsplit("/", 1)[-1]
    prefix = self.path.rstrip("/") + "/"
    pairs, self._pending = self._pending or _folder_listing(self.path)[1], None
    found = False
    for f, label in pairs:
      rel = f[len(prefix):] if f.startswith(prefix) else f
      found = True
      yield Item(f"{base}/{rel}", label, rel, f)
    if not found:
      raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                       f"{self.path!r}")

  def items(self) -> list[Item]:
    return list(self.iter_items())

  def load(self, item: Item) -> Encoded:
    try:
      with tf.io.gfile.GFile(item.ref, "rb") as f:
        data = f.read()
    except (OSError, tf.errors.OpError) as e:
      raise CorruptImage(f"{item.filename}: unreadable: {e}") from e
    return _encoded_from_file_bytes(data, item.filename)


# --------------------------------------------------------------------------------- TFDS


class TfdsSource:
  """A TensorFlow Datasets split, streamed: the stored encoded bytes (PNG, or JPEG where
  TFDS stores JPEG) are read with `SkipDecoding`, so nothing is re-compressed, and
  records are yielded as TFDS reads them; nothing holds the split.

  Labels are TFDS's ClassLabel indices, 0-based as stored (no offset). Ids are
  `{name}/{split}/{index:06d}`, the index in TFDS's order of the split (TFDS shuffles
  examples once, when it prepares the data set); the filename is the data set's
  `file_name` feature where it has one (ImageNet), else the index.

  Args:
    spec: `NAME/SPLIT`, e.g. `imagenet2012/train` or `svhn_cropped/train[:50%]`.
    data_dir: TFDS's data_dir (default: its own, ~/tensorflow_datasets).
    manual_dir: where manually downloaded files are (imagenet2012's tars).
    prepare: prepare the data set when it is not yet; False refuses instead (sharded
      jobs must not prepare it N times at once).
  """

  def __init__(self, spec: str, data_dir: str | None = None,
               manual_dir: str | None = None, prepare: bool = True):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if "/" not in spec:
      raise ValueError(f"TFDS source must be NAME/SPLIT, got {spec!r}")
    name, split = spec.split("/", 1)
    self._tfds = tfds
    self.name = f"tfds:{spec}"
    self.split = "".join(c if c.isalnum() else "_" for c in split)
    self._prefix = f"{name}/{self.split}"
    self._read_split = split
    builder = tfds.builder(name, data_dir=data_dir)
    features = dict(builder.info.features.items())
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
      raise ValueError(f"TFDS dataset {name!r} has no Image feature")
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    self._image_key = image_keys[0]
    self._label_key = "label" if "label" in labels else (labels[0] if labels else None)
    self._file_key = "file_name" if isinstance(features.get("file_name"),
                                               tfds.features.Text) else None
    self.class_names = (list(features[self._label_key].names) if self._label_key
                        else None)
    if not builder.is_prepared():
      if not prepare:
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in {data_dir or 'TFDS data_dir'}: "
            "prepare it once before starting sharded jobs (data.make_tfrecords without "
            f"--shard_index, or `tfds build {name}` with the same data_dir)")
      config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
      builder.download_and_prepare(download_config=config)
    self._builder = builder
    self.num_examples = builder.info.splits[split].num_examples

  def file_ranges(self, num_files: int, max_examples: int = 0
                  ) -> list[tuple[object, int, int]]:
    """(TFDS split to read, index of its first example, number of examples) of each of
    `num_files` contiguous, nearly equal parts of the split (`tfds.even_splits`).

    `max_examples` > 0 keeps the first that many examples of TFDS's order (which TFDS
    shuffled when it prepared the data set).
    """
    base = self._read_split
    if 0 < max_examples < self.num_examples:
      if "[" in base:
        raise ValueError(f"--max_examples with the sliced TFDS split {base!r}: put the "
                         f"limit in the slice instead (e.g. {base.split('[')[0]}"
                         f"[:{max_examples}])")
      base = f"{base}[:{max_examples}]"
    ranges, start = [], 0
    for part in self._tfds.even_splits(base, num_files):
      count = self._builder.info.splits[part].num_examples
      ranges.append((part, start, count))
      start += count
    return ranges

  def iter_range(self, part, start: int, count: int) -> Iterator[Item]:
    """The items of one `file_ranges` part, as TFDS reads them; `ref` holds the bytes."""
    if not count:  # More files than examples: TFDS refuses to read an empty part.
      return
    ds = self._builder.as_dataset(
        split=part, shuffle_files=False,
        decoders={self._image_key: self._tfds.decode.SkipDecoding()})
    for i, ex in enumerate(ds.as_numpy_iterator(), start):
      label = int(ex[self._label_key]) if self._label_key else schema.UNLABELED
      filename = ex[self._file_key].decode() if self._file_key else f"{i:06d}"
      yield Item(f"{self._prefix}/{i:06d}", label, filename, ex[self._image_key])

  def load(self, item: Item) -> Encoded:
    return _encoded_from_file_bytes(item.ref, item.image_id)


def is_streamed(source) -> bool:
  """Whether `source` is written in contiguous ranges (`file_ranges`), not listed items."""
  return hasattr(source, "file_ranges")


def make_source(spec: str, *, fashion_mnist_dir: str = DEFAULT_FASHION_MNIST_DIR,
                cache_dir: str = DEFAULT_CACHE_DIR, tfds_data_dir: str | None = None,
                tfds_manual_dir: str | None = None, tfds_prepare: bool = True):
  """Builds a source from its `--source` spec (see the module docstring)."""
  kind, _, arg = spec.partition(":")
  if kind == "fashion_mnist":
    return FashionMnistSource(arg or "train", fashion_mnist_dir, cache_dir=cache_dir)
  if kind == "folder":
    return FolderSource(arg)
  if kind == "tfds":
    return TfdsSource(arg, data_dir=tfds_data_dir, manual_dir=tfds_manual_dir,
                      prepare=tfds_prepare)
  raise ValueError(f"unknown source {spec!r}: use fashion_mnist:train|test, folder:PATH "
                   f"or tfds:NAME/SPLIT")
