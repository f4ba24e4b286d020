"""``digitmatch demo``: the whole pipeline on one machine, in one command.

1. starts an embedded Kafka-protocol broker (:class:`~digitmatch.dev.broker.EmbeddedBroker`),
2. starts the matcher as a real ``digitmatch serve`` process on the shipped model,
3. builds pairs from the held-out data (the full data in ``--data`` when present, else the sample
   shipped in ``digitmatch/data/sample/``) while the matcher loads, waits for its ``/readyz``,
4. publishes both halves of every pair (:func:`~digitmatch.producer.load.publish_pairs`), plus
   ``--invalid`` malformed records to show the dead-letter path,
5. reads ``matches.out`` until every pair has a verdict, scrapes the matcher's ``/metrics``, and
   stops everything.

The summary compares each verdict with the ground truth the demo itself drew (not the matcher's
own ``correct`` field). Throughput is pairs decided per second from the first half sent to the
last verdict read; latency is each verdict's ``latency_ms.end_to_end`` (earliest
``dm-produced-ms`` -> decided). With ``--rate 0`` all pairs are offered at once, so latency then
includes the time pairs queue behind each other; a ``--rate`` below the matcher's throughput
shows the latency of a pair on its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Annotated

import numpy as np

from digitmatch import wire
from digitmatch.settings import (MAX_SECONDS, Cli, DataOption, add_model_options, build, data_problem, field_of,
                                 model_problem, values_from_args)

log = logging.getLogger(__name__)

DEMO_GROUP = "digitmatch-demo"


@functools.cache
def options_model() -> type:
    """``digitmatch demo``'s options, one field each (digitmatch.settings); those it shares with
    ``produce`` and ``serve`` are theirs, with the demo's defaults and help. Built on first use, so
    that importing this module loads neither the producer nor the matcher's configuration."""
    from pydantic import BaseModel, ConfigDict, Field

    from digitmatch.consumer.config import MatcherConfig
    from digitmatch.producer.load import ProduceOptions

    class DemoOptions(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

        pairs: int = field_of(ProduceOptions, "pairs", default=2000, help="pairs to publish")
        rate: float = field_of(ProduceOptions, "rate")
        partitions: int = Field(4, ge=1, description="partitions of pairs.in and matches.out")
        metrics_port: int = field_of(MatcherConfig, "metrics_port", default=0,
                                     help="matcher's /metrics port (0 = a free one)")
        match_ratio: float = field_of(ProduceOptions, "match_ratio")
        partner_missing_ratio: float = field_of(ProduceOptions, "partner_missing_ratio", help=(
            "fraction of pairs sent without their second half (they end 'unpaired')"))
        invalid: int = Field(0, ge=0, description="malformed records to send (they go to pairs.dlq)")
        seed: int = field_of(ProduceOptions, "seed", help="seed for pairs and sending order")
        data: Path = field_of(DataOption, "data")
        model: Path = field_of(MatcherConfig, "model", help="SavedModel the matcher serves")
        max_batch_size: int = field_of(MatcherConfig, "max_batch_size", help="matcher: pairs per inference batch")
        max_delay_ms: float = field_of(MatcherConfig, "max_delay_ms", help="matcher: longest wait to fill a batch")
        join_ttl_s: float = field_of(MatcherConfig, "join_ttl_s", default=5.0,
                                     help="matcher: how long a half waits for its partner before 'unpaired'")
        timeout_s: float = Field(180.0, gt=0, le=MAX_SECONDS, description="give up waiting for verdicts after this")
        keep_logs: bool = Field(False, description="keep the broker's and matcher's logs even when the demo succeeds")
        json_output: Annotated[bool, Cli(flag="--json")] = Field(
            False, description="print exactly one JSON object on stdout (logs stay on stderr)")

    return DemoOptions


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, options_model())


def _check(args: argparse.Namespace) -> str | None:
    try:
        build(options_model(), values_from_args(options_model(), args))
    except ValueError as exc:
        return str(exc)
    model = model_problem("--model", args.model)
    return data_problem(args.data) or (f"{model} (train one with `digitmatch train`)" if model else None)


def invalid_records(run_id: str, n: int) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """``n`` malformed ``pairs.in`` records, cycling through several dead-letter reasons."""
    frames = np.ones((20, 13), np.float32)
    records = []
    for i in range(n):
        pid = f"{run_id}-bad-{i}"
        key, value, headers = wire.encode_spoken(pid, frames)
        kind = i % 4
        if kind == 0:  # size_mismatch: a truncated value
            value = value[:-4]
        elif kind == 1:  # non_finite
            value = np.full((20, 13), np.nan, np.float32).tobytes()
        elif kind == 2:  # bad_shape: the image header on a spoken value
            headers = [(h, b"28,28" if h == wire.H_SHAPE else v) for h, v in headers]
        else:  # unsupported_schema
            headers = [(h, b"99" if h == wire.H_SCHEMA else v) for h, v in headers]
        records.append((key, value, headers))
    return records


def scrape_metrics(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """A few totals from the matcher's /metrics (empty if it cannot be read)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("digitmatch_batch_size_sum", "digitmatch_batch_size_count"):
                values[sample.name] = sample.value
            elif sample.name == "digitmatch_verdicts_total":
                values[f"verdicts_{sample.labels['outcome']}"] = sample.value
    return values


def wait_for_verdicts(reader: threading.Thread, metrics_url: str, pairs: int,
                      show: bool | None = None) -> None:
    """Wait for the verdict reader to finish. Meanwhile, with ``show`` (None: when stderr is a
    terminal), a bar on stderr: verdicts the matcher has decided (its /metrics) of the pairs sent."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=pairs, desc="verdicts", unit="pair", file=sys.stderr, leave=False,
               disable=None if show is None else not show)
    if bar.disable:
        reader.join()
        return
    with bar, logging_redirect_tqdm():  # log lines printed above the bar, not through it
        while reader.is_alive():
            metrics = scrape_metrics(metrics_url, timeout_s=1.0)
            decided = sum(value for name, value in metrics.items() if name.startswith("verdicts_"))
            bar.update(max(0, min(int(decided), pairs) - bar.n))
            bar.refresh()  # the elapsed time moves on while unpaired halves wait out their TTL
            reader.join(0.5)


def summarize(pairs, report, read, dead_letters: Counter, metrics: dict, extra: dict) -> dict:
    """The demo's result as one flat dict (the ``--json`` output)."""
    verdicts = read.verdicts
    outcomes = Counter(v.outcome for v in verdicts.values())
    index = {pid: i for i, pid in enumerate(pairs.pair_ids)}
    decided = [(index[pid], v.outcome == "match") for pid, v in verdicts.items() if v.outcome != "unpaired"]
    correct = sum(bool(pairs.same[i]) == said_match for i, said_match in decided)
    # Throughput of the joined pairs: an unpaired verdict comes a join TTL after its half, by design.
    joined = [read.seen_ms[pid] for pid, v in verdicts.items() if v.outcome != "unpaired"]
    last_ms = max(joined) if joined else read.last_seen_ms()
    seconds = (last_ms - report.started_ms) / 1000 if last_ms else None
    latency = _percentiles(read.end_to_end_ms())
    batches = metrics.get("digitmatch_batch_size_count", 0)
    return {
        "pairs_sent": report.pairs,
        "verdicts": len(verdicts),
        "match": outcomes.get("match", 0),
        "no_match": outcomes.get("no_match", 0),
        "unpaired": outcomes.get("unpaired", 0),
        "dlq": sum(dead_letters.values()),
        "dlq_reasons": dict(sorted(dead_letters.items())),
        "accuracy": round(correct / len(decided), 4) if decided else None,
        "correct": correct,
        "decided": len(decided),
        "pairs_per_s": round((len(joined) or len(verdicts)) / seconds, 1) if seconds else None,
        "seconds": round(seconds, 3) if seconds else None,
        **latency,
        "mean_batch_size": round(metrics["digitmatch_batch_size_sum"] / batches, 1) if batches else None,
        "duplicate_verdicts": read.duplicates,
        "complete": read.complete,
        **extra,
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    from digitmatch.kafka.reader import percentiles

    return {f"{name}_ms": value for name, value in percentiles(values).items()}


def print_summary(s: dict) -> None:
    def ms(v):
        return "n/a" if v is None else f"{v:.0f} ms"

    accuracy = "n/a"
    if s["accuracy"] is not None:
        accuracy = f"{100 * s['accuracy']:.1f} % vs ground truth ({s['correct']} / {s['decided']} decided pairs)"
    throughput = "n/a"
    if s["pairs_per_s"]:
        throughput = f"{s['pairs_per_s']:.0f} pairs/s (first half sent -> last verdict of a joined pair: {s['seconds']:.2f} s)"
    lines = [
        f"digitmatch demo: {s['pairs_sent']} pairs through {s['bootstrap']} ({s['partitions']} partitions), "
        f"model {s['model']}, data: {s['data']}",
        f"  verdicts      {s['verdicts']} / {s['pairs_sent']}  (match {s['match']}, no_match {s['no_match']}, "
        f"unpaired {s['unpaired']})" + ("" if s["complete"] else "  INCOMPLETE: timed out"),
        f"  dead letters  {s['dlq']}" + (f"  {s['dlq_reasons']}" if s["dlq"] else ""),
        f"  accuracy      {accuracy}",
        f"  throughput    {throughput}",
        f"  latency       p50 {ms(s['p50_ms'])}, p95 {ms(s['p95_ms'])}, p99 {ms(s['p99_ms'])} (produced -> decided)",
        f"  batching      mean {s['mean_batch_size']} pairs per model call",
        f"  metrics       {s['metrics_url']} (served while the demo ran)",
    ]
    if s["logs"]:
        lines.append(f"  logs          {s['logs']}")
    print("\n".join(lines))


def run(args: argparse.Namespace) -> int:
    from digitmatch.kafka.configuration import quiet_client_logs

    quiet_client_logs()
    problem = _check(args)
    if problem:
        print(f"digitmatch demo: {problem}", file=sys.stderr)
        return 2
    try:
        summary = _run(args)
    except _DemoError as exc:
        print(f"digitmatch demo: {exc}", file=sys.stderr)
        return exc.code
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0 if summary["complete"] else 1


class _DemoError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _run(args: argparse.Namespace) -> dict:
    from kafka import KafkaProducer

    from digitmatch.dev.broker import EmbeddedBroker, free_port
    from digitmatch.data.errors import DataError
    from digitmatch.kafka.exceptions import KafkaSetupError
    from digitmatch.kafka.reader import read_dead_letters, read_verdicts
    from digitmatch.dev.matcher_process import MatcherExited, MatcherProcess
    from digitmatch.model.serving import ModelError, read_metadata, resolve
    from digitmatch.producer.load import build_pairs, data_dir_arg, model_features, new_run_id, publish_pairs
    from digitmatch.producer.producer import PairProducer

    try:
        version, version_dir = resolve(args.model)
        model_name = read_metadata(version_dir).get("name", "digitmatch")
    except ModelError as exc:
        raise _DemoError(f"{exc} (train one with `digitmatch train`)", 2) from None
    logs = Path(tempfile.mkdtemp(prefix="digitmatch-demo-"))
    run_id = new_run_id()
    matcher = None
    keep_logs = True  # until the demo has succeeded
    try:
        broker = EmbeddedBroker(partitions=args.partitions, log_path=logs / "broker.log").start()
    except KafkaSetupError as exc:
        raise _DemoError(str(exc)) from None
    try:
        conn = broker.connection
        matcher = MatcherProcess(
            broker.bootstrap,
            metrics_port=args.metrics_port or free_port(),
            log_path=logs / "matcher.log",
            log_level=getattr(args, "log_level", "INFO"),  # its TensorFlow notices too, at DEBUG
            model=args.model,
            group_id=DEMO_GROUP,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            join_ttl_s=args.join_ttl_s,
            # A short session keeps the first group join quick (Tansu completes a join after
            # about half the session timeout).
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        ).start()
        log.info("broker at %s; matcher pid %d starting (log %s)", broker.bootstrap, matcher.pid, matcher.log_path)
        # Build pairs (MFCC of every held-out recording) while the matcher loads its model.
        try:
            pairs = build_pairs(
                args.pairs,
                match_ratio=args.match_ratio,
                seed=args.seed,
                data_dir=data_dir_arg(args.data),
                features=model_features(version_dir),
                run_id=run_id,
            )
        except DataError as exc:
            raise _DemoError(str(exc), 2) from None
        log.info("built %d pairs from %s", len(pairs), pairs.source)
        try:
            matcher.wait_ready(timeout_s=args.timeout_s)
        except MatcherExited as exc:
            raise _DemoError(str(exc)) from None
        log.info("matcher ready; metrics at %s", matcher.metrics_url)

        result = {}
        reader = threading.Thread(
            target=lambda: result.setdefault("read", read_verdicts(conn, pairs.pair_ids, timeout_s=args.timeout_s)),
            name="verdict-reader",
            daemon=True,
        )
        reader.start()
        with PairProducer(conn) as producer:
            report = publish_pairs(
                pairs,
                producer,
                rate=args.rate,
                partner_missing_ratio=args.partner_missing_ratio,
                seed=args.seed,
                progress=False if args.json else None,  # a bar on a terminal's stderr
            )
        if args.invalid:
            raw = KafkaProducer(**conn.producer_kwargs())
            for key, value, headers in invalid_records(run_id, args.invalid):
                raw.send(wire.TOPIC_PAIRS, key=key, value=value, headers=headers)
            raw.close()
        log.info("published %d pairs in %.2f s; waiting for verdicts", report.pairs, report.seconds)
        wait_for_verdicts(reader, matcher.metrics_url, report.pairs, show=False if args.json else None)
        read = result["read"]
        dead_letters = read_dead_letters(conn, idle_s=1.0, timeout_s=30)
        metrics = scrape_metrics(matcher.metrics_url)
        code = matcher.stop()
        if code != 0:
            log.warning("matcher exited with code %s; see %s", code, matcher.log_path)
        keep_logs = args.keep_logs or code != 0 or not read.complete
        return summarize(
            pairs,
            report,
            read,
            dead_letters,
            metrics,
            {
                "model": f"{model_name} v{version}",
                "data": pairs.source,
                "bootstrap": broker.bootstrap,
                "partitions": args.partitions,
                "rate": args.rate,
                "metrics_url": matcher.metrics_url,
                "logs": str(logs) if keep_logs else None,
            },
        )
    finally:
        if matcher is not None:
            matcher.stop(timeout_s=20)
        broker.stop()
        if not keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
