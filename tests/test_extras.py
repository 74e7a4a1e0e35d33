"""The accelerator extras resolve from the package index (`make install EXTRA=cpu|gpu|tpu`).

`pip install --dry-run` on each extra's requirements (setup.cfg's install_requires plus
the extra), the three at once. Nothing is installed, but pip downloads each TensorFlow
wheel to read its metadata where the index serves none separately (PEP 658; here it
served none): ~1.3 GB and 2-6 minutes, hence `network` and `slow`: not in `make test`;
run `pytest -m network tests/test_extras.py` (a CI step of its own, when setup.cfg
changes). The setup.cfg check below is fast and runs in `make test`.

The gpu extra is resolved with plain `tensorflow` and its `and-cuda` extra checked in the
wheel's metadata: `and-cuda` only adds the nvidia-* CUDA wheels (~2.5 GB, pinned by
TensorFlow itself), which constrain nothing of ours.
"""
import configparser
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# extra -> (TensorFlow distribution, its version prefix, TensorBoard version prefix)
EXPECTED = {"cpu": ("tensorflow-cpu", "2.21.", "2.21."),
            "gpu": ("tensorflow", "2.21.", "2.21."),
            "tpu": ("tensorflow-tpu", "2.20.", "2.20.")}
_TENSORFLOWS = {"tensorflow", "tensorflow-cpu", "tensorflow-tpu"}

def _name(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extra: str) -> list[str]:
  """install_requires + the extra, as setup.cfg lists them."""
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  def lines(value):
    stripped = (line.strip() for line in value.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]
  return (lines(config["options"]["install_requires"])
          + lines(config["options.extras_require"][extra]))


def _pip(*args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "pip", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))


@pytest.fixture(scope="module")
def reports():
  """{extra: pip's installation report}; skips when the index cannot be reached."""
  probe = _pip("index", "versions", "tensorflow-cpu")
  if probe.wait(timeout=120) != 0:
    pytest.skip(f"package index unreachable: {probe.stderr.read().strip()[-300:]}")
  procs = {}
  for extra in EXPECTED:
    reqs = [r.replace("tensorflow[and-cuda]", "tensorflow") for r in requirements(extra)]
    procs[extra] = _pip("install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", "-", *reqs)
  out = {}
  for extra, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"extra {extra!r} does not resolve:\n{stderr[-3000:]}"
    out[extra] = {_name(i["metadata"]["name"]): i["metadata"]
                  for i in json.loads(stdout)["install"]}
  return out


def test_setup_cfg_pins_one_tensorflow_per_extra():
  for extra, (dist, version, board) in EXPECTED.items():
    reqs = requirements(extra)
    tf_reqs = [r for r in reqs if _name(re.split(r"[\[<>=~!]", r)[0]) in _TENSORFLOWS]
    assert len(tf_reqs) == 1 and tf_reqs[0].startswith(dist), reqs
    assert tf_reqs[0].endswith(f"~={version}0") and f"tensorboard~={board}0" in reqs, reqs
  assert "tensorflow[and-cuda]~=2.21.0" in requirements("gpu")


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(EXPECTED))
def test_extra_resolves_to_its_tensorflow(reports, extra):
  dist, version, board = EXPECTED[extra]
  installed = reports[extra]
  assert installed[dist]["version"].startswith(version), installed[dist]["version"]
  assert installed["tensorboard"]["version"].startswith(board)
  assert _TENSORFLOWS & set(installed) == {dist}          # exactly one TensorFlow build
  assert int(installed["keras"]["version"].split(".")[0]) == 3
  if extra == "gpu":
    assert "and-cuda" in installed["tensorflow"].get("provides_extra", [])
