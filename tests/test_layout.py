"""The package walls of docs/architecture.md, read from the import statements.

`efficientnet` imports nothing of the project, `data` nothing of `noisy_student`, nobody
imports `bench`; `noisy_student/common` imports no stage; library subpackages define no
flags (only the command modules at the top of `data/` and `noisy_student/` do).
"""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("efficientnet", "data", "noisy_student")
STAGES = ("training", "labeling", "selection", "evaluation", "experiment")


def _modules():
  for package in PACKAGES:
    for path in sorted((REPO / package).rglob("*.py")):
      yield ".".join(path.relative_to(REPO).with_suffix("").parts), path


def _imports(path: pathlib.Path) -> set[str]:
  """Every module name an import statement of the file names (all levels of nesting)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def _violations(allowed) -> list[str]:
  out = []
  for module, path in _modules():
    for name in _imports(path):
      if not allowed(module, name):
        out.append(f"{module} imports {name}")
  return out


def _top(name: str) -> str:
  return name.split(".")[0]


def test_efficientnet_imports_nothing_of_the_project():
  assert _violations(lambda m, n: not (m.startswith("efficientnet")
                                       and _top(n) in ("data", "noisy_student", "bench"))) == []


def test_data_imports_nothing_of_noisy_student():
  assert _violations(lambda m, n: not (m.startswith("data")
                                       and _top(n) in ("noisy_student", "bench"))) == []


def test_nothing_imports_bench():
  assert _violations(lambda m, n: _top(n) != "bench") == []


def test_common_imports_no_stage():
  stages = tuple(f"noisy_student.{s}" for s in STAGES)
  assert _violations(lambda m, n: not (m.startswith("noisy_student.common")
                                       and n.startswith(stages))) == []


@pytest.mark.parametrize("package", ["data", "noisy_student"])
def test_only_command_modules_define_flags(package):
  libraries = [p for p in (REPO / package).rglob("*.py") if p.parent != REPO / package]
  assert libraries, package
  defining = [str(p.relative_to(REPO)) for p in libraries
              if "flags.DEFINE" in p.read_text() or "absl import flags" in p.read_text()]
  assert defining == []


def test_every_stage_is_a_package_next_to_its_command():
  for stage, command in [("training", "train"), ("labeling", "label"),
                         ("selection", "select"), ("evaluation", "evaluate"),
                         ("experiment", "run")]:
    assert (REPO / "noisy_student" / stage / "__init__.py").is_file(), stage
    assert (REPO / "noisy_student" / f"{command}.py").is_file(), command
