"""The `ram` fixture: TF's in-memory filesystem (`ram://`) as a stand-in for gs://."""
import os
import uuid

import pytest
import tensorflow as tf


@pytest.fixture()
def ram(tmp_path, monkeypatch):
  """A fresh ram:// root; the test runs in an empty local directory that must stay so
  (a local-only call such as open() on a `ram://` path would leave a `ram:` folder)."""
  root = f"ram://ns-{uuid.uuid4().hex[:8]}"
  monkeypatch.chdir(tmp_path)
  yield root
  assert os.listdir(tmp_path) == [], "something was written to the local disk"
  if tf.io.gfile.exists(root):
    tf.io.gfile.rmtree(root)
