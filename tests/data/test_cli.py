"""Every entry point answers a user error with one line and exit status 2 (data/cli.py)."""

import concurrent.futures
import os
import subprocess
import sys

import pytest
from absl import flags

from data import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOWHERE = "/nonexistent/noisy-student-test"

# (entry point, arguments, what the one line says). {file}: a file where a directory
# should be; {out}: a fresh output directory.
CASES = {
    "make_tfrecords": ("data.make_tfrecords", [f"--source=folder:{NOWHERE}",
                                              "--output_dir={out}"], "does not exist"),
    "split": ("data.split", [f"--input_pattern={NOWHERE}/*", "--output_dir={out}",
                             "--labeled_per_class=1"], "no files match"),
    "make_corrupted": ("data.make_corrupted", [f"--input_pattern={NOWHERE}/*",
                                               "--output_dir={out}"], "no files match"),
    "preview": ("data.preview", [f"--tfrecord={NOWHERE}/*", "--output={out}/p.png"],
                "no files match"),
    "train": ("noisy_student.train", ["--model_dir={out}", f"--train_pattern={NOWHERE}/*"],
              "no files match"),
    "label": ("noisy_student.label", [f"--teacher={NOWHERE}", f"--input_pattern={NOWHERE}/*",
                                      "--output_dir={out}"], "no files match"),
    "select": ("noisy_student.select", [f"--predictions={NOWHERE}", "--output_dir={out}",
                                        "--images_per_class=10"], NOWHERE),
    "evaluate": ("noisy_student.evaluate", [f"--model={NOWHERE}", "--output_dir={out}",
                                            f"--eval_pattern={NOWHERE}/*"], "no model at"),
    "summarize": ("noisy_student.summarize", [NOWHERE], NOWHERE),
    "run": ("noisy_student.run", [], "--workdir"),
}
# More kinds of user error (slow: each case starts TensorFlow).
EXTRA_CASES = {
    "train_flag": ("noisy_student.train", ["--model_dir={out}", "--train_pattern=x",
                                           "--unlabelled_ratio=3"], "unlabelled_ratio"),
    "train_model_dir_is_a_file": ("noisy_student.train", [
        "--model_dir={file}", f"--train_pattern={NOWHERE}/*"], "is a file"),
    "train_batch_size": ("noisy_student.train", [
        "--model_dir={out}", "--train_pattern=x", "--train_batch_size=0"],
        "--train_batch_size must be >= 1, got 0"),
    "split_output_is_a_file": ("data.split", ["--input_pattern={records}",
                                              "--output_dir={file}/sub",
                                              "--labeled_per_class=1"], "a_file"),
    "evaluate_batch_size": ("noisy_student.evaluate", [
        f"--model={NOWHERE}", "--output_dir={out}", f"--eval_pattern={NOWHERE}/*",
        "--eval_batch_size=0"], "--eval_batch_size must be >= 1"),
    "make_corrupted_missing_flag": ("data.make_corrupted", ["--output_dir={out}"],
                                    "--input_pattern"),
}
# Entry points whose modules belong to others and do not use data.cli yet: remove a
# name once its `__main__` calls `cli.run(main)` (strict: the test then says so).
NOT_YET: set[str] = set()


def _run_all(cases: dict, root) -> dict:
  """Every case, three processes at a time (each spends seconds importing TensorFlow)."""
  (root / "a_file").write_text("not a directory\n")
  records = root / "records.tfrecord"
  with open(records, "wb"):
    pass  # An empty TFRecord file.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

  def run(name):
    module, args, _ = cases[name]
    args = [a.format(out=root / name, file=root / "a_file", records=records) for a in args]
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    return dict(zip(cases, pool.map(run, cases)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  return _run_all(CASES, tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def extra_results(tmp_path_factory):
  return _run_all(EXTRA_CASES, tmp_path_factory.mktemp("cli_extra"))


def _check(proc, module: str, says: str) -> None:
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if f"{module}: error:" in l]
  assert len(lines) == 1 and says in lines[0], proc.stderr[-3000:]
  assert proc.stderr.rstrip().endswith(lines[0])  # The last thing printed.
  assert proc.returncode == 2


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="no data.cli yet"))
    if n in NOT_YET else n for n in CASES])
def test_user_error_is_one_line_and_exit_status_2(results, name):
  module, _, says = CASES[name]
  _check(results[name], module, says)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTRA_CASES))
def test_more_user_errors(extra_results, name):
  module, _, says = EXTRA_CASES[name]
  _check(extra_results[name], module, says)


def test_guard_turns_user_errors_into_one_line(capsys):
  @cli.main_guard("prog")
  def main(argv):
    raise FileNotFoundError(f"no model at {argv[1]}\n(second line)")

  with pytest.raises(SystemExit) as exit_:
    main(["prog", "/x"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == "prog: error: no model at /x (second line)\n"

  @cli.main_guard("prog")
  def buggy(argv):
    raise KeyError("a bug keeps its traceback")

  with pytest.raises(KeyError):
    buggy(["prog"])


def test_flag_errors_are_one_line(capsys, monkeypatch):
  fv = flags.FlagValues()
  flags.DEFINE_integer("batch_size", 1, "", flag_values=fv)
  monkeypatch.setattr(flags, "FLAGS", fv)
  with pytest.raises(SystemExit) as exit_:
    cli.parse_flags("prog")(["prog", "--batch_size=many"])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("prog: error: ") and "--batch_size" in err and err.count("\n") == 1


def test_remote_flagfiles_are_read_through_gfile(monkeypatch):
  """absl open()s flagfiles; `gs://` ones (here TF's in-memory filesystem) are read by
  data.cli instead, nested ones too, and a missing one is a flag error naming it."""
  import uuid
  import tensorflow as tf
  root = f"ram://cli-{uuid.uuid4().hex[:8]}"
  tf.io.gfile.makedirs(root)
  with tf.io.gfile.GFile(f"{root}/inner.flags", "w") as f:
    f.write("// inner\n--name=inner\n")
  with tf.io.gfile.GFile(f"{root}/outer.flags", "w") as f:
    f.write(f"# stage x\n\n--batch_size=3\n--flagfile={root}/inner.flags\n--count=1\n")
  fv = flags.FlagValues()
  flags.DEFINE_integer("batch_size", 1, "", flag_values=fv)
  flags.DEFINE_integer("count", 0, "", flag_values=fv)
  flags.DEFINE_string("name", "", "", flag_values=fv)
  monkeypatch.setattr(flags, "FLAGS", fv)
  assert cli.expand_remote_flagfiles([f"--flagfile={root}/outer.flags", "--count=2"]) == [
      "--batch_size=3", "--name=inner", "--count=1", "--count=2"]
  cli.parse_flags("prog")(["prog", f"--flagfile={root}/outer.flags", "--count=2"])
  assert (fv.batch_size, fv.name, fv.count) == (3, "inner", 2)  # Later flags win.
  with pytest.raises(flags.Error, match=f"{root}/missing.flags"):
    cli.expand_remote_flagfiles([f"--flagfile={root}/missing.flags"])
  tf.io.gfile.rmtree(root)
