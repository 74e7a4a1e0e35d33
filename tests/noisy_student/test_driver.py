"""The stage runner: markers, skipping finished stages, failures, recorded commands."""
import dataclasses
import os
import shutil
import subprocess
import sys
import time

import pytest

from data import fileio
from noisy_student.experiment import driver

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


def test_parallel_commands_all_run(runner, tmp_path, capsys):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("shards", tuple((FAKE, out, f"s{i}") for i in range(3)), parallel=2)
  runner.run(stage)
  assert sorted(open(out).read().split()) == ["s0", "s1", "s2"]
  lines = capsys.readouterr().out.splitlines()
  finished = [l for l in lines if " finished in " in l and "job" in l]
  # One line per job as it ends, in the order they end, counting up.
  assert len(finished) == 3
  assert sorted(l.split()[2] for l in finished) == ["0", "1", "2"]
  assert [l.split("(")[-1] for l in finished] == ["1/3 done)", "2/3 done)", "3/3 done)"]
  assert all(l.startswith("[shards] job ") for l in finished)


def test_a_failed_job_cancels_the_jobs_not_yet_started(runner, tmp_path, capsys):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("shards", ((FAKE, out, "fail"), (FAKE, out, "s1"), (FAKE, out, "s2")),
                       parallel=1)
  with pytest.raises(RuntimeError, match="stage shards failed"):
    runner.run(stage)
  assert open(out).read().split() == ["fail"]
  assert ("[shards] job 0 failed; 2 job(s) not started, waiting for 0 running"
          in capsys.readouterr().out)
  assert not runner.is_done("shards")


def test_after_a_failure_the_running_jobs_end_and_later_failures_are_printed(
    runner, tmp_path, capsys):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("shards", ((FAKE, out, "fail"), (FAKE, out, "fail"), (FAKE, out, "s2"),
                                  (FAKE, out, "s3")), parallel=2)
  with pytest.raises(RuntimeError, match="stage shards failed"):
    runner.run(stage)
  assert open(out).read().split() == ["fail", "fail"]
  text = capsys.readouterr().out
  assert "2 job(s) not started" in text
  assert "failed too: stage shards failed (exit 3)" in text


def test_a_multi_job_stage_reports_progress_while_it_runs(tmp_path, capsys):
  """Every heartbeat: jobs done so far, and each running job's latest output line."""
  runner = driver.StageRunner(str(tmp_path / "work"), env=dict(os.environ, PYTHONPATH=ROOT),
                              heartbeat_seconds=1.0)
  out = str(tmp_path / "out.txt")
  runner.run(driver.Stage("iter1/label", ((FAKE, out, "quick"), (FAKE, out, "slow")),
                          parallel=2))
  lines = capsys.readouterr().out.splitlines()
  beats = [i for i, l in enumerate(lines) if l.startswith("[iter1/label] 1/2 jobs done, "
                                                          "1 running, ")]
  assert beats, lines
  assert lines[beats[-1] + 1] == "    job 1: halfway through the slow job"
  assert lines[-2].startswith("[iter1/label] job 1 finished in ")
  assert lines[-2].endswith("s (2/2 done)")


def test_durations_are_short_and_readable():
  assert [driver._duration(s) for s in (0.4, 35, 185, 7620)] == [
      "0s", "35s", "3m05s", "2h07m"]


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


def test_changed_command_reruns_and_deletes_old_outputs(runner, tmp_path):
  out, old = str(tmp_path / "out.txt"), tmp_path / "work" / "stage_out"
  old.mkdir(parents=True)
  (old / "stale.tfrecord").write_text("from the old settings")
  runner.run(driver.Stage("s", ((FAKE, out, "one"),), outputs=(str(old),)))
  assert (old / "stale.tfrecord").exists()  # a first run deletes nothing
  assert not runner.run(driver.Stage("s", ((FAKE, out, "one"),), outputs=(str(old),)))
  assert runner.run(driver.Stage("s", ((FAKE, out, "two"),), outputs=(str(old),)))
  assert not old.exists()
  assert open(out).read().split() == ["one", "two"]


def test_a_changed_stage_reruns_the_stages_that_read_it(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = str(tmp_path / "out.txt")

  def plan(first_word):
    runner = driver.StageRunner(str(tmp_path / "work"), env=env)
    ran = [runner.run(driver.Stage("up", ((FAKE, out, first_word),))),
           runner.run(driver.Stage("down", ((FAKE, out, "down"),), inputs=("up",))),
           runner.run(driver.Stage("other", ((FAKE, out, "other"),)))]
    return ran

  assert plan("a") == [True, True, True]
  assert plan("a") == [False, False, False]
  assert plan("b") == [True, True, False]
  assert open(out).read().split() == ["a", "down", "other", "b", "down"]


def test_unfinished_stage_with_same_settings_resumes_without_deleting(runner, tmp_path):
  out, kept = str(tmp_path / "out.txt"), tmp_path / "work" / "model"
  stage = driver.Stage("train", ((FAKE, out, "fail"),), outputs=(str(kept),))
  with pytest.raises(RuntimeError):
    runner.run(stage)
  kept.mkdir()
  (kept / "ckpt-1").write_text("progress of the failed attempt")
  with pytest.raises(RuntimeError):
    runner.run(stage)
  assert (kept / "ckpt-1").exists()  # same key: the command resumes from it


def test_a_copied_workdir_keeps_its_finished_stages(tmp_path):
  """Keys write the workdir as $WORKDIR, so a copy of a workdir (e.g. to reuse its
  data and teacher in an ablation) skips what it already holds."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = str(tmp_path / "out.txt")
  stage = lambda w: driver.Stage("s", ((FAKE, out, f"--model_dir={w}/m"),))
  first = driver.StageRunner(str(tmp_path / "a"), env=env)
  assert first.run(stage(first.workdir))
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  second = driver.StageRunner(str(tmp_path / "b"), env=env)
  assert not second.run(stage(second.workdir))
  # Its commands.sh holds the stage's commands as they read in the copy, to run by hand,
  # in place of the original's.
  script = open(tmp_path / "b" / "commands.sh").read()
  assert f"--model_dir={tmp_path / 'a'}/m" not in script
  assert f"--model_dir={tmp_path / 'b'}/m" in script and script.count("# stage s ") == 1


def test_commands_sh_replaces_a_stage_block_in_place(runner, tmp_path):
  """The same stage and key spelled otherwise (an operational flag) is one block, where
  it was; the other stages' blocks stay as they were."""
  out = str(tmp_path / "out.txt")
  stages = lambda *more: [driver.Stage("a", ((FAKE, out, "a"),)),
                          driver.Stage("b", ((FAKE, out, "b") + more,)),
                          driver.Stage("c", ((FAKE, out, "c"),), inputs=("b",))]
  for stage in stages():
    runner._record_commands(stage, runner.keys.setdefault(stage.name, "k"))
  before = open(os.path.join(runner.workdir, "commands.sh")).read()
  for stage in stages("--often"):
    runner._record_commands(stage, "k")
  after = open(os.path.join(runner.workdir, "commands.sh")).read()
  assert after == before.replace(f"{out} b\n", f"{out} b --often\n")
  assert after.count("# stage ") == 3


def test_same_path_sees_through_spellings(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert driver.same_path("runs/x", str(tmp_path / "runs" / "x"))
  assert driver.same_path("./runs/x/", "runs/x")
  assert not driver.same_path("runs/x", "runs/y")
  assert driver.same_path("gs://b/runs/x/", "gs://b/runs/x")
  assert not driver.same_path("gs://b/runs/x", "gs://c/runs/x")


def test_reading_a_stage_not_yet_run_is_an_error(runner, tmp_path):
  with pytest.raises(ValueError, match=r"reads from \['nope'\]"):
    runner.run(driver.Stage("s", ((FAKE, str(tmp_path / "o"), "x"),), inputs=("nope",)))


def test_a_stage_needs_commands():
  with pytest.raises(ValueError, match="no commands"):
    driver.Stage("iter1/label", ())


def test_a_resumed_stage_counts_every_attempt_and_keeps_their_logs(runner, tmp_path):
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("s", ((FAKE, out, "flaky"),))
  with pytest.raises(RuntimeError, match="stage s failed"):
    runner.run(stage)
  started = fileio.read_json(runner.marker_path("s", ".started"))
  assert started["attempts"] == 1 and started["seconds"] >= 1.0
  assert runner.run(stage)
  marker = runner.marker("s")
  assert marker["attempts"] == 2 and marker["seconds"] >= started["seconds"]
  log_path = os.path.join(runner.workdir, "logs", "s.0.log")
  log = open(log_path).read()
  assert log.index("first attempt") < log.index("# attempt 2") < log.index("second attempt")
  assert not os.path.exists(runner.marker_path("s", ".started"))  # Finished.
  # An unfinished run of other settings: the new one counts and logs afresh.
  changed = driver.Stage("s", ((FAKE, out, "x"), (FAKE, out, "y")), parallel=1)
  fileio.write_json_atomic(runner.marker_path("s", ".started"),
                           {"stage": "s", "key": "other", "attempts": 3, "seconds": 1e4})
  open(os.path.join(runner.workdir, "logs", "s.1.log"), "w").write("stale\n")
  assert runner.run(changed)
  assert runner.marker("s")["attempts"] == 1 and runner.marker("s")["seconds"] < 1e4
  for i in (0, 1):
    log = open(os.path.join(runner.workdir, "logs", f"s.{i}.log")).read()
    assert "attempt" not in log and "stale" not in log


def test_a_run_an_older_driver_left_unfinished_resumes_as_a_second_attempt(runner, tmp_path):
  stage = driver.Stage("s", ((FAKE, str(tmp_path / "out.txt"), "x"),))
  # Older drivers wrote the stage and key only, no attempts or seconds.
  fileio.write_json_atomic(runner.marker_path("s", ".started"),
                           {"stage": "s", "key": runner.key(stage)})
  log_path = os.path.join(runner.workdir, "logs", "s.0.log")
  open(log_path, "w").write("what stopped it\n")
  assert runner.run(stage)
  assert runner.marker("s")["attempts"] == 2
  log = open(log_path).read()
  assert log.index("what stopped it") < log.index("# attempt 2")


def test_stage_jobs_die_with_the_driver(tmp_path):
  out = tmp_path / "pid.txt"
  work = tmp_path / "work"
  script = ("import sys; from noisy_student.experiment import driver; "
            f"driver.StageRunner({str(work)!r}, heartbeat_seconds=0.2).run("
            f"driver.Stage('s', (({FAKE!r}, {str(out)!r}, 'sleep'),)))")
  parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
  # Starting the driver imports TensorFlow: minutes on a loaded machine, so the wait for
  # the job is generous; the job must then die within a minute of its driver.
  started = time.time() + 600
  while not (out.exists() and out.read_text().strip()) and time.time() < started:
    time.sleep(0.2)
  child = int(out.read_text())
  # While the stage runs, its seconds so far are recorded: a killed run keeps its count.
  progress = work / ".stages" / "s.started.json"
  deadline = time.time() + 60
  while time.time() < deadline and fileio.read_json(str(progress)).get("seconds", 0) <= 0:
    time.sleep(0.2)
  assert fileio.read_json(str(progress))["seconds"] > 0
  parent.kill()
  parent.wait()
  deadline = time.time() + 60
  while time.time() < deadline:
    try:
      os.kill(child, 0)
    except ProcessLookupError:
      return
    time.sleep(0.2)
  pytest.fail(f"stage job {child} outlived its driver")


def test_marker_records_the_code_that_ran(runner, tmp_path):
  runner.run(driver.Stage("s", ((FAKE, str(tmp_path / "o"), "x"),)))
  marker = runner.marker("s")
  assert marker["git_commit"] == driver.git_commit() and marker["seconds"] >= 0
  assert runner.marker("never-ran") == {}


def _old_marker(runner, name, commands):
  """A marker as an older driver wrote it: another key, its own workdir, old spellings."""
  from data import fileio
  os.makedirs(os.path.dirname(runner.marker_path(name)), exist_ok=True)
  fileio.write_json_atomic(runner.marker_path(name), {
      "stage": name, "key": "0123456789abcdef", "seconds": 1.0,
      "finished": "2026-11-30T10:00:00",
      "commands": [driver.display(c) for c in commands]})


@pytest.mark.parametrize("recorded, same", [
    # Renamed flag (alias), another order, a default spelled out: the same settings.
    (("--min_threshold=0.3", "--predictions=runs/old/iter1/predictions",
      "--output_dir=runs/old/iter1/selected", "--images_per_class=5", "--shard_index=0"),
     True),
    (("--predictions=runs/old/iter1/predictions", "--output_dir=runs/old/iter1/selected",
      "--images_per_class=5", "--min_threshold=0.5"), False),
    (("--predictions=runs/old/iter1/predictions", "--output_dir=runs/old/iter1/selected",
      "--images_per_class=5", "--no_balance"), False),  # A flag that no longer exists.
])
def test_a_marker_of_the_same_settings_spelled_otherwise_counts_as_done(
    tmp_path, recorded, same):
  runner = driver.StageRunner(str(tmp_path / "new"))
  w = runner.workdir
  stage = driver.Stage("iter1/select", (("noisy_student.select",
                                         f"--predictions_dir={w}/iter1/predictions",
                                         f"--output_dir={w}/iter1/selected",
                                         "--images_per_class=5"),),
                       outputs=(f"{w}/iter1/selected",))
  _old_marker(runner, stage.name, [("noisy_student.select",) + recorded])
  key = runner.keys[stage.name] = runner.key(stage)
  assert bool(runner._same_settings_as_recorded(stage, key)) == same
  if same:
    assert not runner.run(stage)  # Skipped: nothing runs.
    marker = runner.marker(stage.name)
    assert (marker["key"], marker["rekeyed_from"]) == (key, "0123456789abcdef")
    assert runner.is_done(stage.name)
    # The rekeyed marker still holds the old commands, with the workdir they name, so a
    # later change of key (another new default) parses them again correctly.
    assert marker["workdir"] == "runs/old"
    # Its flagfile is written for this workdir (the copy's held the old one's).
    flagfile = open(os.path.join(w, "flags", "iter1__select.0.flags")).read()
    assert f"--output_dir={w}/iter1/selected" in flagfile and "runs/old" not in flagfile
    from data import fileio
    fileio.write_json_atomic(runner.marker_path(stage.name), dict(marker, key="fedcba9876543210"))
    assert runner._same_settings_as_recorded(stage, key) == "runs/old"
    # A marker that an older driver rekeyed with today's workdir beside the old commands:
    # the commands' own workdir is found from where they put the stage's outputs.
    fileio.write_json_atomic(runner.marker_path(stage.name), dict(marker, workdir=w))
    assert runner._same_settings_as_recorded(stage, key) == "runs/old"


def _old_evaluate(w: str, pattern: str = "test-*") -> tuple[str, ...]:
  """A test stage's command as drivers wrote it before --eval_pattern was renamed."""
  return ("noisy_student.evaluate", f"--model={w}/iter0/teacher", "--suite=clean",
          f"--data_pattern={w}/data/records/{pattern}",
          f"--output_dir={w}/iter0/teacher/test")


@pytest.mark.parametrize("pattern, same", [("test-*", True), ("train-*", False)])
def test_an_evaluate_marker_with_the_old_flag_names_counts_as_done(tmp_path, pattern, same):
  from noisy_student.experiment import iterate
  runner = driver.StageRunner(str(tmp_path / "new"))
  c = iterate.ExperimentConfig(workdir=runner.workdir)
  stage = iterate._test_stage(c, "iter0/teacher_test", c.model_dir(0), "iter0/teacher")
  assert "--eval_pattern=" in " ".join(stage.commands[0])
  runner.keys.update({"iter0/teacher": "t", "data/records_test": "r"})
  key = runner.keys[stage.name] = runner.key(stage)
  spelled_as_before = dataclasses.replace(stage, commands=(_old_evaluate(runner.workdir),))
  assert runner.key(spelled_as_before) == key
  _old_marker(runner, stage.name, [_old_evaluate("runs/old", pattern)])
  assert bool(runner._same_settings_as_recorded(stage, key)) == same
  if same:
    assert not runner.run(stage)  # Skipped: nothing runs.
    assert runner.marker(stage.name)["key"] == key and runner.is_done(stage.name)


def test_a_rerun_input_means_the_recorded_settings_do_not_count(tmp_path):
  runner = driver.StageRunner(str(tmp_path / "new"))
  w = runner.workdir
  args = (f"--predictions_dir={w}/p", f"--output_dir={w}/s", "--images_per_class=5")
  stage = driver.Stage("select", (("noisy_student.select",) + args,), inputs=("label",),
                       outputs=(f"{w}/s",))
  _old_marker(runner, stage.name, [stage.commands[0]])
  runner.keys["label"] = "k"
  key = runner.keys[stage.name] = runner.key(stage)
  assert runner._same_settings_as_recorded(stage, key)
  runner.ran.add("label")
  assert not runner._same_settings_as_recorded(stage, key)


def test_an_input_rerun_by_an_earlier_driver_means_the_recorded_settings_do_not_count(
    tmp_path):
  """A driver reran the teacher, then stopped before labelling: the next driver must not
  take the old labels (made by the old teacher) as done, though their commands match."""
  from data import fileio
  runner = driver.StageRunner(str(tmp_path / "new"))
  w = runner.workdir
  args = (f"--predictions_dir={w}/p", f"--output_dir={w}/s", "--images_per_class=5")
  stage = driver.Stage("select", (("noisy_student.select",) + args,), inputs=("label",),
                       outputs=(f"{w}/s",))
  _old_marker(runner, stage.name, [stage.commands[0]])
  _old_marker(runner, "label", [])
  runner.keys["label"] = "k"
  key = runner.keys[stage.name] = runner.key(stage)
  for label_finished, select_finished, same in (
      ("2026-11-30T10:00:00", "2026-11-30T11:00:00", True),    # read the label it has
      ("2026-11-30T12:00:00", "2026-11-30T11:00:00", False),   # label ran again after
      ("2026-11-30T12:00:00", None, False),  # an old marker cannot tell: not taken
      # Zones: label at 10:00 UTC, select at 11:00 UTC (machines in other zones).
      ("2026-11-30T12:00:00+02:00", "2026-11-30T11:00:00+00:00", True),
      ("2026-11-30T12:00:00+00:00", "2026-11-30T13:00:00+02:00", False)):
    for name, finished in (("label", label_finished), (stage.name, select_finished)):
      marker = {k: v for k, v in runner.marker(name).items() if k != "finished"}
      fileio.write_json_atomic(runner.marker_path(name),
                               dict(marker, **({"finished": finished} if finished else {})))
    assert bool(runner._same_settings_as_recorded(stage, key)) == same, label_finished


def test_operational_settings_do_not_change_a_stage_key(runner):
  """Checkpointing or logging more often resumes a stage instead of rerunning it."""
  w = runner.workdir
  base = ("noisy_student.train", f"--model_dir={w}/m", "--train_pattern=x",
          "--train_steps=30")
  key = lambda *more: runner.key(driver.Stage("iter0/teacher", (base + more,)))
  assert key("--checkpoint_every_steps=10", "--steps_per_loop=5",
             "--keep_checkpoints=2", "--profile_steps=3,4") == key()
  assert key("--train_steps=31") != key()


def test_settings_commands_run_from_a_flagfile(runner, tmp_path):
  command = ("noisy_student.train", f"--model_dir={runner.workdir}/m", "--train_pattern=x")
  name, args = runner._flagfile_command("iter0/teacher", 0, command)
  path = args.split("=", 1)[1]
  assert (name, path) == ("noisy_student.train",
                          os.path.join(runner.workdir, "flags", "iter0__teacher.0.flags"))
  lines = open(path).read().splitlines()
  assert lines[0].startswith("# stage iter0/teacher") and lines[1:] == list(command[1:])
  assert runner._flagfile_command("s", 0, (FAKE, "a", "b")) == (FAKE, "a", "b")


def test_a_stage_taken_from_a_copied_workdir_gets_flagfiles_naming_the_copy(tmp_path):
  """The copy's flags/ held the original's flagfiles: rerun by hand, they would write
  into the original workdir."""
  from data import fileio
  original, runner = str(tmp_path / "a"), driver.StageRunner(str(tmp_path / "b"))
  command = lambda w: ("noisy_student.train", f"--model_dir={w}/m", "--train_pattern=x")
  stage = driver.Stage("iter0/teacher", (command(runner.workdir),))
  fileio.write_json_atomic(runner.marker_path(stage.name), {
      "stage": stage.name, "key": runner.key(stage), "workdir": original,
      "commands": [driver.display(command(original))]})
  path = os.path.join(runner.workdir, "flags", "iter0__teacher.0.flags")
  os.makedirs(os.path.dirname(path))
  open(path, "w").write("\n".join(command(original)[1:]) + "\n")
  assert not runner.run(stage)  # done already
  lines = open(path).read().splitlines()
  assert lines[1:] == list(command(runner.workdir)[1:])
  # A stage that finished in this workdir leaves its flagfile alone.
  fileio.write_json_atomic(runner.marker_path(stage.name), dict(
      runner.marker(stage.name), workdir=runner.workdir))
  open(path, "w").write("as it ran\n")
  assert not runner.run(stage) and open(path).read() == "as it ran\n"


def test_markers_logs_and_commands_go_through_gfile(tmp_path):
  """A workdir on another filesystem (ram:// here, gs:// for users) holds the markers,
  logs, flagfiles and commands.sh; the stage's own outputs are its business."""
  import tensorflow as tf
  workdir = f"ram://driver_{os.getpid()}/work"
  runner = driver.StageRunner(workdir, env=dict(os.environ, PYTHONPATH=ROOT))
  out = str(tmp_path / "out.txt")
  stage = driver.Stage("a/b", ((FAKE, out, "one"),))
  assert runner.run(stage) and not runner.run(stage)
  assert tf.io.gfile.exists(f"{workdir}/.stages/a__b.json")
  assert tf.io.gfile.GFile(f"{workdir}/logs/a__b.0.log").read().startswith(
      "$ python -m tests.noisy_student.fake_stage")
  assert "fake_stage" in tf.io.gfile.GFile(f"{workdir}/commands.sh").read()
  assert not os.path.exists(workdir)
