"""The matcher's Prometheus metrics. Names, labels and buckets are a contract with the dashboards
and alert rules (docs/architecture.md, "Metrics"); change them there first.

Each :class:`MatcherMetrics` owns its own ``CollectorRegistry`` so several matchers can live in
one process (tests, benchmarks); :mod:`digitmatch.consumer.health` serves it on ``/metrics``.

Values observed per pair are observed per batch (:func:`observe_all`): the same buckets, count and
sum as one ``observe`` per value, with one lock per bucket touched instead of one per value.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from digitmatch.consumer.thread_cpu import ThreadCpuCollector
from digitmatch.wire import Reason

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1, 2, 4, ..., 1024


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, in one step per bucket touched.

    A value goes to the first bucket whose upper bound is >= it, as ``observe`` puts it
    (prometheus_client keeps per-bucket counts, made cumulative when exposed); this reads the
    histogram's bounds and values (``_upper_bounds``, ``_buckets``, ``_sum``), which
    tests/consumer/test_metrics.py checks against ``observe`` one value at a time."""
    if not len(values):
        return
    amounts = np.asarray(values, dtype=np.float64)
    rows = np.searchsorted(np.asarray(histogram._upper_bounds, dtype=np.float64), amounts, side="left")
    histogram._sum.inc(float(amounts.sum()))
    for row, count in zip(*np.unique(rows, return_counts=True)):
        histogram._buckets[int(row)].inc(int(count))


class MatcherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry

        def latency(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=r)

        self.messages_consumed = Counter(
            "digitmatch_messages_consumed_total", "Records read from the input topic", ["half"], registry=r
        )
        self.verdicts = Counter(
            "digitmatch_verdicts_total", "Verdicts acknowledged by the broker", ["outcome"], registry=r
        )
        self.dead_letters = Counter(
            "digitmatch_dead_letters_total", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.dead_letters_truncated = Counter(
            "digitmatch_dead_letters_truncated_total",
            "Dead letters published truncated to fit --max-dead-letter-bytes or the topic's limit", registry=r
        )
        self.join_wait = latency("digitmatch_join_wait_seconds", "First half read to second half read")
        self.queue_wait = latency("digitmatch_batch_queue_wait_seconds", "Pair joined to its batch starting inference")
        self.inference = latency("digitmatch_inference_seconds", "One model call (one or more batches)")
        self.features = latency("digitmatch_features_seconds",
                                "MFCC features of a model call's pcm16 spoken halves, computed together")
        self.end_to_end = latency("digitmatch_end_to_end_seconds", "First half produced to verdict decided (joined pairs)")
        self.batch_size = Histogram(
            "digitmatch_batch_size", "Pairs per model call", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_flushes = Counter(
            "digitmatch_batch_flushes_total", "Why a batch was cut", ["reason"], registry=r
        )
        self.pending_halves = Gauge("digitmatch_pending_halves", "Halves waiting for their partner", registry=r)
        self.pending_bytes = Gauge("digitmatch_pending_bytes",
                                   "Bytes of the halves waiting for their partner, as counted against --max-pending-bytes",
                                   registry=r)
        self.pending_bytes_limit = Gauge("digitmatch_pending_bytes_limit", "--max-pending-bytes", registry=r)
        self.pending_halves_limit = Gauge(
            "digitmatch_pending_halves_limit", "Configured bound on pending halves", registry=r
        )
        self.inference_queue = Gauge(
            "digitmatch_inference_queue_batches", "Batches waiting for the model", registry=r
        )
        self.partitions_assigned = Gauge(
            "digitmatch_partitions_assigned", "Partitions this matcher owns", registry=r
        )
        self.partitions_paused = Gauge(
            "digitmatch_partitions_paused", "Partitions paused for back-pressure", registry=r
        )
        self.consumer_lag = Gauge(
            "digitmatch_consumer_lag", "High-water mark minus position", ["partition"], registry=r
        )
        self.commits = Counter("digitmatch_commits_total", "Offset commits", ["result"], registry=r)
        self.transactions = Counter("digitmatch_transactions_total", "Kafka transactions ended (exactly once)",
                                    ["result"], registry=r)
        for result in ("committed", "aborted"):
            self.transactions.labels(result=result)
        self.kafka_errors = Counter("digitmatch_kafka_errors_total", "Kafka client errors", ["stage"], registry=r)
        self.model_info = Gauge("digitmatch_model_info", "Model being served (value 1)", ["name", "version"], registry=r)
        self.model_loads = Counter("digitmatch_model_loads_total", "Model (re)loads", ["result"], registry=r)
        self.model_fallbacks = Counter(
            "digitmatch_model_fallbacks_total",
            "Swapped-in model versions that failed on a batch and were replaced by the previous version",
            registry=r,
        )
        self.verdicts_checked = Counter(
            "digitmatch_verdicts_checked_total",
            "Verdicts whose ground truth travelled with the halves (live accuracy)",
            ["correct"],
            registry=r,
        )
        self.ready = Gauge("digitmatch_ready", "1 when /readyz is true", registry=r)
        # The whole process's threads, per role (several matchers in one process each count all).
        self.threads = ThreadCpuCollector()
        r.register(self.threads)

        # Label values known in advance start at zero, so rates and ratios exist from the start.
        for half in ("spoken", "written", "invalid"):
            self.messages_consumed.labels(half=half)
        for outcome in ("match", "no_match", "unpaired"):
            self.verdicts.labels(outcome=outcome)
        for reason in ("full", "deadline", "drain"):
            self.batch_flushes.labels(reason=reason)
        for result in ("ok", "error"):
            self.commits.labels(result=result)
            self.model_loads.labels(result=result)
        for stage in ("consume", "produce", "commit"):
            self.kafka_errors.labels(stage=stage)
        # Every dead-letter reason too: rate() cannot see the first burst of a series born non-zero,
        # so without this the DigitmatchDeadLetters alert misses a one-off batch of bad input.
        for reason in Reason:
            self.dead_letters.labels(reason=reason.value)
        for correct in ("true", "false"):
            self.verdicts_checked.labels(correct=correct)

    def set_model(self, name: str, version: int) -> None:
        """Point ``digitmatch_model_info`` at the model now served (one series at a time)."""
        self.model_info.clear()
        self.model_info.labels(name=name, version=str(version)).set(1)

    def set_lag(self, lags: dict[int, int]) -> None:
        self.consumer_lag.clear()
        for partition, lag in lags.items():
            self.consumer_lag.labels(partition=str(partition)).set(lag)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
