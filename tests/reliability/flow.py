"""Pairs flowing through a real broker while faults are injected, and the accounting of what
came out: every pair ID sent must get a verdict built from its own halves; re-emitted verdicts
(at-least-once after a crash or rebalance) must repeat the decision.

At load (:class:`FastSender`, :func:`measure_saturation`): the stream is sent with librdkafka, the
matcher's saturation is measured first on the same broker, in the same run, by draining a
backlog, and :func:`recovery` reads how long a fault held the verdicts up from their own
timestamps (``decided_ms``, ``latency_ms.end_to_end``), not from timed asserts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import confluent_kafka
import numpy as np
from matcher_harness import PairSpec, Sender, decision, make_pairs

from digitmatch import wire
from digitmatch.kafka.librdkafka import common_config

# Scores are rounded to 6 decimals, but a different batch composition changes float32 round-off
# (CPU kernels differ by batch size); the same tolerance as tests/consumer/test_matcher.py.
SCORE_TOLERANCE = 1e-5
# Consumer-group timing for matcher processes in tests (Tansu joins take ~session timeout / 2).
GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def serve_flags(topics, model, group: str, **flags) -> dict:
    """Flags of ``digitmatch serve`` (Python spelling) for the ``start_matcher`` fixture."""
    return {"group_id": group, "model": model, "input_topic": topics.input, "output_topic": topics.output,
            "dlq_topic": topics.dlq, "commit_interval_ms": 200, **GROUP_TIMING, **flags}


class PairStream:
    """Sends ``pairs`` on a thread at ``rate`` pairs per second (a list of ``(pairs, rate)`` phases
    for bursts). Each written half follows its spoken half ``lag`` pairs later, so at any moment
    about ``lag`` halves wait for their partner.

    With ``until`` (an event), the last phase goes on until the event is set and ``tail`` more
    pairs were sent (or ``pairs`` run out), so faults injected by the test happen mid-stream
    however slow the machine is. :attr:`sent_pairs` are the pairs actually sent.

    ``flush`` (the default) hands what was produced to the broker whenever the stream is ahead of
    its schedule (low latency at a trickle); at load it is off, and the producer's own linger
    batches the records (a flush waits for every acknowledgement, so the stream would stall with
    a partition whose leader is down)."""

    def __init__(self, sender: Sender, pairs: list[PairSpec], phases: list[tuple[int, float]], lag: int = 20,
                 until: threading.Event | None = None, tail: int = 0, flush: bool = True):
        if sum(n for n, _ in phases) > len(pairs) or (until is None and sum(n for n, _ in phases) != len(pairs)):
            raise ValueError("the phases must add up to the pairs")
        self.sender = sender
        self.pairs = pairs
        self.phases = phases
        self.lag = lag
        self.until = until
        self.tail = tail
        self.flush = flush
        self.sent = 0  # pairs whose both halves were handed to the producer
        self.sent_pairs: list[PairSpec] = []
        self.phase_of: dict[str, int] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pair-stream", daemon=True)

    def start(self) -> "PairStream":
        self._thread.start()
        return self

    def wait(self, timeout_s: float = 300) -> list[PairSpec]:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), "the pair stream did not finish"
        return self.sent_pairs

    def close(self) -> None:
        """End an ``until`` stream now (a test that failed half-way must not leave it sending)."""
        self.tail = 0
        if self.until is not None:
            self.until.set()
        self._thread.join(30)

    def wait_for_sent(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < count and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def _more(self, last: bool, n: int, count: int) -> bool:
        if not (last and self.until is not None):
            return n < count
        if self.until.is_set():
            if self.tail <= 0:
                return False
            self.tail -= 1
        return True

    def _run(self) -> None:
        try:
            i = 0
            for phase, (count, rate) in enumerate(self.phases):
                started, n = time.monotonic(), 0
                while i < len(self.pairs) and self._more(phase == len(self.phases) - 1, n, count):
                    pair = self.pairs[i]
                    self.phase_of[pair.pair_id] = phase
                    self.sender.send(pair.spoken())
                    if i >= self.lag:
                        self.sender.send(self.pairs[i - self.lag].written())
                        self.sent += 1
                    i += 1
                    n += 1
                    ahead = started + n / rate - time.monotonic()
                    if ahead > 0:
                        if self.flush:
                            self.sender.producer.flush()
                        time.sleep(ahead)
            self.sent_pairs = self.pairs[:i]
            for pair in self.pairs[max(0, i - self.lag):i]:
                self.sender.send(pair.written())
                self.sent += 1
            self.sender.producer.flush()
        except BaseException as exc:  # reported by wait()
            self.error = exc


@dataclass
class Tally:
    pairs_sent: int
    verdict_records: int
    pairs_decided: int
    lost: int
    re_emitted: int  # verdict records beyond the first of each pair
    pairs_decided_twice_or_more: int
    re_emitted_identical: int  # of those pairs, how many repeated the decision exactly
    wrong_halves: int  # verdicts whose ground truth is not the pair's own
    unpaired: int
    max_score_difference: float

    def as_figures(self) -> dict:
        return dict(vars(self))


def same_decision(verdicts: list[wire.Verdict]) -> bool:
    first = decision(verdicts[0])
    for v in verdicts[1:]:
        other = decision(v)
        if other[:1] + other[2:] != first[:1] + first[2:]:
            return False
        if (v.score is None) != (verdicts[0].score is None):
            return False
        if v.score is not None and abs(v.score - verdicts[0].score) > SCORE_TOLERANCE:
            return False
    return True


def tally(pairs: list[PairSpec], verdicts: dict[str, list[wire.Verdict]]) -> Tally:
    mine = {p.pair_id for p in pairs}
    records = sum(len(v) for pid, v in verdicts.items() if pid in mine)
    decided = [p for p in pairs if verdicts.get(p.pair_id)]
    repeated = [verdicts[p.pair_id] for p in decided if len(verdicts[p.pair_id]) > 1]
    wrong = sum(
        1 for p in decided for v in verdicts[p.pair_id]
        if v.truth is None or (v.truth.spoken, v.truth.written) != (p.spoken_digit, p.written_digit)
    )
    scores = [[v.score for v in vs if v.score is not None] for vs in repeated]
    return Tally(
        pairs_sent=len(pairs),
        verdict_records=records,
        pairs_decided=len(decided),
        lost=len(pairs) - len(decided),
        re_emitted=records - len(decided),
        pairs_decided_twice_or_more=len(repeated),
        re_emitted_identical=sum(same_decision(vs) for vs in repeated),
        wrong_halves=wrong,
        unpaired=sum(v.outcome == "unpaired" for p in decided for v in verdicts[p.pair_id]),
        max_score_difference=max((max(s) - min(s) for s in scores if s), default=0.0),
    )


def committed_records(conn, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on ``topic`` (records it will not read again)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**conn.consumer_kwargs(group))
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def latency_percentiles(verdicts: list[wire.Verdict]) -> dict[str, float | None]:
    """p50 / p99 / max of the verdicts' end-to-end latency (produced -> decided), in ms."""
    values = np.array([v.latency_ms.end_to_end for v in verdicts if v.latency_ms.end_to_end is not None])
    if values.size == 0:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1),
            "max_ms": round(float(values.max()), 1)}


# --------------------------------------------------------------------------- at load


class FastSender:
    """:class:`~matcher_harness.Sender`'s interface on librdkafka, for streams at load: the load
    generator shares the CPUs with the broker and the matchers, and kafka-python's producer costs
    about three times librdkafka's CPU per record (docs/benchmarks.md). Durable as the matcher's
    own producer (acks from all in-sync replicas, idempotent). Delivery failures are counted
    (:attr:`failed`: a pair whose half never reached the topic cannot be called lost), and the
    input partition of every key is kept (:attr:`partition_of`)."""

    def __init__(self, conn, topic: str):
        self.topic = topic
        self.failed: list[str] = []
        self.partition_of: dict[str, int] = {}
        self.producer = confluent_kafka.Producer(common_config(conn) | {
            "acks": "all", "enable.idempotence": True, "linger.ms": 5, "batch.size": 256 * 1024,
            "partitioner": "murmur2_random", "queue.buffering.max.kbytes": 256 * 1024,
        })

    def _report(self, error, message) -> None:
        if error is not None:
            self.failed.append(str(error))
        else:
            self.partition_of[message.key().decode()] = message.partition()

    def send(self, record, *, flush: bool = False) -> None:
        key, value, headers = record
        while True:
            try:
                self.producer.produce(self.topic, value, key=key, headers=headers, on_delivery=self._report)
                break
            except BufferError:  # the local queue is full (a partition without a leader): wait
                self.producer.poll(0.05)
        self.producer.poll(0)
        if flush:
            self.producer.flush()

    def send_all(self, records) -> None:
        for record in records:
            self.send(record)
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush(30)


def cycled_pairs(n: int, prefix: str, seed: int, distinct: int = 500) -> list[PairSpec]:
    """``n`` pairs with IDs ``<prefix>-<i>`` whose contents cycle through ``distinct`` generated
    ones (the join is by pair ID: tens of thousands of pairs need no more memory than 500)."""
    base = make_pairs(distinct, prefix, seed=seed)
    return [PairSpec(f"{prefix}-{i}", b.spoken_digit, b.written_digit, b.mfcc, b.image)
            for i, b in ((i, base[i % distinct]) for i in range(n))]


def measure_saturation(sender, reader, matchers: list, warmup: list[PairSpec], backlog: list[PairSpec],
                       timeout_s: float = 120) -> dict:
    """The matchers' own rate, on the broker and topics of the run (the method of ``digitmatch
    bench``'s drain): ``warmup`` pairs decided first (first batches of each shape, connections);
    then the matchers are frozen (SIGSTOP, for less than the group's session timeout) while
    ``backlog`` pairs are written as fast as the client goes, resumed (SIGCONT), and timed from
    the resume to the last of those verdicts. No load generator competes with them meanwhile."""
    sender.send_all([h for p in warmup for h in (p.spoken(), p.written())])
    wanted = {p.pair_id for p in warmup}
    reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=timeout_s)
    records = [h for p in backlog for h in (p.spoken(), p.written())]
    for m in matchers:
        os.kill(m.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        sender.send_all(records)
    finally:
        write_s = time.monotonic() - started
        resumed_ms = wire.now_ms()
        for m in matchers:
            os.kill(m.pid, signal.SIGCONT)
    wanted = {p.pair_id for p in backlog}
    got = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=timeout_s)
    decided = [min(v.timestamps.decided_ms for v in got.verdicts[p]) for p in wanted if p in got.verdicts]
    seconds = max(1e-3, (max(decided, default=resumed_ms) - resumed_ms) / 1000)
    return {"saturation_pairs_per_s": round(len(decided) / seconds, 1), "backlog_pairs": len(backlog),
            "backlog_verdicts": len(decided), "seconds_to_drain": round(seconds, 2),
            "seconds_frozen_while_written": round(write_s, 2)}


def recovery(verdicts: dict[str, list[wire.Verdict]], fault_ms: int, *, pairs: set[str] | None = None,
             partition_of: dict[str, int] | None = None, partitions: set[int] | None = None,
             until_ms: int | None = None) -> dict:
    """How long a fault at ``fault_ms`` (epoch ms) held the verdicts up, read from the verdicts'
    own timestamps (of ``pairs``, all by default; those decided before ``until_ms``, the next
    fault, when given):

    * ``longest_verdict_gap_s``: the longest time from the fault on without any verdict decided
      (the gap from the fault to the first verdict after it counts), and the same on ``partitions``
      of the input alone (the faulted broker's, found with ``partition_of``);
    * ``seconds_until_latency_normal``: from the fault until the last verdict whose end-to-end
      latency was above normal (twice the p99 of the verdicts decided before the fault, 1 s at
      least): after it, every verdict is on time again;
    * ``latency_p99_before_ms`` / ``latency_max_after_ms``."""
    firsts = [v for pid, vs in verdicts.items() if pairs is None or pid in pairs for v in vs]
    before = [v.latency_ms.end_to_end for v in firsts
              if v.timestamps.decided_ms < fault_ms and v.latency_ms.end_to_end is not None]
    p99 = float(np.percentile(before, 99)) if before else 0.0
    normal_ms = max(1000.0, 2 * p99)
    after = [v for v in firsts if fault_ms <= v.timestamps.decided_ms < (until_ms or 2**63)]

    def longest_gap(vs) -> float | None:
        times = sorted([fault_ms] + [v.timestamps.decided_ms for v in vs])
        return round(max((b - a for a, b in zip(times, times[1:])), default=0) / 1000, 2) if vs else None

    late = [v.timestamps.decided_ms for v in after if (v.latency_ms.end_to_end or 0) > normal_ms]
    out = {"longest_verdict_gap_s": longest_gap(after)}
    if partitions is not None and partition_of is not None:
        out["longest_verdict_gap_on_its_partitions_s"] = longest_gap(
            [v for v in after if partition_of.get(v.pair_id) in partitions])
    out |= {
        "latency_p99_before_ms": round(p99, 1),
        "seconds_until_latency_normal": round((max(late) - fault_ms) / 1000, 2) if late else 0.0,
        "latency_max_after_ms": round(max((v.latency_ms.end_to_end or 0 for v in after), default=0), 1),
    }
    return out


def verdicts_stopped_ms(verdicts: dict[str, list[wire.Verdict]], fault_ms: int) -> int:
    """When the verdicts stopped after a fault at ``fault_ms``: the last verdict decided before the
    longest gap from the fault on (``fault_ms`` itself when that gap starts at the fault)."""
    times = sorted({fault_ms} | {v.timestamps.decided_ms for vs in verdicts.values() for v in vs
                                 if v.timestamps.decided_ms >= fault_ms})
    return max(zip(times, times[1:]), key=lambda ab: ab[1] - ab[0], default=(fault_ms, fault_ms))[0]


def replay_reach_s(verdicts: dict[str, list[wire.Verdict]], stopped_ms: int) -> float:
    """How far before ``stopped_ms`` (when the verdicts stopped) the first decisions of the pairs
    decided again lie (seconds; 0 when none was decided again): a matcher resuming from its
    committed offsets decides again only what it decided in about the last commit interval."""
    firsts = [min(v.timestamps.decided_ms for v in vs) for vs in verdicts.values() if len(vs) > 1]
    return round(max(0, stopped_ms - min(firsts)) / 1000, 2) if firsts else 0.0


def kafka_errors(processes: list) -> dict[str, int]:
    """``digitmatch_kafka_errors_total`` per stage, summed over the matchers still running."""
    from matcher_harness import metric_value

    totals = {"consume": 0, "produce": 0, "commit": 0}
    for p in processes:
        if p.returncode is not None:
            continue
        status, text = p.get("/metrics")
        for stage in totals:
            totals[stage] += int((metric_value(text, "digitmatch_kafka_errors_total", {"stage": stage}) or 0)
                                 if status == 200 else 0)
    return totals
