"""``digitmatch bench [model|naive|pipeline|sweep|scaleout|all]``.

* ``model``: the SavedModel alone, batch sizes 1 ... 1024 (the limit the pipeline is compared with).
* ``naive``: a consumer that predicts, produces and commits per pair (the baseline).
* ``pipeline``: broker + matcher + open-loop producer at fractions of the model limit, then at half
  the measured saturation (the latency goal).
* ``sweep``: max batch size × max delay.
* ``scaleout``: one matcher, then two in one group, under load and draining a backlog.
* ``all`` (the default): all of them. ``--quick``: model, naive and the pipeline at saturation and
  at half of it, in under two minutes.

``model`` always runs first: the pipeline's offered loads are fractions of its best pairs/s.
``--json`` prints exactly one JSON object on stdout; ``--report DIR`` writes ``benchmarks.json``,
``benchmarks.png`` and the results section of ``benchmarks.md`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from digitmatch.settings import (MAX_MS, MAX_SECONDS, add_data_option, add_option, add_switch, model_problem,
                                 path_problem)

MODES = ("model", "naive", "pipeline", "sweep", "scaleout", "all")


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


def configure(parser: argparse.ArgumentParser) -> None:
    from digitmatch.bench.model_only import BATCH_SIZES
    from digitmatch.bench.pipeline import LOADS
    from digitmatch.bench.sweep import SWEEP_BATCH_SIZES, SWEEP_DELAYS_MS
    from digitmatch.consumer.config import MatcherConfig
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    d = MatcherConfig.model_fields
    parser.add_argument("mode", nargs="?", default="all", choices=MODES, help="what to measure (default: all)")
    add_switch(parser, "--quick", help="model, naive and pipeline at saturation only, small sizes (< 2 min)")
    add_switch(parser, "--json", help="print exactly one JSON object on stdout (logs stay on stderr)")
    add_option(parser, "--report", default=None, type=Path,
               help="write benchmarks.json, benchmarks.png and the results of benchmarks.md into this directory")
    add_option(parser, "--model", default=DEFAULT_MODEL_ROOT, type=Path, help="SavedModel to benchmark")
    add_data_option(parser)
    add_option(parser, "--max-batch-size", default=d["max_batch_size"].default, type=int, ge=1, le=65536,
               help="matcher's max batch size for the pipeline and scale-out runs")
    add_option(parser, "--max-delay-ms", default=d["max_delay_ms"].default, type=float, ge=0, le=MAX_MS,
               help="matcher's max delay for the pipeline and scale-out runs")
    add_option(parser, "--seconds", default=None, type=float, gt=0, le=MAX_SECONDS,
               help="send window per load point (default 10, quick 6)")
    add_option(parser, "--naive-pairs", default=None, type=int, ge=1,
               help="pairs for the naive baseline (default 400, quick 150)")
    add_option(parser, "--pool-pairs", default=2000, type=int, ge=1, help="distinct pairs built from the data and reused")
    add_option(parser, "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), type=_batch_sizes,
               help="model-only batch sizes (quick: 1,16,128,256,512)")
    add_option(parser, "--model-seconds", default=None, type=float, gt=0, le=MAX_SECONDS,
               help="model-only time per batch size (default 2, quick 0.5)")
    add_option(parser, "--loads", default=",".join(map(str, LOADS)), type=_loads,
               help="pipeline offered loads as fractions of the model-only best (--quick: one load, 1.25 × the drain rate)")
    add_option(parser, "--sweep-batch-sizes", default=",".join(map(str, SWEEP_BATCH_SIZES)), type=_batch_sizes,
               help="max batch sizes the sweep tries")
    add_option(parser, "--sweep-delays-ms", default=",".join(f"{x:g}" for x in SWEEP_DELAYS_MS), type=_delays_ms,
               help="max delays the sweep tries")
    add_option(parser, "--partitions", default=4, type=int, ge=1, help="partitions of pairs.in and matches.out")
    add_option(parser, "--intra-op-threads", default=d["intra_op_threads"].default, type=int, ge=0,
               help="TensorFlow threads per operation, for the model alone, the naive consumer and the matchers "
                    "(0 = one per core)")
    add_option(parser, "--inter-op-threads", default=d["inter_op_threads"].default, type=int, ge=0,
               help="TensorFlow operations run side by side, as above (0 = one per core)")
    add_switch(parser, "--keep-logs", help="keep the broker's and matchers' logs")


def run(args: argparse.Namespace) -> int:
    from digitmatch.kafka.configuration import quiet_client_logs

    quiet_client_logs()
    from digitmatch.bench.runner import Plan, run_plan
    from digitmatch.bench.session import BenchSession
    from digitmatch.producer.load import data_dir_arg

    problem = (model_problem("--model", args.model) or path_problem("--data", data_dir_arg(args.data), "dir")
               or path_problem("--report", args.report, "new-dir"))
    if problem:
        print(f"digitmatch bench: {problem}", file=sys.stderr)
        return 2
    plan = Plan.from_args(args)
    started = time.monotonic()
    with BenchSession(model=args.model, data_dir=data_dir_arg(args.data), pool_pairs=args.pool_pairs,
                      partitions=args.partitions, keep_logs=args.keep_logs,
                      threads=(args.intra_op_threads, args.inter_op_threads)) as session:
        results = run_plan(session, plan)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["generated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.report is not None:
        from digitmatch.bench.report import write_report

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
