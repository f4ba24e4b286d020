"""Hostile option values: every option of every ``digitmatch`` subcommand, given nonsense by flag
or by its ``DIGITMATCH_*`` variable, is refused before anything starts.

Refused means: exit status 2; on stderr exactly one line ``digitmatch <command>: <what is wrong>``
that names the option (its flag, its variable or its setting's name), not argparse's usage block;
nothing on stdout; no traceback.

The options are found by walking each subcommand's parser (``build_parser(only=name)``), so a new
option is covered without a change here. Everything runs in-process: the point where each command
would start for real (a broker, the matcher, TensorFlow) is replaced by :class:`Started`, so a
value that is accepted starts nothing and is seen as accepted. The few nonsense-looking values
that are legitimate for some option are listed in :data:`ACCEPTED`, with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitmatch import cli

# -------------------------------------------------------------------------------------- values

WORDS = ["abc", "-1", "0", "nan", "inf", "-inf", "1e400", "99999999999999999999999"]
# Text no option takes: empty, a NUL (only a flag can carry one), bytes that are not UTF-8 (what
# os.environ / sys.argv make of them: lone surrogates), a line break (the error must stay one line).
BAD_TEXT = ["", "a\x00b", "\udcff", "a\nb"]
NONSENSE = WORDS + BAD_TEXT
# Placeholders for path options, made real in the test's tmp directory.
MISSING, A_FILE, EMPTY_DIR = "<missing path>", "<a file>", "<an empty directory>"
PATHS = [MISSING, A_FILE, EMPTY_DIR]

# What a name may be: any word is a legal Kafka topic name, group ID, client ID or run ID.
NAME = set(WORDS)
# Host names that are syntactically fine (whether they resolve is found out when they are used);
# "-1", "-inf" (a leading hyphen) and "0", "999..." (all digits) are not host names.
HOST = {"abc", "nan", "inf", "1e400"}
# A directory or file that is created when missing: any word is a new relative path.
NEW_DIR = set(WORDS) | {MISSING, EMPTY_DIR}
NEW_FILE = set(WORDS) | {MISSING, A_FILE}  # an existing log file is appended to

# Nonsense-looking values that are legitimate for an option (by flag and by variable).
ACCEPTED: dict[tuple[str, str], set[str]] = {
    # 0 = any free port (documented in --help)
    ("serve", "--metrics-port"): {"0"},
    ("demo", "--metrics-port"): {"0"},
    ("broker", "--port"): {"0"},
    # 0 = as fast as possible / no skew / no missing partners / no malformed records
    ("produce", "--rate"): {"0"},
    ("demo", "--rate"): {"0"},
    ("produce", "--skew-ms"): {"0"},
    ("produce", "--partner-missing-ratio"): {"0"},
    ("demo", "--partner-missing-ratio"): {"0"},
    ("demo", "--invalid"): {"0"},
    # 0 = no matching pairs at all: a legitimate load or test set (training needs both classes)
    ("produce", "--match-ratio"): {"0"},
    ("demo", "--match-ratio"): {"0"},
    ("evaluate", "--match-ratio"): {"0"},
    # seed 0 is a seed (the default)
    ("produce", "--seed"): {"0"},
    ("demo", "--seed"): {"0"},
    ("train", "--seed"): {"0"},
    ("evaluate", "--seed"): {"0"},
    # 0 = early stopping off; Keras verbosity 0 = silent
    ("train", "--patience"): {"0"},
    ("train", "--verbose"): {"0"},
    # '' = no speed perturbation / no VTLP (documented in --help)
    ("train", "--speed-factors"): {""},
    ("train", "--vtlp-factors"): {""},
    # 0 = TensorFlow's default, one thread per core
    ("serve", "--intra-op-threads"): {"0"},
    ("serve", "--inter-op-threads"): {"0"},
    ("bench", "--intra-op-threads"): {"0"},
    ("bench", "--inter-op-threads"): {"0"},
    # 0 ms = cut a batch at once / a fetch returns at once / a sweep point without delay
    ("serve", "--max-delay-ms"): {"0"},
    ("demo", "--max-delay-ms"): {"0"},
    ("bench", "--max-delay-ms"): {"0"},
    ("bench", "--sweep-delays-ms"): {"0"},
    ("serve", "--fetch-max-wait-ms"): {"0"},
    # 0 = no read-back on assignment (documented in --help)
    ("serve", "--lookback-records"): {"0"},
    # 0 s = try the broker once, without waiting
    ("produce", "--wait-for-broker-s"): {"0"},
    # names
    **{("serve", flag): NAME for flag in ("--client-id", "--group-id", "--input-topic", "--output-topic",
                                          "--dlq-topic")},
    **{("produce", flag): NAME for flag in ("--client-id", "--topic")},
    # a run ID starts with a letter or a digit
    ("produce", "--run-id"): NAME - {"-1", "-inf"},
    # hosts
    ("serve", "--metrics-host"): HOST,
    ("broker", "--host"): HOST,
    ("broker", "--advertised-host"): HOST,
    ("voices", "--seed"): {"0"},
    # paths created when missing
    ("train", "--out"): NEW_DIR,
    ("voices", "--out"): NEW_DIR,
    ("bench", "--report"): NEW_DIR,
    ("broker", "--broker-log"): NEW_FILE,
    # an existing directory without fsdd/ and mnist/ means the shipped sample (digitmatch/data/sample.py)
    **{(command, "--data"): {EMPTY_DIR} for command in ("demo", "train", "evaluate", "produce", "bench")},
    # their contents are checked by the loaders (a one-line DataError, before anything is served)
    ("evaluate", "--fsdd"): {EMPTY_DIR},
    ("evaluate", "--mnist"): {EMPTY_DIR},
    ("train", "--extra-voices"): {EMPTY_DIR},
}
# A variable of a switch takes 1/0, true/false, yes/no, on/off; empty is off (the default).
SWITCH_ENV_ACCEPTED = {"", "0"}

# Cross-field conflicts are named by the settings they concern, not by the flag.
ALSO_NAMED = {
    "--sasl-username": ("SASL",),
    "--sasl-password": ("SASL",),
    "--ssl-cafile": ("TLS",),
    "--ssl-certfile": ("TLS",),
    "--ssl-keyfile": ("TLS",),
}

# ------------------------------------------------------------------------------ the options


class Option:
    def __init__(self, command: str, action: argparse.Action, global_option: bool = False):
        self.command = command
        self.flag = action.option_strings[0] if action.option_strings else None
        self.dest = action.dest
        self.switch = isinstance(action, argparse.BooleanOptionalAction)
        self.global_option = global_option
        self.path = getattr(action.type, "__name__", "") == "Path"
        found = re.search(r"\[env (DIGITMATCH_\w+)", action.help or "")
        self.env = found.group(1) if found else None

    @property
    def label(self) -> str:
        return self.flag or self.dest

    def names(self) -> tuple[str, ...]:
        """What a message about this option may call it."""
        names = [self.label, self.dest, self.dest.replace("_", " ")]
        if self.env:
            names.append(self.env)
        return (*names, *ALSO_NAMED.get(self.flag, ()))

    def argv(self, value: str) -> list[str]:
        if self.global_option:
            return [f"{self.flag}={value}", self.command]
        if self.flag is None:  # a positional: after "--", so that "-inf" is a value too
            return [self.command, "--", value]
        return [self.command, f"{self.flag}={value}"]


def _without_digitmatch_env() -> dict[str, str]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("DIGITMATCH_")}
    for name in saved:
        del os.environ[name]
    return saved


def _options() -> list[Option]:
    saved = _without_digitmatch_env()
    try:
        options = []
        for name in cli.COMMANDS:
            parser = cli.build_parser(only=name)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
            options += [Option(name, a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        top = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        options += [Option("serve", a, global_option=True) for a in top]
        return options
    finally:
        os.environ.update(saved)


OPTIONS = _options()


def _accepted(option: Option, via: str) -> set[str]:
    if option.switch:
        return SWITCH_ENV_ACCEPTED if via == "env" else set()
    return ACCEPTED.get((option.command, option.label), set())


def _cases():
    for option in OPTIONS:
        values = NONSENSE + (PATHS if option.path else [])
        for via in ("flag", "env"):
            if via == "env" and option.env is None:
                continue
            for value in values:
                if via == "env" and "\x00" in value:
                    continue  # an environment cannot hold a NUL
                accept = value in _accepted(option, via)
                yield pytest.param(option, via, value, accept,
                                   id=f"{option.command} {option.label} {via} {ascii(value)}")


def test_every_subcommand_has_options_and_every_option_a_variable():
    commands = {o.command for o in OPTIONS if not o.global_option}
    assert commands == set(cli.COMMANDS)
    no_env = [(o.command, o.label) for o in OPTIONS if o.env is None]
    assert no_env == [("bench", "mode"), ("serve", "--log-level")]
    # every exception listed is a real option (no stale entries)
    labels = {(o.command, o.label) for o in OPTIONS}
    assert set(ACCEPTED) <= labels


# --------------------------------------------------------------------------- running a command


class Started(BaseException):
    """An accepted value reached the point where the command would start for real."""


def _started(*args, **kwargs):
    raise Started


@pytest.fixture
def guarded(monkeypatch, tmp_path):
    """No DIGITMATCH_* variables, an empty working directory, and every command's start replaced
    by :class:`Started` (validation runs before it)."""
    import digitmatch.dev.bench.session
    import digitmatch.dev.broker
    import digitmatch.consumer.matcher
    import digitmatch.data.voices
    import digitmatch.dev.demo
    import digitmatch.kafka.admin
    import digitmatch.model.serving
    import digitmatch.model.training

    for name in list(os.environ):
        if name.startswith("DIGITMATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # serve and broker install handlers
    monkeypatch.setattr(digitmatch.consumer.matcher, "Matcher", _started)  # serve
    monkeypatch.setattr(digitmatch.kafka.admin, "wait_for_broker", _started)  # produce
    monkeypatch.setattr(digitmatch.dev.demo, "_run", _started)  # demo: broker, matcher, producer
    monkeypatch.setattr(digitmatch.dev.bench.session, "BenchSession", _started)  # bench
    monkeypatch.setattr(digitmatch.dev.broker.EmbeddedBroker, "start", _started)  # broker
    monkeypatch.setattr(digitmatch.model.training, "train", _started)  # train (TensorFlow)
    monkeypatch.setattr(digitmatch.data.voices, "plan", _started)  # voices: the TTS engines
    monkeypatch.setattr(digitmatch.model.serving.ServingModel, "load", _started)  # evaluate, inspect
    return monkeypatch


def _real(value: str, tmp_path: Path) -> str:
    if value == MISSING:
        return str(tmp_path / "nowhere" / "missing")
    if value == A_FILE:
        path = tmp_path / "a-file"
        path.write_text("not a directory\n")
        return str(path)
    if value == EMPTY_DIR:
        path = tmp_path / "empty-dir"
        path.mkdir(exist_ok=True)
        return str(path)
    return value


def run_cli(argv: list[str], capsys) -> tuple[object, str, str]:
    """(exit status or "started", stdout, stderr) of ``digitmatch <argv>`` in-process."""
    try:
        code = cli.main(argv)
    except Started:
        code = "started"
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(command: str, names: tuple[str, ...], code, out: str, err: str) -> None:
    assert code == 2, f"exit status {code!r}; stderr: {err!r}"
    assert "Traceback" not in err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"not one line: {err!r}"
    prefix = f"digitmatch {command}: "
    assert lines[0].startswith(prefix) and len(lines[0]) > len(prefix), lines[0]
    assert any(name in lines[0] for name in names), f"names none of {names}: {lines[0]!r}"


@pytest.mark.parametrize("option, via, value, accept", _cases())
def test_nonsense_value_is_refused_in_one_line(guarded, tmp_path, capsys, option, via, value, accept):
    value = _real(value, tmp_path)
    if via == "env":
        guarded.setenv(option.env, value)
        argv = [option.command]
    else:
        argv = option.argv(value)
    code, out, err = run_cli(argv, capsys)
    if accept:
        assert code == "started", f"a legitimate value was refused: {err!r}"
    else:
        assert_refused(option.command, option.names(), code, out, err)


def test_defaults_are_accepted(guarded, capsys):
    """The guard works: with no options at all, every command gets as far as starting."""
    for command in cli.COMMANDS:
        code, _, err = run_cli([command], capsys)
        assert code == "started", (command, err)


def test_validation_does_not_import_tensorflow(tmp_path):
    """Refusing a value (at parse time or in a command's own checks) does not load TensorFlow."""
    script = """
import sys
from digitmatch import cli
for argv in (["serve", "--max-batch-size=abc"], ["serve", "--max-delay-ms=nan"], ["train", "--epochs=-1"],
             ["train", "--data=/nonexistent"], ["evaluate", "--model=/nonexistent"], ["inspect", "--model=/nonexistent"],
             ["bench", "--seconds=inf"], ["demo", "--model=/nonexistent"], ["produce", "--rate=-1"],
             ["broker", "--port=-1"], ["voices", "--speakers=0"], ["train", "--extra-voices=/nonexistent"]):
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2, (argv, code)
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITMATCH_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]


def test_a_taken_metrics_port_is_a_one_line_error_naming_the_address(tmp_path):
    """A second ``digitmatch serve`` on a metrics port that is taken exits 2 within seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITMATCH_")} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "digitmatch.cli", "serve", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port), "--bootstrap-servers", "127.0.0.1:1"],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )
        took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert took < 15, f"took {took:.1f} s"
    assert done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("digitmatch serve: ")
    assert "127.0.0.1" in lines[0] and str(port) in lines[0]
