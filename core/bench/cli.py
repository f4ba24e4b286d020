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
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from digitmatch.settings import add_data_option, add_option, add_switch

MODES = ("model", "naive", "pipeline", "sweep", "scaleout", "all")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in str(text).split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(text).split(",") if x.strip())


def configure(parser: argparse.ArgumentParser) -> None:
    from digitmatch.bench.model_only import BATCH_SIZES
    from digitmatch.bench.pipeline import LOADS
    from digitmatch.bench.sweep import SWEEP_BATCH_SIZES, SWEEP_DELAYS_MS
    from digitmatch.consumer.config import MatcherConfig
    from digitmatch.kafka.clients import CLIENT_LIBRARIES
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    d = MatcherConfig.model_fields
    parser.add_argument("mode", nargs="?", default="all", choices=MODES, help="what to measure (default: all)")
    add_switch(parser, "--quick", help="model, naive and pipeline at saturation only, small sizes (< 2 min)")
    add_switch(parser, "--json", help="print exactly one JSON object on stdout (logs stay on stderr)")
    add_option(parser, "--report", default=None, type=Path,
               help="write benchmarks.json, benchmarks.png and the results of benchmarks.md into this directory")
    add_option(parser, "--model", default=DEFAULT_MODEL_ROOT, type=Path, help="SavedModel to benchmark")
    add_data_option(parser)
    add_option(parser, "--max-batch-size", default=d["max_batch_size"].default, type=int,
               help="matcher's max batch size for the pipeline and scale-out runs")
    add_option(parser, "--max-delay-ms", default=d["max_delay_ms"].default, type=float,
               help="matcher's max delay for the pipeline and scale-out runs")
    add_option(parser, "--seconds", default=None, type=float, help="send window per load point (default 10, quick 6)")
    add_option(parser, "--naive-pairs", default=None, type=int, help="pairs for the naive baseline (default 400, quick 150)")
    add_option(parser, "--pool-pairs", default=2000, type=int, help="distinct pairs built from the data and reused")
    add_option(parser, "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), type=_ints,
               help="model-only batch sizes (quick: 1,16,128,256,512)")
    add_option(parser, "--model-seconds", default=None, type=float, help="model-only time per batch size (default 2, quick 0.5)")
    add_option(parser, "--loads", default=",".join(map(str, LOADS)), type=_floats,
               help="pipeline offered loads as fractions of the model-only best (--quick: one load, 1.25 × the drain rate)")
    add_option(parser, "--sweep-batch-sizes", default=",".join(map(str, SWEEP_BATCH_SIZES)), type=_ints,
               help="max batch sizes the sweep tries")
    add_option(parser, "--sweep-delays-ms", default=",".join(f"{x:g}" for x in SWEEP_DELAYS_MS), type=_floats,
               help="max delays the sweep tries")
    add_option(parser, "--partitions", default=4, type=int, help="partitions of pairs.in and matches.out")
    add_option(parser, "--intra-op-threads", default=d["intra_op_threads"].default, type=int,
               help="TensorFlow threads per operation, for the model alone, the naive consumer and the matchers "
                    "(0 = one per core)")
    add_option(parser, "--inter-op-threads", default=d["inter_op_threads"].default, type=int,
               help="TensorFlow operations run side by side, as above (0 = one per core)")
    add_option(parser, "--kafka-client", default=d["kafka_client"].default, choices=CLIENT_LIBRARIES,
               help="the matchers' Kafka client library (the naive baseline and the load generator use kafka-python)")
    add_switch(parser, "--keep-logs", help="keep the broker's and matchers' logs")


def run(args: argparse.Namespace) -> int:
    from digitmatch.kafka.configuration import quiet_client_logs

    quiet_client_logs()
    from digitmatch.bench.runner import Plan, run_plan
    from digitmatch.bench.session import BenchSession
    from digitmatch.producer.load import data_dir_arg

    plan = Plan.from_args(args)
    started = time.monotonic()
    with BenchSession(model=args.model, data_dir=data_dir_arg(args.data), pool_pairs=args.pool_pairs,
                      partitions=args.partitions, keep_logs=args.keep_logs,
                      threads=(args.intra_op_threads, args.inter_op_threads),
                      kafka_client=args.kafka_client) as session:  # fmt: skip
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
