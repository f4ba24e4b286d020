"""Flags with environment-variable fallbacks: ``--max-batch-size`` <-> ``DIGITMATCH_MAX_BATCH_SIZE``.

The flag wins over the variable, the variable over the built-in default. Every option's ``--help``
text names its variable, so the CLI documents its own configuration.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "DIGITMATCH_"
DEFAULT_DATA_DIR = Path("../shared/data")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str = "",
    **kwargs: Any,
) -> None:
    """Add ``flag`` whose default comes from ``DIGITMATCH_<FLAG>`` when that variable is set."""
    env = env_name(flag)
    raw = os.environ.get(env)
    if raw is not None:
        try:
            default = type(raw)
        except (TypeError, ValueError) as exc:
            parser.error(f"environment variable {env}={raw!r} is invalid: {exc}")
    suffix = f" [env {env}; default: %(default)s]"
    parser.add_argument(flag, default=default, type=type, help=help + suffix, **kwargs)


def add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str = "") -> None:
    """A boolean ``--flag`` / ``--no-flag`` whose default comes from ``DIGITMATCH_<FLAG>``."""
    env = env_name(flag)
    raw = os.environ.get(env)
    default = False
    if raw is not None:
        try:
            default = _parse_bool(raw)
        except ValueError as exc:
            parser.error(f"environment variable {env}: {exc}")
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
