"""Reading results back: the verdicts on ``matches.out`` and the dead letters on ``pairs.dlq``.

Used by the demo, the tests and the benchmarks. Both readers assign every partition of the topic
(no consumer group, nothing committed) and read from the earliest offset, so they see records
produced before they started. ``read_committed``: only what committed transactions hold, as a
downstream consumer of an exactly-once matcher must read (``--processing-guarantee exactly-once``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Iterable

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from digitmatch import wire
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import TopicSetupError


def open_reader(conn: KafkaConnection, topic: str, timeout_s: float = 30.0,
                read_committed: bool = False) -> KafkaConsumer:
    """A group-less consumer assigned to every partition of ``topic``, at the earliest offsets."""
    consumer = KafkaConsumer(**conn.consumer_kwargs(
        group_id=None, client_id=f"{conn.client_id}-reader",
        isolation_level="read_committed" if read_committed else "read_uncommitted"))
    deadline = time.monotonic() + timeout_s
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        if time.monotonic() > deadline:
            consumer.close()
            raise TopicSetupError(f"topic {topic!r} does not exist on {conn.bootstrap_servers}")
        time.sleep(0.1)
        partitions = consumer.partitions_for_topic(topic)
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    return consumer


@dataclass
class VerdictRead:
    """What :func:`read_verdicts` found. ``verdicts`` holds the first verdict of each pair ID."""

    verdicts: dict[str, wire.Verdict] = field(default_factory=dict)
    # When the reader saw each first verdict (wall clock, ms).
    seen_ms: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # further verdicts for an already-seen pair (at-least-once redelivery)
    invalid: int = 0  # records that are not a valid Verdict
    ignored: int = 0  # verdicts for pair IDs not asked for
    expected: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.verdicts) >= self.expected

    def outcomes(self) -> Counter:
        return Counter(v.outcome for v in self.verdicts.values())

    def end_to_end_ms(self) -> list[float]:
        """The matcher's produced -> decided latency of every verdict that has one."""
        return [v.latency_ms.end_to_end for v in self.verdicts.values() if v.latency_ms.end_to_end is not None]

    def last_seen_ms(self) -> int | None:
        return max(self.seen_ms.values()) if self.seen_ms else None


def read_verdicts(
    conn: KafkaConnection,
    expected: Collection[str] | int,
    *,
    topic: str = wire.TOPIC_MATCHES,
    timeout_s: float = 60.0,
    stop: threading.Event | None = None,
    read_committed: bool = False,
) -> VerdictRead:
    """Read ``topic`` from the earliest offset until a verdict has arrived for every expected pair
    ID (a collection), or for that many distinct pair IDs (an int), or ``timeout_s`` passed, or
    ``stop`` was set. Check ``.complete`` on the result."""
    wanted = None if isinstance(expected, int) else set(expected)
    result = VerdictRead(expected=expected if wanted is None else len(wanted))
    started = time.monotonic()
    deadline = started + timeout_s
    consumer = open_reader(conn, topic, timeout_s, read_committed)
    try:
        while not result.complete and time.monotonic() < deadline and not (stop and stop.is_set()):
            batches = consumer.poll(timeout_ms=200, max_records=10_000)
            now_ms = wire.now_ms()
            for records in batches.values():
                for record in records:
                    _take(result, record.value, wanted, now_ms)
    finally:
        consumer.close()
    result.seconds = time.monotonic() - started
    return result


def _take(result: VerdictRead, value: bytes | None, wanted: set[str] | None, now_ms: int) -> None:
    try:
        verdict = wire.Verdict.from_bytes(value or b"")
    except ValidationError:
        result.invalid += 1
        return
    pid = verdict.pair_id
    if wanted is not None and pid not in wanted:
        result.ignored += 1
    elif pid in result.verdicts:
        result.duplicates += 1
    else:
        result.verdicts[pid] = verdict
        result.seen_ms[pid] = now_ms


def read_dead_letters(
    conn: KafkaConnection,
    *,
    topic: str = wire.TOPIC_DLQ,
    idle_s: float = 1.0,
    timeout_s: float = 30.0,
    pair_prefix: str | None = None,
    read_committed: bool = False,
) -> Counter:
    """Count the dead letters on ``topic`` by ``dm-dlq-reason``: reads from the earliest offset
    until nothing new arrived for ``idle_s``. ``pair_prefix`` keeps only keys starting with it."""
    counts: Counter = Counter()
    consumer = open_reader(conn, topic, timeout_s, read_committed)
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() - last_new < idle_s and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                last_new = time.monotonic()
                for record in records:
                    key = (record.key or b"").decode("utf-8", "replace")
                    if pair_prefix is None or key.startswith(pair_prefix):
                        counts[_header(record.headers, wire.H_DLQ_REASON) or "unknown"] += 1
    finally:
        consumer.close()
    return counts


def _header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


def percentiles(values: Iterable[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (linear interpolation); None for no values."""
    data = np.asarray(list(values), dtype=float)
    return {f"p{q:g}": (round(float(np.percentile(data, q)), 3) if data.size else None) for q in qs}
