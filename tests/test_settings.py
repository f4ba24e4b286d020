"""digitmatch.settings: options generated from pydantic fields, and the one data-directory rule."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from digitmatch import cli, settings
from digitmatch.settings import (DEFAULT_DATA_DIR, Cli, DataOption, add_model_options, build, data_problem,
                                 default_data_dir, field_of, host_name, values_from_args)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_digitmatch_variables(monkeypatch):
    for name in list(os.environ):
        if name.startswith("DIGITMATCH_"):
            monkeypatch.delenv(name)


class Inner(BaseModel):
    endpoint: str = Field("localhost:1", description="where")


class Example(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    inner: Inner = Field(default_factory=Inner)
    batch_size: int = Field(8, ge=1, le=64, description="pairs per batch")
    delay_ms: float | None = Field(None, gt=0, description="wait")
    mode: Literal["fast", "slow"] = Field("fast", description="how")
    host: Annotated[str, Cli(type=host_name)] = Field("0.0.0.0", description="address")
    sizes: Annotated[tuple[int, ...], Cli(type=lambda t: tuple(int(x) for x in t.split(",")))] = Field(
        (1, 16, 128), description="sizes")
    verbose: bool = Field(False, description="say more")
    json_output: Annotated[bool, Cli(flag="--json")] = Field(False, description="one JSON object")


class OneLineError(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def parser_for(model=Example, **kwargs) -> argparse.ArgumentParser:
    parser = OneLineError()
    add_model_options(parser, model, **kwargs)
    return parser


def actions(parser) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"}


def test_one_option_per_field_with_flag_variable_type_choices_and_help():
    found = actions(parser_for())
    assert list(found) == ["--endpoint", "--batch-size", "--delay-ms", "--mode", "--host", "--sizes", "--verbose",
                           "--json"]
    assert found["--batch-size"].default == 8 and found["--batch-size"].type.__name__ == "int"
    assert found["--batch-size"].help == "pairs per batch [env DIGITMATCH_BATCH_SIZE; default: %(default)s]"
    assert found["--delay-ms"].type.__name__ == "float" and found["--delay-ms"].default is None
    assert found["--mode"].choices == ["fast", "slow"]
    assert found["--host"].type.__name__ == "host_name"
    assert found["--sizes"].default == "1,16,128"  # shown as typed, parsed by the type
    assert isinstance(found["--verbose"], argparse.BooleanOptionalAction)
    assert found["--json"].dest == "json" and "[env DIGITMATCH_JSON]" in found["--json"].help


def test_flag_beats_variable_beats_default(monkeypatch):
    monkeypatch.setenv("DIGITMATCH_BATCH_SIZE", "16")
    monkeypatch.setenv("DIGITMATCH_JSON", "yes")
    args = parser_for().parse_args(["--sizes", "2,4"])
    assert (args.batch_size, args.json, args.sizes, args.mode) == (16, True, (2, 4), "fast")
    assert parser_for().parse_args(["--batch-size", "32"]).batch_size == 32
    config = build(Example, values_from_args(Example, args))
    assert config.batch_size == 16 and config.json_output is True and config.inner.endpoint == "localhost:1"


def test_bounds_are_checked_when_read_unless_left_to_the_model(monkeypatch):
    with pytest.raises(ValueError, match="--batch-size: must be <= 64, got 65"):
        parser_for().parse_args(["--batch-size", "65"])
    monkeypatch.setenv("DIGITMATCH_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="environment variable DIGITMATCH_BATCH_SIZE .*must be >= 1"):
        parser_for()
    monkeypatch.delenv("DIGITMATCH_BATCH_SIZE")
    args = parser_for(bounds=False).parse_args(["--batch-size", "65"])
    with pytest.raises(ValueError) as caught:
        build(Example, values_from_args(Example, args))
    assert str(caught.value).startswith("--batch-size: Input should be less than or equal to 64")
    assert "\n" not in str(caught.value)


def test_field_of_keeps_the_checks_and_takes_a_new_default_and_help():
    class Other(BaseModel):
        batch_size: int = field_of(Example, "batch_size", default=4, help="other help")

    info = Other.model_fields["batch_size"]
    assert (info.default, info.description) == (4, "other help")
    assert Example.model_fields["batch_size"].default == 8
    with pytest.raises(ValueError, match="--batch-size"):
        build(Other, {"batch_size": 0})


def test_a_field_the_generator_cannot_parse_is_refused_at_declaration():
    class Bad(BaseModel):
        things: tuple[int, ...] = Field((1,), description="no parser")

    with pytest.raises(TypeError, match="Cli"):
        parser_for(Bad)


# ------------------------------------------------------------------------- the data directory


def test_the_default_data_dir_is_beside_the_checkout_from_any_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert settings.checkout_root() == REPO
    assert default_data_dir() == (REPO / DEFAULT_DATA_DIR).resolve()


def test_outside_a_checkout_the_default_is_relative_to_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "checkout_root", lambda: None)
    monkeypatch.chdir(tmp_path / ".")
    assert default_data_dir() == (tmp_path / "../shared/data").resolve()


def test_a_missing_default_is_accepted_but_a_missing_directory_given_is_not(monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "default_data_dir", lambda: tmp_path / "absent-default")
    assert data_problem(tmp_path / "absent-default") is None
    assert "does not exist" in data_problem(tmp_path / "absent")
    assert data_problem(tmp_path) is None


@pytest.mark.parametrize("command", ["train", "evaluate", "produce", "demo", "bench"])
def test_every_command_has_the_one_data_option(monkeypatch, command):
    parser = cli.build_parser(only=command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    (data,) = [a for a in sub._actions if "--data" in a.option_strings]
    assert data.default == default_data_dir() and data.type.__name__ == "Path"
    assert data.help.startswith(DataOption.model_fields["data"].description)
    assert "[env DIGITMATCH_DATA;" in data.help
    monkeypatch.setenv("DIGITMATCH_DATA", "relative/dir")
    args = cli.build_parser(only=command).parse_args([command])
    assert args.data == Path("relative/dir")  # a directory given is taken as given
