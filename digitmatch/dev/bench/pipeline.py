"""``bench pipeline``: broker + ``digitmatch serve`` process(es) + open-loop producer at a rate.

Per load point, the producer in this process sends ``rate × seconds`` pairs on schedule; the
matcher's ``/metrics`` and its CPU time (``/proc/<pid>/stat``) are read before and after the send
window; then the run's verdicts are read back from ``matches.out``. Reported per point:

* achieved pairs/s: verdicts *decided* inside the send window (after a warm-up) per second of it,
  so a backlog drained after the window does not count;
* end-to-end latency p50/p95/p99/max: the verdicts' ``latency_ms.end_to_end`` (first half handed
  to the producer client -> verdict decided), of the pairs sent after the warm-up;
* batch-size distribution, flush reasons, mean inference time, from the metrics;
* the matcher's CPU use in % of one core (all its threads: poll loop, inference, Kafka I/O).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from digitmatch import wire
from digitmatch.dev.bench.open_loop import send_open_loop
from digitmatch.dev.bench.proc_cpu import cpu_seconds
from digitmatch.dev.bench.records import RecordPool
from digitmatch.dev.bench.scrape import Snapshot, histogram_counts, labelled, labelled_values, scrape
from digitmatch.dev.bench.verdict_tap import VerdictTap
from digitmatch.dev.broker import EmbeddedBroker
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer
from digitmatch.dev.matcher_process import MatcherProcess
from digitmatch.producer.load import new_run_id

log = logging.getLogger(__name__)

LOADS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.2)  # fractions of the model-only best


@dataclass
class LoadPoint:
    offered_pairs_per_s: float
    sent_pairs_per_s: float
    achieved_pairs_per_s: float
    pairs: int
    verdicts: int
    unpaired: int
    window_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_batch_size: float | None
    batch_sizes: dict[str, int]
    flushes: dict[str, int]
    inference_ms_mean: float | None
    matcher_cpu_percent: list[float]
    matcher_cpu_ms_per_pair: float | None  # all matchers' CPU time per pair decided in the window
    # ... per thread role (digitmatch_thread_cpu_seconds_total; empty without /proc)
    thread_cpu_ms_per_pair: dict[str, float]
    matchers: int
    # mean ms per pair of each stage of the end-to-end time (see VerdictTap)
    stages_ms: dict[str, float | None] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(float(x), digits)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 2) if present else None


class PipelineBench:
    """Matcher processes on ``broker``; :meth:`run` measures one load point."""

    def __init__(self, broker: EmbeddedBroker, pool: Callable[[], RecordPool], *, model: Path, log_dir: Path,
                 partitions: int = 4, matcher_defaults: dict | None = None):
        self.broker = broker
        self.pool = pool  # called when first needed: the pairs may still be being built
        self.model = model
        self.log_dir = Path(log_dir)
        self.partitions = partitions
        self.matchers: list[MatcherProcess] = []
        self.flags: dict = {}
        self.matcher_defaults = dict(matcher_defaults or {})  # serve's options under every start's flags
        # exactly-once verdicts are read as downstream consumers must read them
        self._read_committed = self.matcher_defaults.get("processing_guarantee") == "exactly-once"
        self._started = 0
        self._generation = 0
        self._topics_used = False  # a measured run or drain already wrote to the current topics
        self.input_topic = wire.TOPIC_PAIRS
        # The load generator shares the CPUs with what it measures, so it uses the lighter client:
        # at 910 pairs/s librdkafka's producer took 0.16-0.22 ms of CPU per pair, kafka-python's
        # 0.53-0.63 (docs/benchmarks.md). The matchers' client is chosen separately.
        self.producer = LibrdkafkaProducer(broker.connection)
        self.tap = VerdictTap(broker.connection, read_committed=self._read_committed)  # replaced at every start_matchers

    # ------------------------------------------------------------------ matchers

    def start_matchers(self, count: int = 1, ready_timeout_s: float = 240.0, **flags) -> None:
        """(Re)start ``count`` matchers in one group with ``flags`` (serve's options), wait until
        all are ready, then warm them up with a short trickle.

        Every start gets topics and a consumer group of its own, so a configuration never inherits
        a backlog, committed offsets or group members from the one before it."""
        self.stop_matchers()
        self.flags = flags
        self._topics_used = False
        self._generation += 1
        name = f"bench-{self._generation}"
        self.input_topic, output_topic = f"{name}.pairs.in", f"{name}.matches.out"
        partitions = self.partitions
        ensure_topics(self.broker.connection, {self.input_topic: partitions, output_topic: partitions})
        self.tap.close()
        self.tap = VerdictTap(self.broker.connection, output_topic, read_committed=self._read_committed)
        self._group = f"digitmatch-{name}"
        self._output_topic = output_topic
        self.add_matchers(count, ready_timeout_s)

    def add_matchers(self, count: int = 1, ready_timeout_s: float = 240.0) -> None:
        """Start ``count`` more matchers in the running ones' group (same topics and flags), wait
        until every matcher owns partitions, then warm up."""
        for _ in range(count):
            self._started += 1
            m = MatcherProcess(
                self.broker.bootstrap, log_path=self.log_dir / f"matcher-{self._started}.log", model=self.model,
                group_id=self._group, input_topic=self.input_topic, output_topic=self._output_topic,
                session_timeout_ms=6000, heartbeat_interval_ms=1000, **{**self.matcher_defaults, **self.flags},
            ).start()
            self.matchers.append(m)
        for m in self.matchers:
            m.wait_ready(ready_timeout_s)
        self._wait_balanced(ready_timeout_s)
        self._measure(200, 1.0, warmup_s=0)  # first batches of new shapes, connections, group settled

    def _fresh_topics(self) -> None:
        """Restart the matchers (as many, same flags) on empty topics of their own if a measured run
        already wrote to the current ones. The embedded broker's CPU per record grows with what a
        topic holds (a light run cost it 2.9-3.1 s of CPU on empty topics, 4.5-6.3 s on topics
        earlier runs had filled; docs/benchmarks.md): without this, each run would be measured
        against what the runs before it left behind."""
        if self._topics_used:
            self.start_matchers(len(self.matchers) or 1, **self.flags)
        self._topics_used = True

    def _wait_balanced(self, timeout_s: float) -> None:
        """With several matchers: until each one owns partitions (the group has rebalanced)."""
        deadline = time.monotonic() + timeout_s
        while len(self.matchers) > 1 and time.monotonic() < deadline:
            owned = [scrape(m.metrics_url).get("digitmatch_partitions_assigned") for m in self.matchers]
            if all(owned):
                return
            time.sleep(0.5)

    def stop_matchers(self) -> None:
        """SIGTERM all at once (each drains and leaves the group), then wait for every one."""
        stoppers = [threading.Thread(target=m.stop, kwargs={"timeout_s": 30}) for m in self.matchers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.matchers = []

    # ------------------------------------------------------------------ one load point

    def run(self, rate: float, seconds: float, warmup_s: float | None = None, drain_timeout_s: float = 120.0) -> LoadPoint:
        """One load point, on empty topics; the first ``warmup_s`` of the window (default: 1 s, at
        most a quarter of it) count neither for the throughput nor for the latency quantiles."""
        if not self.matchers:
            raise RuntimeError("start_matchers() first")
        self._fresh_topics()
        return self._measure(rate, seconds, warmup_s, drain_timeout_s)

    def _measure(self, rate: float, seconds: float, warmup_s: float | None = None,
                 drain_timeout_s: float = 120.0) -> LoadPoint:
        if warmup_s is None:
            warmup_s = min(1.0, seconds / 4)
        pool = self.pool()
        n = max(2, int(round(rate * seconds)))
        run_id = new_run_id()
        before = [scrape(m.metrics_url) for m in self.matchers]
        cpu_before = [cpu_seconds(m.pid) for m in self.matchers]
        t0, t0_ms = time.monotonic(), wire.now_ms()
        sent = send_open_loop(self.producer, self.input_topic, pool, run_id, n, rate)
        elapsed, t1_ms = time.monotonic() - t0, wire.now_ms()
        cpu_after = [cpu_seconds(m.pid) for m in self.matchers]
        deltas = [scrape(m.metrics_url) - b for m, b in zip(self.matchers, before)]
        verdicts = self.tap.collect(sent.pair_ids, timeout_s=drain_timeout_s + seconds)
        if len(verdicts) < n:
            log.warning("run %s: %d of %d verdicts arrived", run_id, len(verdicts), n)

        window_start = sent.started_ms + warmup_s * 1000
        window_s = max(1e-3, (sent.ended_ms - window_start) / 1000)
        decided = sum(window_start <= v.decided_ms <= sent.ended_ms for v in verdicts.values())
        steady_verdicts = [v for v in verdicts.values()
                           if v.end_to_end_ms is not None and (v.produced_ms or 0) >= window_start]
        if not steady_verdicts:  # a run shorter than its warm-up: take every pair
            steady_verdicts = [v for v in verdicts.values() if v.end_to_end_ms is not None]
        steady = [v.end_to_end_ms for v in steady_verdicts]
        stages = {name: _mean([getattr(v, f"{name}_ms") for v in steady_verdicts])
                  for name in ("transit", "join_wait", "queue_wait", "inference")}
        pct = np.percentile(steady, [50, 95, 99]) if steady else [None] * 3
        batch_sizes: dict[str, int] = {}
        flushes: dict[str, int] = {}
        batches = pairs_batched = infer_s = infer_n = 0.0
        for d in deltas:
            for k, c in histogram_counts(d, "digitmatch_batch_size").items():
                batch_sizes[k] = batch_sizes.get(k, 0) + c
            for k, c in labelled(d, "digitmatch_batch_flushes_total", "reason").items():
                flushes[k] = flushes.get(k, 0) + c
            batches += d.get("digitmatch_batch_size_count")
            pairs_batched += d.get("digitmatch_batch_size_sum")
            infer_s += d.get("digitmatch_inference_seconds_sum")
            infer_n += d.get("digitmatch_inference_seconds_count")
        cpu = [_round(100 * (b - a) / elapsed) if a is not None and b is not None else None
               for a, b in zip(cpu_before, cpu_after)]
        in_cpu_window = sum(t0_ms <= v.decided_ms <= t1_ms for v in verdicts.values())
        cpu_per_pair = (_round(10 * sum(cpu) * elapsed / in_cpu_window, 3)
                        if in_cpu_window and None not in cpu else None)
        return LoadPoint(
            offered_pairs_per_s=_round(rate),
            sent_pairs_per_s=_round(sent.sent_pairs_per_s),
            achieved_pairs_per_s=_round(decided / window_s),
            pairs=n,
            verdicts=len(verdicts),
            unpaired=sum(v.outcome == "unpaired" for v in verdicts.values()),
            window_s=round(window_s, 3),
            p50_ms=_round(pct[0]),
            p95_ms=_round(pct[1]),
            p99_ms=_round(pct[2]),
            max_ms=_round(max(steady)) if steady else None,
            mean_batch_size=_round(pairs_batched / batches) if batches else None,
            batch_sizes=batch_sizes,
            flushes=flushes,
            inference_ms_mean=_round(1000 * infer_s / infer_n, 2) if infer_n else None,
            matcher_cpu_percent=cpu,
            matcher_cpu_ms_per_pair=cpu_per_pair,
            thread_cpu_ms_per_pair=thread_ms_per_pair(deltas, in_cpu_window),
            matchers=len(self.matchers),
            stages_ms=stages,
            config=dict(self.flags),
        )

    # ------------------------------------------------------------------ capacity without the producer

    def drain(self, n_pairs: int, timeout_s: float = 180.0) -> dict:
        """The matchers' own capacity: they are frozen (SIGSTOP) while ``n_pairs`` are written as fast
        as the client goes, then resumed (SIGCONT) and timed until the last verdict is decided. No
        load generator competes for the CPU while they drain. (The freeze lasts about a second,
        far below the group's session timeout.) On empty topics, like every run."""
        self._fresh_topics()
        pool = self.pool()
        run_id = new_run_id()
        before = [scrape(m.metrics_url) for m in self.matchers]
        for m in self.matchers:
            os.kill(m.pid, signal.SIGSTOP)
        try:
            sent = send_open_loop(self.producer, self.input_topic, pool, run_id, n_pairs, rate=0)
        finally:
            cpu_before = [cpu_seconds(m.pid) for m in self.matchers]
            resumed_ms = wire.now_ms()
            for m in self.matchers:
                os.kill(m.pid, signal.SIGCONT)
        verdicts = self.tap.collect(sent.pair_ids, timeout_s)
        cpu_after = [cpu_seconds(m.pid) for m in self.matchers]
        deltas = [scrape(m.metrics_url) - b for m, b in zip(self.matchers, before)]
        cpu = [_round(b - a, 2) if a is not None and b is not None else None for a, b in zip(cpu_before, cpu_after)]
        last_ms = max((v.decided_ms for v in verdicts.values()), default=resumed_ms)
        seconds = max(1e-3, (last_ms - resumed_ms) / 1000)
        return {
            "pairs": n_pairs,
            "verdicts": len(verdicts),
            "seconds": round(seconds, 3),
            "pairs_per_s": _round(len(verdicts) / seconds),
            "matcher_cpu_seconds": cpu,
            "matcher_cpu_ms_per_pair": round(1000 * sum(cpu) / len(verdicts), 3) if verdicts and None not in cpu else None,
            "thread_cpu_ms_per_pair": thread_ms_per_pair(deltas, len(verdicts)),
            "matchers": len(self.matchers),
            "config": dict(self.flags),
        }

    def drain_with_model(self, model: Path, n_pairs: int, **flags) -> dict:
        """:meth:`drain` by one fresh matcher serving ``model`` instead of the bench's own (``bench
        ceiling``'s cheap model); the matchers are stopped afterwards, so the next run starts its own
        on the bench's model."""
        own = self.model
        self.model = Path(model)
        try:
            self.start_matchers(1, **flags)
            return self.drain(n_pairs) | {"model_path": str(model)}
        finally:
            self.stop_matchers()
            self.model = own

    def close(self) -> None:
        try:
            self.stop_matchers()
        finally:
            self.tap.close()
            self.producer.close()


def thread_ms_per_pair(deltas: list[Snapshot], pairs: int) -> dict[str, float]:
    """CPU ms per pair of each thread role of the matchers (``digitmatch_thread_cpu_seconds_total``
    over a run), all matchers together."""
    seconds: dict[str, float] = {}
    for delta in deltas:
        for role, used in labelled_values(delta, "digitmatch_thread_cpu_seconds_total", "thread").items():
            seconds[role] = seconds.get(role, 0.0) + used
    return {role: round(1000 * used / pairs, 3) for role, used in seconds.items()} if pairs else {}


def saturation_and_knee(points: list[LoadPoint]) -> dict:
    """Saturation: the highest achieved rate. Knee: the highest offered rate up to which the
    pipeline keeps up (achieved >= 95 % of what was sent) and p99 stays within twice the p99 of
    the lightest load; None when even the lightest load point is past it, or with one point."""
    ordered = sorted(points, key=lambda p: p.offered_pairs_per_s)
    best = max(points, key=lambda p: p.achieved_pairs_per_s)
    base_p99 = max(ordered[0].p99_ms or 0.0, 1.0)
    knee = None
    if len(ordered) > 1:
        for p in ordered:
            keeps_up = p.achieved_pairs_per_s >= 0.95 * p.sent_pairs_per_s
            if not keeps_up or (p.p99_ms or 0.0) > 2 * base_p99:
                break
            knee = p
    return {
        "saturation_pairs_per_s": best.achieved_pairs_per_s,
        "saturation_offered_pairs_per_s": best.offered_pairs_per_s,
        "knee_offered_pairs_per_s": None if knee is None else knee.offered_pairs_per_s,
        "knee_p99_ms": None if knee is None else knee.p99_ms,
    }
