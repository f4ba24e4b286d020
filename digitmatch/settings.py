"""Every option is declared once, as a field of a pydantic model, and read from a flag or from its
environment variable: ``--max-batch-size`` <-> ``DIGITMATCH_MAX_BATCH_SIZE``.

**One declaration.** A field (``max_batch_size: int = Field(256, ge=1, le=65536, description=...)``)
holds the option's type, default, bounds and help (``description``). :func:`add_model_options`
turns a model's fields into argparse options: the flag is the field's name with hyphens (``--`` +
``max-batch-size``), the variable ``DIGITMATCH_`` + the name in capitals, the value's type comes from
the annotation (``X | None`` -> ``X``; a ``Literal`` gives the choices; ``bool`` a ``--x/--no-x``
switch), and the help is the description plus ``[env DIGITMATCH_X; default: ...]``. What the
annotation cannot say (a parser such as :func:`host_name`, another flag) is an ``Annotated[...,
Cli(...)]`` marker. :func:`build` makes the model from the parsed arguments (:func:`values_from_args`);
a :class:`~pydantic.ValidationError` becomes one line naming the flag. A field that several commands
share with another default or help is taken over with :func:`field_of`, not written again.

**Checked as read.** Every value, given by flag or by variable, is checked as it is read
(:func:`add_option`): text with a NUL, a control character or bytes that are not UTF-8 is refused,
and so is an empty value (unless the option says ``allow_empty``); a number must be finite (no
``nan``, ``inf``, ``1e400``) and fit in 64 bits, and within the field's ``ge`` / ``gt`` / ``le`` /
``lt`` bounds (``add_model_options(..., bounds=False)`` leaves the bounds to the model, as the
matcher's and the connection's options always have). A refused value is a one-line error naming the
option (or the variable) and exit status 2. The flag wins over the variable, the variable over the
default.

**Not pydantic-settings.** Its ``CliSettingsSource`` would declare the options from the same fields,
but it does not keep this CLI: its settings classes are ``BaseSettings``, which read the
environment whenever they are constructed (``MatcherConfig(**fields)`` in the tests and the library
would pick up a stray ``DIGITMATCH_*``); it reads the variables when the model is built, after
parsing, so a bad ``DIGITMATCH_X`` is not refused at parse time under its variable's name, and
``--help`` does not show the default the variable sets; nested models become ``--kafka.x`` flags
(ours share flat connection flags between ``serve`` and ``produce``); its help and switch formats
differ. Matching all that takes more overriding than this module's ~100 lines, and it would be one
more dependency. The generator here keeps the argparse subcommands, their lazy imports and every
flag, variable and message as they were.

**The data directory** (``--data`` / ``DIGITMATCH_DATA``, :func:`add_data_option`, used by every
command) has one rule: a flag or variable is a path as given (relative to the working directory);
the default, ``../shared/data``, is taken relative to the repository root when the package runs from
a checkout (``pyproject.toml`` beside ``digitmatch/``) and relative to the working directory otherwise
(an installed package): :func:`default_data_dir`. A default that does not exist means the shipped
sample (:func:`data_problem` accepts it); a directory given must exist.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo

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


# ------------------------------------------------------------------ options from pydantic models


@dataclass(frozen=True)
class Cli:
    """What a field's annotation does not say about its option: ``Annotated[str, Cli(type=host_name)]``.

    ``type`` parses the text (default: the annotation's type); ``flag`` replaces ``--<name>`` (the
    attribute then takes the flag's name); ``allow_empty`` lets ``type`` see ``''``."""

    type: Callable[[str], Any] | None = None
    flag: str | None = None
    allow_empty: bool = False


def _cli(info: FieldInfo) -> Cli:
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def flag_of(name: str, info: FieldInfo) -> str:
    return _cli(info).flag or "--" + name.replace("_", "-")


def dest_of(name: str, info: FieldInfo) -> str:
    """The attribute of the parsed arguments that holds field ``name``."""
    return flag_of(name, info).lstrip("-").replace("-", "_")


def _nested(info: FieldInfo) -> type[BaseModel] | None:
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _value_type(annotation: Any) -> tuple[Any, list | None]:
    """(type, choices) of an annotation: ``X | None`` -> ``X``; ``Literal[...]`` -> its values."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _value_type(inner[0])
    if get_origin(annotation) is Literal:
        values = list(get_args(annotation))
        return type(values[0]), values
    return annotation, None


def add_model_options(parser: argparse.ArgumentParser, model: type[BaseModel], *, bounds: bool = True) -> None:
    """One option per field of ``model``, in declaration order (see the module's docstring); a
    field that is itself a model adds that model's options, under their own flat names."""
    for name, info in model.model_fields.items():
        nested = _nested(info)
        if nested is not None:
            add_model_options(parser, nested, bounds=bounds)
            continue
        cli, flag = _cli(info), flag_of(name, info)
        kind, choices = _value_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        help_text = info.description or ""
        if kind is bool and cli.type is None:
            if default is not False:
                raise TypeError(f"{model.__name__}.{name}: a switch is off by default")
            add_switch(parser, flag, help=help_text)
            continue
        convert = cli.type or kind
        if get_origin(convert) is not None or not callable(convert):
            raise TypeError(f"{model.__name__}.{name}: {info.annotation} needs Cli(type=...) to be parsed")
        # pydantic keeps ge=... as annotated_types' Ge(ge=...) (and so on) in the field's metadata
        limits = {key: getattr(m, key) for m in info.metadata for key in ("ge", "gt", "le", "lt")
                  if getattr(m, key, None) is not None}
        if isinstance(default, (tuple, list)):  # shown and parsed as the text a user would type
            default = ",".join(x if isinstance(x, str) else _number(x) for x in default)
        add_option(parser, flag, default=default, type=convert, help=help_text, allow_empty=cli.allow_empty,
                   **(limits if bounds else {}), **({"choices": choices} if choices else {}))


def values_from_args(model: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """``model``'s fields (not those that are models themselves) from the parsed arguments."""
    return {name: getattr(args, dest_of(name, info)) for name, info in model.model_fields.items()
            if _nested(info) is None}


def validation_message(model: type[BaseModel], exc: ValidationError) -> str:
    """The first error of ``exc`` in one line, under the flag of the field it concerns."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    message = " ".join(err["msg"].removeprefix("Value error, ").splitlines())
    if not loc:
        return message
    info = model.model_fields.get(loc[0])
    where = flag_of(loc[0], info) if info is not None and len(loc) == 1 else "--" + ".".join(loc).replace("_", "-")
    return f"{where}: {message}"


def build(model: type[BaseModel], values: dict[str, Any], *, error: type[Exception] = ValueError) -> Any:
    """``model(**values)``; a validation error is raised as ``error`` with one line naming the flag."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise error(validation_message(model, exc)) from None


def field_of(model: type[BaseModel], name: str, *, help: str | None = None, **changes: Any) -> Any:
    """``model``'s declaration of field ``name`` (type checks, bounds, help, :class:`Cli`) for a field
    of another model, with its own ``default`` or ``help`` where given."""
    if help is not None:
        changes["description"] = help
    return FieldInfo.merge_field_infos(model.model_fields[name], **changes)


# ------------------------------------------------------------------ the data directory


def checkout_root() -> Path | None:
    """The repository root when the package runs from a checkout (``digitmatch/`` beside ``pyproject.toml``)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "digitmatch" / "settings.py").is_file() else None


def default_data_dir() -> Path:
    """``../shared/data`` relative to the repository root in a checkout, else to the working directory."""
    return ((checkout_root() or Path.cwd()) / DEFAULT_DATA_DIR).resolve()


class DataOption(BaseModel):
    """``--data``, the one declaration every command uses (:func:`add_data_option`, or
    ``field_of(DataOption, "data")`` in a command's own model)."""

    data: Path = Field(
        default_factory=default_data_dir,
        description="directory holding fsdd/recordings and mnist/ (read in place; the default ../shared/data is "
                    "relative to the repository root when running from a checkout, else to the working directory)",
    )


def add_data_option(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, DataOption)


def data_problem(path: Path | str | None) -> str | None:
    """Why ``--data`` cannot be read, or None. The default may be missing (the loaders then use the
    shipped sample); a directory given by flag or variable must exist."""
    if path is None or Path(path) == default_data_dir():
        return None
    return path_problem("--data", path, "dir")


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
