"""Flags made from a frozen config dataclass: definition, reading back, rendering."""

import dataclasses

from absl import flags
import pytest

from data import config_flags
from data.config_flags import setting


@dataclasses.dataclass(frozen=True)
class Example:
  pattern: str = setting(None, "Input glob.", required=True, aliases=["data_dir"])
  batch_size: int = setting(64, "Images per step.")
  ratio: float = setting(3.0, "Unlabeled per labeled.", aliases=["unlabel_ratio"])
  flip: bool = setting(True, "Random flips.")
  mode: str = setting("down_up", "Balancing.", choices=["none", "down", "down_up"])
  width: float | None = setting(None, "Overrides the width.")
  severities: tuple[int, ...] = setting((1, 2, 3), "Severities.")
  log_every: int = setting(100, "Logging period.", operational=True)
  derived: int = 0  # Not a flag: no `setting`.


def _parse(*args):
  fv = flags.FlagValues()
  config_flags.define(Example, fv)
  fv(["prog", *args])
  return fv


def test_flags_carry_type_default_help_and_choices():
  fv = _parse("--pattern=a")
  assert fv["batch_size"].default == 64 and fv["batch_size"].help == "Images per step."
  assert "enum" in fv["mode"].flag_type()
  assert fv["severities"].value == ["1", "2", "3"]
  assert "derived" not in fv
  with pytest.raises(flags.IllegalFlagValueError):
    _parse("--pattern=a", "--mode=up")


def test_read_returns_the_config_with_typed_values():
  fv = _parse("--pattern=a", "--batch_size=8", "--noflip", "--severities=5,4",
              "--width=0.5")
  assert config_flags.read(Example, fv, derived=7) == Example(
      pattern="a", batch_size=8, flip=False, severities=(5, 4), width=0.5, derived=7)


def test_aliases_set_the_same_setting():
  config = config_flags.read(Example, _parse("--data_dir=d", "--unlabel_ratio=5"))
  assert (config.pattern, config.ratio) == ("d", 5.0)


def test_required_setting_is_enforced():
  with pytest.raises(flags.IllegalFlagValueError, match="pattern"):
    fv = flags.FlagValues()
    config_flags.define(Example, fv)
    fv(["prog"])
    fv.validate_all_flags()


def test_to_args_renders_only_changed_fields_in_field_order():
  config = Example(pattern="gs://b/x-*", flip=False, severities=(5,), ratio=1.0)
  assert config_flags.to_args(config) == [
      "--pattern=gs://b/x-*", "--ratio=1.0", "--noflip", "--severities=5"]
  everything = config_flags.to_args(Example(pattern="p"), all_fields=True)
  assert everything[:3] == ["--pattern=p", "--batch_size=64", "--ratio=3.0"]
  assert "--width" not in " ".join(everything)  # None: the flag's own default.


def test_operational_settings_can_be_left_out():
  config = Example(pattern="p", batch_size=8, log_every=5)
  assert config_flags.to_args(config) == ["--pattern=p", "--batch_size=8", "--log_every=5"]
  assert config_flags.to_args(config, operational=False) == ["--pattern=p", "--batch_size=8"]


@pytest.mark.parametrize("config", [
    Example(pattern="p"),
    Example(pattern="a,b", batch_size=1, ratio=0.25, flip=False, mode="none",
            width=1.5, severities=()),
])
def test_args_parse_back_to_the_same_config(config):
  assert config_flags.parse_args(Example, config_flags.to_args(config)) == config


def test_flagfile_text_parses_back(tmp_path):
  config = Example(pattern="p", mode="down", severities=(2,))
  path = tmp_path / "x.flags"
  path.write_text(config_flags.flagfile_text(config, comment="made by a test\nline 2"))
  assert path.read_text().startswith("# made by a test\n# line 2\n--pattern=p\n")
  assert config_flags.parse_args(Example, [f"--flagfile={path}"]) == config


def test_unsupported_field_type_is_refused():
  @dataclasses.dataclass(frozen=True)
  class Bad:
    x: dict = setting(None, "A dict.")

  with pytest.raises(TypeError, match="unsupported setting type"):
    config_flags.define(Bad, flags.FlagValues())


def test_flags_are_key_flags_of_the_defining_module():
  """So `python -m <entry point> --help` lists them, not only --helpfull."""
  fv = flags.FlagValues()
  config_flags.define(Example, fv)
  assert {"pattern", "mode", "severities"} <= {
      f.name for f in fv.get_key_flags_for_module(__name__)}
