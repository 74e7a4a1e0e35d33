"""`--shard_index=auto`: the shard from the scheduler's environment (data/records/shards.py), and
the Kubernetes manifest in docs/ that relies on it."""
import os
import re

import pytest

from data.input import pipeline
from data.records import shards

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def clean_env(monkeypatch):
  """No scheduler variable from the machine running the tests (CI may be a Slurm job)."""
  for name in shards.INDEX_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.mark.parametrize("name", shards.INDEX_VARIABLES)
def test_auto_reads_each_scheduler_variable(clean_env, name):
  clean_env.setenv(name, "3")
  assert shards.resolve_shard_index("auto", 4) == 3
  assert shards.index_from_environment() == (3, name)


@pytest.mark.parametrize("name", shards.INDEX_VARIABLES)
def test_auto_index_out_of_range_names_the_variable(clean_env, name):
  clean_env.setenv(name, "4")
  with pytest.raises(ValueError, match=rf"^--shard_index=auto \({name}\): shard index 4 "
                                       r"out of range for num_shards 4$"):
    shards.resolve_shard_index("auto", 4)


def test_auto_without_any_variable_is_one_clear_line(clean_env):
  with pytest.raises(ValueError) as error:
    shards.resolve_shard_index("auto", 4)
  message = str(error.value)
  assert "\n" not in message and all(n in message for n in shards.INDEX_VARIABLES)


def test_variables_must_agree_and_be_integers(clean_env):
  clean_env.setenv("JOB_COMPLETION_INDEX", "2")
  clean_env.setenv("TPU_WORKER_ID", "2")           # a GKE TPU pod of an Indexed Job
  assert shards.resolve_shard_index("auto", 4) == 2
  clean_env.setenv("TPU_WORKER_ID", "1")
  with pytest.raises(ValueError, match="disagree.*JOB_COMPLETION_INDEX=2.*TPU_WORKER_ID=1"):
    shards.resolve_shard_index("auto", 4)
  with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID='7a' is not an integer"):
    shards.resolve_shard_index("auto", 4, environ={"SLURM_ARRAY_TASK_ID": "7a"})
  # An empty value counts as unset (a template that exports VAR= without a value).
  with pytest.raises(ValueError, match="none of"):
    shards.resolve_shard_index("auto", 4, environ={"CLOUD_TPU_TASK_ID": " "})


def test_explicit_index(clean_env):
  clean_env.setenv("JOB_COMPLETION_INDEX", "1")    # ignored: the flag says which
  assert shards.resolve_shard_index("0", 2) == 0
  assert shards.resolve_shard_index(1, 2) == 1
  assert shards.resolve_shard_index(" AUTO ", 2) == 1
  for bad, match in (("2", "out of range"), ("-1", "out of range"),
                     ("one", "an integer or 'auto'"), (None, "an integer or 'auto'")):
    with pytest.raises(ValueError, match=match):
      shards.resolve_shard_index(bad, 2)
  with pytest.raises(ValueError, match="num_shards must be >= 1"):
    shards.resolve_shard_index(0, 0)


@pytest.mark.parametrize("index, num, message", [
    (2, 2, "^shard_index 2 out of range for num_shards 2$"),
    (-1, 3, "^shard_index -1 out of range for num_shards 3$"),
    (0, 0, "^num_shards must be >= 1, got 0$"),
])
def test_check_shard_is_the_file_shardings_check(index, num, message):
  shards.check_shard(0, 1)
  with pytest.raises(ValueError, match=message):
    shards.check_shard(index, num)
  with pytest.raises(ValueError, match=message):
    pipeline.shard_files(["a"], index, num)


# --------------------------------------------------------------------------- docs


def _manifest_fields(text: str) -> tuple[dict, list[str]]:
  """The `key: value` scalars and the container's args of a simple YAML manifest (no
  PyYAML here): enough to check what docs/tpu_imagenet.md promises about it."""
  scalars, args, in_args = {}, [], False
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    stripped = line.strip()
    if in_args and stripped.startswith("- "):
      args.append(stripped[2:].strip().strip("'\""))
      continue
    in_args = stripped == "args:"
    match = re.match(r"^-?\s*([A-Za-z]+):\s*(\S.*)?$", stripped)
    if match and match.group(2) is not None:
      scalars.setdefault(match.group(1), match.group(2).strip().strip("'\""))
  return scalars, args


def test_kubernetes_indexed_job_manifest_shards_by_completion_index():
  with open(os.path.join(REPO, "docs", "k8s_label_job.yaml")) as f:
    text = f.read()
  scalars, args = _manifest_fields(text)
  assert scalars["kind"] == "Job" and scalars["completionMode"] == "Indexed"
  assert scalars["restartPolicy"] == "Never"
  assert '"noisy_student.label"' in scalars["command"]
  assert "--shard_index=auto" in args
  num_shards = [a.split("=", 1)[1] for a in args if a.startswith("--num_shards=")]
  assert num_shards == [scalars["completions"]]                 # one pod per shard
  assert 1 <= int(scalars["parallelism"]) <= int(scalars["completions"])
  try:
    import yaml
  except ImportError:
    return
  job = yaml.safe_load(text)
  container = job["spec"]["template"]["spec"]["containers"][0]
  assert container["args"] == args
  assert job["spec"]["completions"] == int(num_shards[0])


def test_readme_tpu_vm_example_exports_a_variable_auto_reads():
  with open(os.path.join(REPO, "docs", "tpu_imagenet.md")) as f:
    page = f.read()
  command = page[page.index("gcloud compute tpus tpu-vm ssh"):]
  command = command[:command.index("```")]
  assert "--worker=all" in command and "--shard_index=auto" in command
  exported = re.search(r"export (\w+)=\$\(curl [^)]*agent-worker-number\)", command)
  assert exported and exported.group(1) in shards.INDEX_VARIABLES
