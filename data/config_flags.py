"""absl flags generated from a frozen config dataclass: one source for a command's settings.

A command's settings are one frozen dataclass whose fields carry their help text:

    @dataclasses.dataclass(frozen=True)
    class SelectSettings:
      predictions_dir: str = config_flags.setting(None, "Where label wrote.", required=True)
      balancing: str = config_flags.setting("down_up", "...", choices=BALANCINGS)

The entry point defines the flags from it and reads them back as one object:

    config_flags.define(SelectSettings)             # before cli.run(main)
    settings = config_flags.read(SelectSettings)    # in main()

and a program that launches the command (the experiment driver) renders the same object as
arguments, `to_args(settings)`, or as a flagfile, instead of spelling flags by hand. The
flag type follows the field's annotation: str, int, float, bool, `X | None`, or
`tuple[str | int | float, ...]` (a comma-separated list); `choices` makes it an enum.
`aliases` are other names of the same flag (absl's DEFINE_alias), e.g. the official
code's names. An `operational` setting changes how a command runs (how often it
checkpoints or logs, what it profiles), never what it computes: the experiment driver
leaves such settings out of a stage's key (`to_args(..., operational=False)`), so changing
one neither reruns a finished stage nor restarts a running one. It lives in `data` because
both packages' entry points use it.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Sequence

from absl import flags

_HELP, _CHOICES, _ALIASES, _REQUIRED = "help", "choices", "aliases", "required"
_OPERATIONAL = "operational"


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None,
            aliases: Sequence[str] = (), required: bool = False,
            operational: bool = False) -> Any:
  """A dataclass field that is also a flag (`help` is its documentation); `operational`:
  it does not change the command's results (see the module docstring)."""
  return dataclasses.field(default=default, metadata={
      _HELP: help, _CHOICES: tuple(choices) if choices else None,
      _ALIASES: tuple(aliases), _REQUIRED: required, _OPERATIONAL: operational})


def _base_type(annotation) -> tuple[type, type | None]:
  """(flag value type, element type for tuples) of a field annotation."""
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(kinds) != 1:
      raise TypeError(f"unsupported setting type {annotation}")
    annotation = kinds[0]
  if typing.get_origin(annotation) is tuple:
    return tuple, typing.get_args(annotation)[0]
  if annotation not in (str, int, float, bool):
    raise TypeError(f"unsupported setting type {annotation}")
  return annotation, None


def fields(cls) -> list[tuple[dataclasses.Field, type, type | None]]:
  """The flag fields of `cls` (those made with `setting`), with their types."""
  hints = typing.get_type_hints(cls)
  return [(f, *_base_type(hints[f.name])) for f in dataclasses.fields(cls)
          if _HELP in f.metadata]


def default(cls, name: str):
  """The default of setting `name` of `cls`."""
  return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _calling_module() -> str:
  """The module that called `define`, named as absl names the main module (for --help)."""
  name = sys._getframe(2).f_globals.get("__name__", "")
  return sys.argv[0] if name == "__main__" else name


def define(cls, flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Defines one flag per field of `cls` (and its aliases); returns the flag names.

  They are key flags of the calling module, so `python -m <entry point> --help` lists them.
  """
  caller = _calling_module()
  names = []
  for f, kind, element in fields(cls):
    help_text, choices = f.metadata[_HELP], f.metadata[_CHOICES]
    kw = dict(flag_values=flag_values, required=f.metadata[_REQUIRED])
    if choices:
      flags.DEFINE_enum(f.name, f.default, list(choices), help_text, **kw)
    elif kind is tuple:
      default = None if f.default is None else [str(v) for v in f.default]
      flags.DEFINE_list(f.name, default, help_text, **kw)
    else:
      define_fn = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
                   float: flags.DEFINE_float, bool: flags.DEFINE_bool}[kind]
      define_fn(f.name, f.default, help_text, **kw)
    flag_values.register_key_flag_for_module(caller, flag_values[f.name])
    for alias in f.metadata[_ALIASES]:
      flags.DEFINE_alias(alias, f.name, flag_values=flag_values)
    names.append(f.name)
  return names


def read(cls, flag_values: flags.FlagValues = flags.FLAGS, **overrides):
  """The `cls` instance the parsed flags spell (plus `overrides` for other fields)."""
  values = {}
  for f, kind, element in fields(cls):
    value = flag_values[f.name].value
    if kind is tuple and value is not None:
      value = tuple(element(v) for v in value)
    values[f.name] = value
  return cls(**values, **overrides)


def parse_args(cls, args: Sequence[str]):
  """`cls` from command-line arguments (e.g. a recorded command), on fresh flags."""
  flag_values = flags.FlagValues()
  define(cls, flag_values)
  flag_values(["prog", *args])
  return read(cls, flag_values)


def _render(value, kind) -> str:
  if kind is tuple:
    return ",".join(str(v) for v in value)
  return str(value)


def to_args(config, *, all_fields: bool = False, operational: bool = True) -> list[str]:
  """`config` as `--name=value` arguments: the fields that differ from their default
  (every field with `all_fields`), in field order; None is left out (the flag default).
  `operational=False` leaves out the operational settings too (what a result depends on)."""
  args = []
  for f, kind, _ in fields(type(config)):
    value = getattr(config, f.name)
    if value is None or (not all_fields and value == f.default):
      continue
    if not operational and f.metadata[_OPERATIONAL]:
      continue
    if kind is bool:
      args.append(f"--{f.name}" if value else f"--no{f.name}")
    else:
      args.append(f"--{f.name}={_render(value, kind)}")
  return args


def flagfile_text(config, comment: str = "") -> str:
  """`to_args(config)` as an absl flagfile, one flag per line, after `# comment` lines."""
  head = "".join(f"# {line}\n" for line in comment.splitlines())
  return head + "".join(arg + "\n" for arg in to_args(config))
