"""Flags with environment-variable fallbacks: ``--max-batch-size`` <-> ``DIGITMATCH_MAX_BATCH_SIZE``.

The flag wins over the variable, the variable over the built-in default. Every option's ``--help``
text names its variable, so the CLI documents its own configuration.

Every value, given by flag or by variable, is checked as it is read (:func:`add_option`): text with
a NUL, a control character or bytes that are not UTF-8 is refused, and so is an empty value
(unless the option says ``allow_empty``); a number must be finite (no ``nan``, ``inf``, ``1e400``)
and fit in 64 bits, and within the option's ``ge`` / ``gt`` / ``le`` / ``lt`` bounds when it has
them. A refused value is a one-line error naming the option (or the variable) and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "DIGITMATCH_"
DEFAULT_DATA_DIR = Path("../shared/data")
# Nothing downstream (numpy, TensorFlow, librdkafka, deque lengths) takes an integer beyond 64 bits.
INT_LIMIT = 2**63 - 1
# Seeds go to numpy's legacy generator (keras.utils.set_random_seed), which takes 32 bits.
SEED_LIMIT = 2**32 - 1
# The longest duration an option may ask for (timeouts, delays, windows): a day. Beyond it the
# value is a typo, and far beyond it Event.wait / time.sleep overflow.
MAX_SECONDS = 86_400.0
MAX_MS = MAX_SECONDS * 1000
# The fastest load an option may ask for, pairs per second: far beyond what one producer sends.
MAX_RATE = 1_000_000.0


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be an option value (a NUL, a control character, not UTF-8), or None."""
    if "\x00" in text:
        return f"{text!r} contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (surrogateescape)
        return f"{text!r} is not valid UTF-8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return f"{text!r} contains a control character"
    return None


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _checked(
    convert: Callable[[str], Any],
    *,
    allow_empty: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Callable[[str], Any]:
    """``convert`` behind the checks every value passes (see the module's docstring)."""

    def check(text: str) -> Any:
        if not isinstance(text, str):  # a default that is not text: not ours to check
            return convert(text)
        problem = text_problem(text)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        if not text.strip() and not allow_empty:
            raise argparse.ArgumentTypeError("an empty value is not allowed")
        value = convert(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if isinstance(value, int) and abs(value) > INT_LIMIT:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range")
        for word, bound, ok in ((">=", ge, lambda b: value >= b), (">", gt, lambda b: value > b),
                                ("<=", le, lambda b: value <= b), ("<", lt, lambda b: value < b)):
            if bound is not None and not ok(bound):
                raise argparse.ArgumentTypeError(f"must be {word} {_number(bound)}, got {text.strip()}")
        return value

    # argparse names the type in "invalid int value: 'abc'".
    check.__name__ = getattr(convert, "__name__", "value")
    return check


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str = "",
    allow_empty: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **kwargs: Any,
) -> None:
    """Add ``flag`` whose default comes from ``DIGITMATCH_<FLAG>`` when that variable is set.

    ``ge`` / ``gt`` / ``le`` / ``lt`` bound a number; ``allow_empty`` lets ``type`` see ``''``."""
    env = env_name(flag)
    convert = _checked(type, allow_empty=allow_empty, ge=ge, gt=gt, le=le, lt=lt)
    raw = os.environ.get(env)
    if raw is not None:
        problem = None
        try:
            default = convert(raw)
        except argparse.ArgumentTypeError as exc:
            problem = str(exc)
        except (TypeError, ValueError):
            problem = f"invalid {convert.__name__} value: {raw!r}"
        else:
            choices = kwargs.get("choices")
            if choices is not None and default not in choices:
                problem = f"invalid choice: {raw!r} (choose from {', '.join(map(repr, choices))})"
        if problem:
            parser.error(f"environment variable {env} (for {flag}): {problem}")
    suffix = f" [env {env}; default: %(default)s]"
    parser.add_argument(flag, default=default, type=convert, help=help + suffix, **kwargs)


def add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str = "") -> None:
    """A boolean ``--flag`` / ``--no-flag`` whose default comes from ``DIGITMATCH_<FLAG>``."""
    env = env_name(flag)
    raw = os.environ.get(env)
    default = False
    if raw is not None:
        try:
            default = _parse_bool(raw)
        except ValueError as exc:
            parser.error(f"environment variable {env} (for {flag}): {exc} (use 1/0, true/false, yes/no, on/off)")
    parser.add_argument(
        flag, default=default, action=argparse.BooleanOptionalAction, help=f"{help} [env {env}]"
    )


def add_data_option(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--data",
        default=DEFAULT_DATA_DIR,
        type=Path,
        help="directory holding fsdd/recordings and mnist/ (read in place)",
    )


# ------------------------------------------------------------------ value types and checks

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_name(text: str) -> str:
    """An IP address or a host name (RFC 1123 labels; not all digits, which resolvers would read as
    a number); whether it resolves is found out when it is used."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or an IP address")
    return text


def path_problem(flag: str, path: Path | str | None, kind: str) -> str | None:
    """Why ``path`` cannot be the value of ``flag``, or None. ``kind``: ``"dir"`` (an existing
    directory), ``"new-dir"`` (a directory, created when missing) or ``"new-file"`` (a file,
    created with its directories when missing)."""
    if path is None:
        return None
    path = Path(path)
    try:
        if path.exists():
            if kind in ("dir", "new-dir") and not path.is_dir():
                return f"{flag}: {str(path)!r} is not a directory"
            if kind == "new-file" and path.is_dir():
                return f"{flag}: {str(path)!r} is a directory, not a file"
            return None
        if kind == "dir":
            return f"{flag}: {str(path)!r} does not exist"
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{flag}: {str(path)!r} cannot be created: {str(parent)!r} is not a directory"
                return None
    except OSError as exc:
        return f"{flag}: {str(path)!r} cannot be read: {exc.strerror or exc}"
    return None


def model_problem(flag: str, path: Path | str | None) -> str | None:
    """Why ``path`` is not a SavedModel (a versioned root or one version directory), or None;
    reads the directory only (no TensorFlow)."""
    if path is None:
        return None
    problem = path_problem(flag, path, "dir")
    if problem:
        return problem
    from digitmatch.model.serving import ModelError, resolve

    try:
        resolve(path)
    except (ModelError, OSError) as exc:
        return f"{flag}: {exc}"
    return None
