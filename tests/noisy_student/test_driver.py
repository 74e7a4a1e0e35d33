"""The stage runner: markers, skipping finished stages, failures, recorded commands."""
import os

import pytest

from noisy_student import driver

FAKE = "tests.noisy_student.fake_stage"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def runner(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return driver.StageRunner(str(tmp_path / "work"), env=env)


def test_runs_once_then_skips(runner, tmp_path):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("a/b", ((FAKE, out, "one"),))
  assert runner.run(stage)
  assert not runner.run(stage)
  assert open(out).read() == "one\n"
  assert runner.is_done("a/b")


def test_parallel_commands_all_run(runner, tmp_path):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("shards", tuple((FAKE, out, f"s{i}") for i in range(3)), parallel=2)
  runner.run(stage)
  assert sorted(open(out).read().split()) == ["s0", "s1", "s2"]


def test_failure_leaves_no_marker_and_reruns(runner, tmp_path):
  out = str(tmp_path / "out.txt")
  with pytest.raises(RuntimeError, match="stage bad failed \\(exit 3\\)"):
    runner.run(driver.Stage("bad", ((FAKE, out, "fail"),)))
  assert not runner.is_done("bad")
  runner.run(driver.Stage("bad", ((FAKE, out, "ok"),)))
  assert open(out).read().split() == ["fail", "ok"]


def test_commands_are_recorded_once(runner, tmp_path):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("x", ((FAKE, out, "w"),))
  runner.run(stage)
  runner.run(stage)
  script = open(os.path.join(runner.workdir, "commands.sh")).read()
  assert script.count("# stage x") == 1
  assert f"python -m {FAKE} {out} w" in script
