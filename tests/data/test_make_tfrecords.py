"""TFRecord production: IDX parsing, sources, determinism, corrupt images, atomic output."""
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import config_flags
from data import fileio
from data import make_tfrecords
from data.records import schema
from data.records import sources

FMNIST = sources.DEFAULT_FASHION_MNIST_DIR
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def _tiny_fashion_mnist(directory, split="train", n=20):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  labels = np.arange(n, dtype=np.uint8) % 10
  prefix = {"train": "train", "test": "t10k"}[split]
  os.makedirs(directory, exist_ok=True)
  _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
  _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return images, labels


def _png(array, fmt="PNG"):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


@pytest.fixture
def class_folder(tmp_path):
  """Two classes of random 8x8 images (PNG and JPEG), one corrupt file, one BMP."""
  rng = np.random.default_rng(1)
  root = tmp_path / "pets"
  for c, name in enumerate(["cat", "dog"]):
    (root / name).mkdir(parents=True)
    for i in range(10):
      ext, fmt = ("png", "PNG") if i % 2 else ("jpg", "JPEG")
      image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      (root / name / f"{i:02d}.{ext}").write_bytes(_png(image, fmt))
  (root / "cat" / "broken.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8))[:40])
  (root / "dog" / "x.bmp").write_bytes(_png(np.full((8, 8, 3), 7, np.uint8), "BMP"))
  (root / "dog" / "notes.txt").write_text("not an image")
  return root


def _records(path):
  return [tf.train.Example.FromString(r) for r in
          tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def _feature(example, key):
  f = example.features.feature[key]
  return (f.bytes_list.value or f.int64_list.value)[0]


# ---------------------------------------------------------------------------------- IDX


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("split,prefix,first_labels,first_sum", [
    ("train", "train", [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], 76247),
    ("test", "t10k", [9, 2, 1, 1, 6, 1, 4, 6, 5, 7], 33456),
])
def test_idx_reader_matches_raw_bytes_of_the_real_files(split, prefix, first_labels,
                                                        first_sum):
  images, labels = sources.load_fashion_mnist(split)
  n = {"train": 60000, "test": 10000}[split]
  assert images.shape == (n, 28, 28) and images.dtype == np.uint8
  assert labels[:10].tolist() == first_labels
  assert np.bincount(labels).tolist() == [n // 10] * 10
  with gzip.open(os.path.join(FMNIST, f"{prefix}-images-idx3-ubyte.gz")) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(n, 28, 28)
  np.testing.assert_array_equal(images[:100], raw[:100])
  assert int(images[0].sum()) == first_sum


def test_idx_reader_rejects_bad_files(tmp_path):
  bad = tmp_path / "bad.gz"
  with gzip.open(bad, "wb") as f:
    f.write(b"\x01\x02\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an IDX file"):
    sources.read_idx(str(bad))
  short = tmp_path / "short"
  short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 9)
  with pytest.raises(ValueError, match="header"):
    sources.read_idx(str(short))


# ----------------------------------------------------------------------------- download


def _fake_download(contents, calls):
  def download(url, path):
    calls.append((url, path))
    with fileio.atomic_path(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(contents[os.path.basename(path)])
  return download


def test_fashion_mnist_downloads_into_cache_when_absent(tmp_path, monkeypatch):
  src = tmp_path / "src"
  images, labels = _tiny_fashion_mnist(str(src), "test", n=5)
  contents = {p.name: p.read_bytes() for p in src.iterdir()}
  monkeypatch.setattr(sources, "FASHION_MNIST_MD5", {
      k: hashlib.md5(v).hexdigest() for k, v in contents.items()})
  calls = []
  cache = tmp_path / "cache"
  got_images, got_labels = sources.load_fashion_mnist(
      "test", str(tmp_path / "missing"), cache_dir=str(cache),
      download_fn=_fake_download(contents, calls))
  np.testing.assert_array_equal(got_images, images)
  np.testing.assert_array_equal(got_labels, labels)
  assert [u for u, _ in calls] == [sources.FASHION_MNIST_URLS[0] + n for n in
                                   ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
  assert all(p.startswith(str(cache)) for _, p in calls)
  # The second call finds the cached files and downloads nothing.
  sources.load_fashion_mnist("test", str(tmp_path / "missing"), cache_dir=str(cache),
                             download_fn=_fake_download(contents, calls))
  assert len(calls) == 2


def test_fashion_mnist_failed_download_is_a_clear_error(tmp_path):
  calls = []
  bad = {n: b"garbage" for n in sources.FASHION_MNIST_MD5}
  missing = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="MD5 mismatch") as err:
    sources.load_fashion_mnist("train", missing, cache_dir=str(tmp_path / "cache"),
                               download_fn=_fake_download(bad, calls))
  assert missing in str(err.value)
  # A machine without the network: the error says how to install the files (one line).
  assert "sudo apt-get install -y dataset-fashion-mnist" in str(err.value)
  assert "--fashion_mnist_dir" in str(err.value) and "\n" not in str(err.value)
  assert len(calls) == len(sources.FASHION_MNIST_URLS)  # Every mirror was tried.
  assert os.listdir(tmp_path / "cache") == []  # No bad or partial file is kept.

  def offline(url, path):
    raise OSError("network unreachable")
  with pytest.raises(FileNotFoundError, match="network unreachable"):
    sources.load_fashion_mnist("train", missing, cache_dir=str(tmp_path / "cache"),
                               download_fn=offline)


def test_download_is_atomic(tmp_path, monkeypatch):
  class Broken:
    def __init__(self):
      self.calls = 0

    def read(self, n):
      self.calls += 1
      if self.calls > 1:
        raise ConnectionResetError("connection reset")
      return b"x" * 10

    def __enter__(self):
      return self

    def __exit__(self, *args):
      return False

  monkeypatch.setattr(sources.urllib.request, "urlopen", lambda *a, **k: Broken())
  with pytest.raises(ConnectionResetError):
    sources._download("http://example.invalid/f.gz", str(tmp_path / "f.gz"))
  assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------ make_tfrecords


def test_fashion_mnist_records(tmp_path):
  images, labels = _tiny_fashion_mnist(str(tmp_path / "idx"), "train")
  source = sources.make_source("fashion_mnist:train", fashion_mnist_dir=str(tmp_path / "idx"))
  summary = make_tfrecords.make_tfrecords(source, str(tmp_path / "out"), num_shards=3,
                                          seed=0, show_progress=False)
  assert summary["split"] == "train" and summary["num_records"] == 20
  assert summary["counts_per_class"] == {str(c): 2 for c in range(10)}
  assert summary["class_names"][9] == "Ankle boot"
  seen = {}
  for path in sorted((tmp_path / "out").glob("train-*-of-00003.tfrecord")):
    for ex in _records(path):
      image_id = _feature(ex, schema.ID).decode()
      index = int(image_id.rsplit("/", 1)[1])
      assert image_id == f"fashion_mnist/train/{index:06d}"
      decoded = tf.io.decode_png(_feature(ex, schema.ENCODED)).numpy()
      assert decoded.shape == (28, 28, 1)
      np.testing.assert_array_equal(decoded[..., 0], images[index])
      assert _feature(ex, schema.LABEL) == labels[index]
      assert _feature(ex, schema.FORMAT) == b"png"
      assert (_feature(ex, schema.HEIGHT), _feature(ex, schema.WIDTH)) == (28, 28)
      seen[index] = True
  assert sorted(seen) == list(range(20))


def test_max_examples_keeps_a_seeded_subset(tmp_path):
  _tiny_fashion_mnist(str(tmp_path / "idx"), "train")
  source = sources.make_source("fashion_mnist:train", fashion_mnist_dir=str(tmp_path / "idx"))

  def ids(seed, out):
    summary = make_tfrecords.make_tfrecords(source, str(tmp_path / out), num_shards=2,
                                            seed=seed, max_examples=7, show_progress=False)
    assert summary["num_records"] == 7 and summary["max_examples"] == 7
    return sorted(_feature(ex, schema.ID) for name in summary["files"]
                  for ex in _records(tmp_path / out / name))

  first = ids(0, "a")
  assert len(set(first)) == 7
  assert ids(0, "b") == first
  assert ids(1, "c") != first


def test_folder_source_is_deterministic_and_skips_corrupt_images(class_folder, tmp_path):
  def run(seed, out):
    source = sources.make_source(f"folder:{class_folder}")
    return make_tfrecords.make_tfrecords(source, str(tmp_path / out), num_shards=3,
                                         seed=seed, show_progress=False, num_workers=3)

  first, again, other = run(5, "a"), run(5, "b"), run(6, "c")
  assert first["class_names"] == ["cat", "dog"]
  assert first["counts_per_class"] == {"0": 10, "1": 11}
  assert first["num_skipped"] == 1
  assert first["skipped"][0]["id"] == "pets/cat/broken.png"
  assert "broken.png" in first["skipped"][0]["error"]
  for name in first["files"]:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  assert any((tmp_path / "a" / n).read_bytes() != (tmp_path / "c" / n).read_bytes()
             for n in first["files"])
  assert sorted(os.listdir(tmp_path / "a")) == sorted(first["files"] + ["train_summary.json"])
  assert json.loads((tmp_path / "a" / "train_summary.json").read_text())["num_records"] == 21

  by_id = {_feature(ex, schema.ID).decode(): ex
           for name in first["files"] for ex in _records(tmp_path / "a" / name)}
  jpg, bmp = by_id["pets/cat/00.jpg"], by_id["pets/dog/x.bmp"]
  # JPEG bytes are kept as they are; other formats are re-encoded as PNG.
  assert _feature(jpg, schema.ENCODED) == (class_folder / "cat" / "00.jpg").read_bytes()
  assert _feature(jpg, schema.FORMAT) == b"jpeg" and _feature(jpg, schema.LABEL) == 0
  assert _feature(bmp, schema.FORMAT) == b"png" and _feature(bmp, schema.LABEL) == 1
  assert np.all(tf.io.decode_png(_feature(bmp, schema.ENCODED)).numpy() == 7)


def test_folder_images_is_the_one_class_folder_listing(class_folder, tmp_path):
  (class_folder / "dog" / "sub").mkdir()
  (class_folder / "dog" / "sub" / "y.PNG").write_bytes(b"")   # nested, upper-case
  (class_folder / ".cache").mkdir()                             # hidden: not a class
  (class_folder / "cat" / ".tmp-x-01.png").write_bytes(b"")     # a temporary
  files, labels, classes = sources.folder_images(str(class_folder))
  assert classes == ["cat", "dog"]
  names = [os.path.relpath(f, class_folder) for f in files]
  assert names == sorted(names) and len(names) == 23
  assert "dog/sub/y.PNG" in names and "dog/notes.txt" not in names
  assert not any(n.startswith(".cache") or "/.tmp-" in n for n in names)
  assert labels == [0] * 11 + [1] * 12
  (tmp_path / "flat").mkdir()
  (tmp_path / "flat" / "a.webp").write_bytes(b"")
  assert sources.folder_images(str(tmp_path / "flat")) == (
      [str(tmp_path / "flat" / "a.webp")], [-1], None)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.folder_images(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    sources.folder_images(str(tmp_path / "empty"))
  (class_folder / "stray.jpg").write_bytes(b"")  # Beside the class folders: no class.
  with pytest.raises(ValueError, match=r"pets' holds class folders \(cat, dog\) and 1 "
                     r"image\(s\) beside them \(stray.jpg\)"):
    sources.folder_images(str(class_folder))


def test_flat_folder_is_unlabeled_and_stale_shards_go(tmp_path):
  flat = tmp_path / "flat"
  flat.mkdir()
  for i in range(4):
    (flat / f"{i}.png").write_bytes(_png(np.full((4, 4, 3), i, np.uint8)))
  out = tmp_path / "out"
  make_tfrecords.make_tfrecords(sources.make_source(f"folder:{flat}"), str(out),
                                num_shards=4, seed=0, show_progress=False)
  summary = make_tfrecords.make_tfrecords(sources.make_source(f"folder:{flat}"), str(out),
                                          num_shards=2, seed=0, show_progress=False,
                                          split_name="extra")
  assert summary["counts_per_class"] == {"-1": 4} and summary["class_names"] is None
  summary = make_tfrecords.make_tfrecords(sources.make_source(f"folder:{flat}"), str(out),
                                          num_shards=2, seed=0, show_progress=False)
  assert len(summary["removed_stale_shards"]) == 4
  names = sorted(os.listdir(out))
  assert names == ["extra-00000-of-00002.tfrecord", "extra-00001-of-00002.tfrecord",
                   "extra_summary.json", "train-00000-of-00002.tfrecord",
                   "train-00001-of-00002.tfrecord", "train_summary.json"]
  assert not any(fileio.is_temporary(n) for n in names)


def test_missing_sources_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no/such/dir"):
    sources.make_source(f"folder:{tmp_path}/no/such/dir")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    sources.make_source(f"folder:{tmp_path}/empty")
  with pytest.raises(ValueError, match="unknown source"):
    sources.make_source("imagenet:train")


def test_failed_shard_leaves_no_partial_file(tmp_path, monkeypatch):
  flat = tmp_path / "flat"
  flat.mkdir()
  for i in range(6):
    (flat / f"{i}.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
  source = sources.make_source(f"folder:{flat}")

  def failing_load(item):
    if item.filename == "3.png":
      raise RuntimeError("disk on fire")
    return sources.FolderSource.load(source, item)
  monkeypatch.setattr(source, "load", failing_load)
  with pytest.raises(RuntimeError, match="disk on fire"):
    make_tfrecords.make_tfrecords(source, str(tmp_path / "out"), num_shards=2, seed=0,
                                  show_progress=False)
  left = os.listdir(tmp_path / "out")
  assert not any(fileio.is_temporary(n) for n in left)
  assert "train_summary.json" not in left and len(left) <= 1  # Only the good shard.


# ---------------------------------------------------------------------- sharded jobs


def _copy_tree(src, dst):
  """Copies a local folder to `dst` (any tf.io.gfile path, e.g. ram://)."""
  for path in sorted(src.rglob("*")):
    target = dst + "/" + path.relative_to(src).as_posix()
    if path.is_dir():
      tf.io.gfile.makedirs(target)
    else:
      with tf.io.gfile.GFile(target, "wb") as f:
        f.write(path.read_bytes())


def _ids_by_file(directory, names):
  return {name: [_feature(ex, schema.ID).decode()
                 for ex in _records(os.path.join(directory, name))] for name in names}


GOOD_IDS = sorted([f"pets/{c}/{i:02d}.{'png' if i % 2 else 'jpg'}" for c in ("cat", "dog")
                   for i in range(10)] + ["pets/dog/x.bmp"])


@pytest.mark.parametrize("where", ["local", "ram"])
def test_jobs_write_every_image_exactly_once(class_folder, tmp_path, where):
  if where == "ram":
    root, out = f"ram://{tmp_path.name}/pets", f"ram://{tmp_path.name}/out"
    _copy_tree(class_folder, root)
  else:
    root, out = str(class_folder), str(tmp_path / "out")
  source = sources.make_source(f"folder:{root}")
  total = 3 * 2
  names = [make_tfrecords.shard_name("train", g, total) for g in range(total)]
  jobs = []
  for k in (1, 0, 2):  # In any order; the last to complete merges.
    jobs.append(make_tfrecords.make_tfrecords(
        source, out, num_shards=3, num_output_shards=2, shard_index=k, seed=4,
        show_progress=False))
    # Job k writes only its own files.
    written = {n for n in names if tf.io.gfile.exists(f"{out}/{n}")}
    assert written == {names[g] for j in jobs for g in (2 * j["shard_index"],
                                                        2 * j["shard_index"] + 1)}
  assert [j["merged"] is None for j in jobs] == [True, True, False]
  by_file = _ids_by_file(out, names)
  ids = sorted(i for file_ids in by_file.values() for i in file_ids)
  assert ids == GOOD_IDS  # Every readable image once, in one file.
  for name, file_ids in by_file.items():  # The file of an image is its hash mod T ...
    assert all(names.index(name) == make_tfrecords.stable_hash(4, i) % total
               for i in file_ids)
    # ... and the order within a file is the hash's (a seeded shuffle, not the listing).
    assert file_ids == sorted(file_ids, key=lambda i: make_tfrecords.stable_hash(4, i))
  merged = fileio.read_json(f"{out}/train_summary.json")
  assert merged == jobs[-1]["merged"]
  assert merged["files"] == names and merged["assignment"] == "hash"
  assert merged["counts_per_class"] == {"0": 10, "1": 11}
  assert merged["num_records"] == 21 == sum(merged["records_per_shard"])
  assert [s["id"] for s in merged["skipped"]] == ["pets/cat/broken.png"]
  assert sum(j["num_skipped"] for j in jobs) == 1  # Counted by exactly one job.
  assert merged["class_names"] == ["cat", "dog"] and merged["num_shards"] == 3
  assert not any(fileio.is_temporary(n) for n in tf.io.gfile.listdir(out))


def test_job_rerun_after_interruption_skips_finished_files(class_folder, tmp_path,
                                                           monkeypatch):
  source = sources.make_source(f"folder:{class_folder}")
  out = tmp_path / "out"
  run = lambda **kw: make_tfrecords.make_tfrecords(
      source, str(out), num_shards=2, num_output_shards=3, shard_index=1, seed=0,
      show_progress=False, num_workers=1, **kw)
  names = [make_tfrecords.shard_name("train", g, 6) for g in (3, 4, 5)]
  file_of = {i: make_tfrecords.stable_hash(0, i) % 6 for i in GOOD_IDS}
  victim = next(i for i in GOOD_IDS if file_of[i] == 5)  # Fails in the job's last file.
  loaded, interrupted = [], []

  def load(item):
    loaded.append(item.image_id)
    if item.image_id == victim and not interrupted:
      interrupted.append(victim)
      raise KeyboardInterrupt("preempted")
    return sources.FolderSource.load(source, item)
  monkeypatch.setattr(source, "load", load)
  with pytest.raises(KeyboardInterrupt):
    run()
  assert sorted(os.listdir(out)) == sorted(names[:2] + ["train_summary-00001-of-00002.json"])
  state = json.loads((out / "train_summary-00001-of-00002.json").read_text())
  assert not state["complete"] and sorted(state["files"]) == names[:2]
  first = {n: (out / n).read_bytes() for n in names[:2]}
  loaded.clear()
  summary = run()
  # Only the unfinished file's images were read again; the finished files are untouched.
  in_last = [i for i in GOOD_IDS + ["pets/cat/broken.png"]
             if make_tfrecords.stable_hash(0, i) % 6 == 5]
  assert sorted(loaded) == sorted(in_last) and victim in loaded
  assert summary["already_present"] == names[:2] and summary["complete"]
  assert all((out / n).read_bytes() == b for n, b in first.items())
  assert sorted(summary["files"]) == names and summary["merged"] is None  # Job 0: not run.
  assert summary["num_records"] == sum(1 for i in file_of if file_of[i] >= 3)
  with pytest.raises(ValueError, match="other settings"):
    make_tfrecords.make_tfrecords(source, str(out), num_shards=2, num_output_shards=3,
                                  shard_index=1, seed=1, show_progress=False)


def test_job_flags_and_auto_index(class_folder, tmp_path):
  def config(*args):
    return config_flags.parse_args(make_tfrecords.RecordsConfig, [
        f"--source=folder:{class_folder}", f"--output_dir={tmp_path / 'out'}", *args])

  classic = config("--num_shards=2")
  assert classic.shard_index is None and classic.num_output_shards == 1
  job = config("--num_shards=2", "--shard_index=auto", "--seed=3")
  summary = make_tfrecords.run(job, environ={"SLURM_ARRAY_TASK_ID": "1"})
  assert summary["shard_index"] == 1 and summary["settings"]["seed"] == 3
  assert sorted(os.listdir(tmp_path / "out")) == ["train-00001-of-00002.tfrecord",
                                                  "train_summary-00001-of-00002.json"]
  with pytest.raises(ValueError, match="out of range"):
    make_tfrecords.run(job, environ={"SLURM_ARRAY_TASK_ID": "2"})
  with pytest.raises(ValueError, match="max_examples"):
    make_tfrecords.run(config("--shard_index=0", "--max_examples=3"))
  with pytest.raises(ValueError, match="num_output_shards must be >= 1"):
    config("--num_output_shards=0")


def test_command_line(class_folder, tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "data.make_tfrecords", f"--source=folder:{class_folder}",
       f"--output_dir={out}", "--num_shards=2", "--seed=3", "--split_name=pets"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote 21 records (1 skipped)" in result.stdout
  summary = json.loads((out / "pets_summary.json").read_text())
  assert summary["files"] == ["pets-00000-of-00002.tfrecord", "pets-00001-of-00002.tfrecord"]


def test_make_demo_installs_the_dataset_package_when_it_can():
  """`make demo` as root on a machine without the dataset installs Debian's package first
  (as .ci/run does); `make -n` prints the commands without running them."""
  proc = subprocess.run(["make", "-n", "-B", "fashion-mnist"], cwd=REPO, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert "apt-get install -y -q dataset-fashion-mnist" in proc.stdout
  assert "/usr/share/datasets/fashion-mnist" in proc.stdout
  demo = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True,
                        timeout=60)
  assert "dataset-fashion-mnist" in demo.stdout
