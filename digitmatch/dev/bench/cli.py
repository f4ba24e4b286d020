"""``digitmatch bench [model|naive|pipeline|sweep|scaleout|all]``.

* ``model``: the SavedModel alone, batch sizes 1 ... 1024 (the limit the pipeline is compared with).
* ``naive``: a consumer that predicts, produces and commits per pair (the baseline).
* ``pipeline``: broker + matcher + open-loop producer at fractions of the model limit, then at half
  the measured saturation (the latency goal).
* ``plain``: the batched consumer a competent engineer writes in an afternoon, draining the same
  backlog as the pipeline's drain (``pipeline_vs_plain``: the drain over it).
* ``ceiling``: the matcher draining a backlog through a trivially cheap SavedModel (same serving
  signature, exported by the project's export code): its host-side limit.
* ``sweep``: max batch size × max delay.
* ``scaleout``: one matcher, then two in one group, under load and draining a backlog.
* ``all`` (the default): all of them. ``--quick``: model, naive, the pipeline at saturation and
  at half of it, its drain and the plain consumer's, in about two minutes.

``model`` always runs first: the pipeline's offered loads are fractions of its best pairs/s.
``--json`` prints exactly one JSON object on stdout; ``--report DIR`` writes ``benchmarks.json``,
``benchmarks.png`` and the results section of ``benchmarks.md`` there.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from digitmatch.settings import (MAX_MS, MAX_SECONDS, Cli, DataOption, add_model_options, build, data_problem, field_of,
                                 model_problem, path_problem, values_from_args)

MODES = ("model", "naive", "pipeline", "plain", "ceiling", "sweep", "scaleout", "all")


def _numbers(text: str, kind: type, low: float, high: float, *, low_included: bool = True) -> tuple:
    """Comma-separated numbers of ``kind``, each finite and in [low, high] (or (low, high])."""
    try:
        values = tuple(kind(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {kind.__name__}, got {text!r}")
    for value in values:
        if not (math.isfinite(value) and (low <= value if low_included else low < value) and value <= high):
            bounds = f"{'[' if low_included else '('}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"each value must be in {bounds}, got {value:g}")
    return values


def _batch_sizes(text: str) -> tuple[int, ...]:
    return _numbers(text, int, 1, 65536)


def _loads(text: str) -> tuple[float, ...]:
    # fractions of the model-only best pairs/s
    return _numbers(text, float, 0, 100, low_included=False)


def _delays_ms(text: str) -> tuple[float, ...]:
    return _numbers(text, float, 0, MAX_MS)


@functools.cache
def options_model() -> type:
    """``digitmatch bench``'s options (after ``mode``), one field each (digitmatch.settings); the
    matcher's knobs are :class:`~digitmatch.consumer.config.MatcherConfig`'s fields, with their
    defaults. Built on first use: the defaults come from the benchmark modules."""
    from pydantic import BaseModel, ConfigDict, Field

    from digitmatch.dev.bench.model_only import BATCH_SIZES
    from digitmatch.dev.bench.pipeline import LOADS
    from digitmatch.dev.bench.sweep import SWEEP_BATCH_SIZES, SWEEP_DELAYS_MS
    from digitmatch.consumer.config import MatcherConfig

    class BenchOptions(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

        quick: bool = Field(False, description=(
            "model, naive, pipeline at saturation, its drain and the plain consumer's, small sizes (~2 min)"))
        json_output: Annotated[bool, Cli(flag="--json")] = Field(
            False, description="print exactly one JSON object on stdout (logs stay on stderr)")
        report: Path | None = Field(None, description=(
            "write benchmarks.json, benchmarks.png and the results of benchmarks.md into this directory"))
        model: Path = field_of(MatcherConfig, "model", help="SavedModel to benchmark")
        data: Path = field_of(DataOption, "data")
        max_batch_size: int = field_of(MatcherConfig, "max_batch_size",
                                       help="matcher's max batch size for the pipeline and scale-out runs")
        max_delay_ms: float = field_of(MatcherConfig, "max_delay_ms",
                                       help="matcher's max delay for the pipeline and scale-out runs")
        seconds: float | None = Field(None, gt=0, le=MAX_SECONDS,
                                      description="send window per load point (default 10, quick 6)")
        naive_pairs: int | None = Field(None, ge=1, description="pairs for the naive baseline (default 400, quick 150)")
        pool_pairs: int = Field(2000, ge=1, description="distinct pairs built from the data and reused")
        batch_sizes: Annotated[tuple[int, ...], Cli(type=_batch_sizes)] = Field(
            BATCH_SIZES, description="model-only batch sizes (quick: 1,16,128,256,512)")
        model_seconds: float | None = Field(None, gt=0, le=MAX_SECONDS,
                                            description="model-only time per batch size (default 2, quick 0.5)")
        loads: Annotated[tuple[float, ...], Cli(type=_loads)] = Field(LOADS, description=(
            "pipeline offered loads as fractions of the model-only best (--quick: one load, 1.25 × the drain rate)"))
        sweep_batch_sizes: Annotated[tuple[int, ...], Cli(type=_batch_sizes)] = Field(
            SWEEP_BATCH_SIZES, description="max batch sizes the sweep tries")
        sweep_delays_ms: Annotated[tuple[float, ...], Cli(type=_delays_ms)] = Field(
            SWEEP_DELAYS_MS, description="max delays the sweep tries")
        partitions: int = Field(4, ge=1, description="partitions of pairs.in and matches.out")
        intra_op_threads: int = field_of(MatcherConfig, "intra_op_threads", help=(
            "TensorFlow threads per operation, for the model alone, the naive consumer and the matchers "
            "(0 = one per core)"))
        inter_op_threads: int = field_of(MatcherConfig, "inter_op_threads",
                                         help="TensorFlow operations run side by side, as above (0 = one per core)")
        keep_logs: bool = Field(False, description="keep the broker's and matchers' logs")
        processing_guarantee: Literal["at-least-once", "exactly-once"] = field_of(
            MatcherConfig, "processing_guarantee", help=(
                "the matchers' guarantee (exactly-once: verdicts read by a read_committed reader; needs --engine kafka "
                "to mean anything)"))
        engine: Literal["tansu", "kafka"] = Field("tansu", description=(
            "broker the runs use: the embedded Tansu, or Apache Kafka on the local JVM (digitmatch broker --engine)"))

    return BenchOptions


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", default="all", choices=MODES, help="what to measure (default: all)")
    add_model_options(parser, options_model())


def run(args: argparse.Namespace) -> int:
    from digitmatch.kafka.configuration import quiet_client_logs

    quiet_client_logs()
    from digitmatch.dev.bench.runner import Plan, run_plan
    from digitmatch.dev.bench.session import BenchSession
    from digitmatch.producer.load import data_dir_arg

    try:
        build(options_model(), values_from_args(options_model(), args))
    except ValueError as exc:
        print(f"digitmatch bench: {exc}", file=sys.stderr)
        return 2
    problem = (model_problem("--model", args.model) or data_problem(args.data)
               or path_problem("--report", args.report, "new-dir"))
    if problem:
        print(f"digitmatch bench: {problem}", file=sys.stderr)
        return 2
    plan = Plan.from_args(args)
    started = time.monotonic()
    with BenchSession(model=args.model, data_dir=data_dir_arg(args.data), pool_pairs=args.pool_pairs,
                      partitions=args.partitions, keep_logs=args.keep_logs,
                      threads=(args.intra_op_threads, args.inter_op_threads), engine=args.engine,
                      processing_guarantee=args.processing_guarantee) as session:
        results = run_plan(session, plan)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["generated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.report is not None:
        from digitmatch.dev.bench.report import write_report

        write_report(results, args.report)
    if args.json:
        print(json.dumps(results))
    else:
        print_summary(results)
    return 0


def print_summary(results: dict) -> None:
    s = results["summary"]
    lines = [f"digitmatch bench ({results['mode']}{', quick' if results['quick'] else ''}) in {results['seconds']} s"]
    for key, value in s.items():
        lines.append(f"  {key:28s} {value}")
    print("\n".join(lines), file=sys.stdout)
