"""What every `python -m` entry point does with a user error: one line, exit status 2.

    if __name__ == "__main__":
      define_flags()
      cli.run(main)

Bad flags (unknown, malformed, a required one missing) and the user errors `main` raises
(ValueError, FileNotFoundError, ...: an empty pattern, a missing model, an output path
that is a file) print `prog: error: <message>` on stderr and exit with status 2, without
a traceback, as argparse does. Any other exception is a bug and keeps its traceback.
It lives in `data` because both packages' entry points use it (`data` imports nothing
from `noisy_student`).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               FileExistsError, PermissionError, app.UsageError)


def _user_errors() -> tuple[type[BaseException], ...]:
  """USER_ERRORS plus TensorFlow's missing-file / permission errors once TF is loaded."""
  tf = sys.modules.get("tensorflow")
  if tf is None:
    return USER_ERRORS
  return USER_ERRORS + (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)


def prog_name() -> str:
  """`noisy_student.train` for `python -m noisy_student.train`, else the script's name."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return spec.name if spec is not None else os.path.basename(sys.argv[0])


def fail(prog: str, message) -> NoReturn:
  """Prints `prog: error: message` as one line on stderr and exits with status 2."""
  print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def main_guard(prog: str | None = None) -> Callable:
  """Decorates `main(argv)` so that a user error becomes `fail(prog, error)`."""
  def decorate(main):
    @functools.wraps(main)
    def guarded(argv):
      try:
        return main(argv)
      except _user_errors() as e:
        fail(prog or prog_name(), e)
    return guarded
  return decorate


_FLAGFILE = ("--flagfile", "-flagfile")


def _read_flagfile(path: str) -> list[str]:
  """The flags of a flagfile read through tf.io.gfile, as absl reads a local one: one
  per line; blank lines and `#` or `//` comments skipped."""
  import tensorflow as tf  # Only here: the entry points' flags need no TensorFlow.
  try:
    with tf.io.gfile.GFile(path) as f:
      lines = f.readlines()
  except tf.errors.NotFoundError:
    raise flags.Error(f"no flagfile at {path}") from None
  except tf.errors.OpError as e:
    raise flags.Error(f"cannot read the flagfile {path}: {e.message}") from None
  return [l.strip() for l in lines if not l.isspace() and not l.startswith(("#", "//"))]


def expand_remote_flagfiles(args: list[str], seen: tuple[str, ...] = ()) -> list[str]:
  """`args` with each `--flagfile=PATH` on a remote path (gs://, any `://`) replaced,
  in place, by that file's flags. absl open()s flagfiles, so it reads only local ones
  (which are left to it); the driver writes its flagfiles into the workdir."""
  out = []
  for i, arg in enumerate(args):
    name, _, path = arg.partition("=")
    if arg == "--":  # The rest are positional arguments.
      return out + list(args[i:])
    if name not in _FLAGFILE or "://" not in path:
      out.append(arg)
    elif path in seen:
      raise flags.Error(f"the flagfile {path} includes itself")
    else:
      out += expand_remote_flagfiles(_read_flagfile(path), seen + (path,))
  return out


def parse_flags(prog: str | None = None) -> Callable:
  """An `app.run` flags_parser: a flag error is one line and exit status 2 (absl: 1).

  Remote flagfiles (`--flagfile=gs://...`) are read through tf.io.gfile first.
  """
  def parse(argv):
    try:
      return flags.FLAGS(argv[:1] + expand_remote_flagfiles(argv[1:]))
    except flags.Error as e:
      fail(prog or prog_name(), f"{e} (--helpfull lists the flags)")
  return parse


def run(main: Callable, prog: str | None = None) -> None:
  """`absl.app.run(main)` with one-line user errors and exit status 2."""
  app.run(main_guard(prog)(main), flags_parser=parse_flags(prog))
