"""What the README and docs/ tell a user to run or open exists: every `--flagfile=` path
(globs must match a file), every `python -m` module, every relative markdown link."""
import glob
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def _found(pattern):
  for doc in DOCS:
    for line_no, line in enumerate(doc.read_text().splitlines(), 1):
      for match in re.finditer(pattern, line):
        yield pytest.param(doc, match.group(1), id=f"{doc.name}:{line_no}:{match.group(1)}")


@pytest.mark.parametrize("doc,path", list(_found(r"--flagfile=([\w./*:-]+)")))
def test_flagfile_exists(doc, path):
  if path.startswith(("WORKDIR/", "gs:")):  # a placeholder for the user's own directory
    return
  assert glob.glob(str(REPO / path)), f"{doc.name} names --flagfile={path}: no such file"


@pytest.mark.parametrize("doc,module", list(_found(r"python -m ([a-z_]+(?:\.[a-z_]+)+)")))
def test_module_exists(doc, module):
  base = REPO.joinpath(*module.split("."))
  assert (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()), (
      f"{doc.name} runs python -m {module}: no such module")


@pytest.mark.parametrize("doc,target", list(_found(r"\]\(((?!https?:|#)[^)\s]+)\)")))
def test_link_resolves(doc, target):
  path, _, anchor = target.partition("#")
  linked = (doc.parent / path).resolve()
  assert linked.exists(), f"{doc.name} links to {target}: no such file"
  if anchor and linked.suffix == ".md":
    slugs = {re.sub(r"[^\w\- ]", "", h.lstrip("#").strip().lower()).replace(" ", "-")
             for h in linked.read_text().splitlines() if h.startswith("#")}
    assert anchor in slugs, f"{doc.name} links to {target}: no such heading"
