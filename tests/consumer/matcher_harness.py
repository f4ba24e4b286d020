"""Helpers for the matcher's end-to-end tests: topics per test, halves in, verdicts and dead letters
out, metrics and endpoints."""

from __future__ import annotations

import itertools
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from digitmatch import wire
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.configuration import KafkaConnection

_counter = itertools.count()


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ (\S+): ", re.M)


def own_tracebacks(log: str) -> list[str]:
    """The records of a ``digitmatch serve`` log that carry a traceback, except those logged by
    kafka-python itself (it logs a connection the broker reset with its traceback, and carries on)."""
    records = list(_LOG_RECORD.finditer(log))
    head = log[: records[0].start() if records else len(log)]
    found = [head] if "Traceback" in head else []
    for record, following in zip(records, records[1:] + [None]):
        text = log[record.start(): following.start() if following else len(log)]
        if "Traceback" in text and not record.group(1).startswith("kafka."):
            found.append(text)
    return found


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str

    @classmethod
    def create(cls, conn: KafkaConnection, name: str, partitions: int = 4, *,
               input_configs: dict[str, str] | None = None) -> "Topics":
        """Fresh topics for one test, so tests sharing a broker never see each other's records
        (``input_configs``: topic settings of the input topic only)."""
        n = next(_counter)
        topics = cls(f"{name}-{n}.pairs.in", f"{name}-{n}.matches.out", f"{name}-{n}.pairs.dlq")
        ensure_topics(conn, {topics.input: partitions}, configs=input_configs)
        ensure_topics(conn, {topics.output: partitions, topics.dlq: 1})
        return topics


@dataclass
class PairSpec:
    pair_id: str
    spoken_digit: int
    written_digit: int
    mfcc: np.ndarray
    image: np.ndarray

    def spoken(self, produced_ms: int | None = None):
        return wire.encode_spoken(self.pair_id, self.mfcc, self.spoken_digit, produced_ms or wire.now_ms())

    def written(self, produced_ms: int | None = None):
        return wire.encode_written(self.pair_id, self.image, self.written_digit, produced_ms or wire.now_ms())


def make_pairs(n: int, prefix: str = "pair", seed: int = 0) -> list[PairSpec]:
    """``n`` pairs with distinct content; the digits differ from pair to pair, about half match."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        spoken = int(rng.integers(10))
        written = spoken if i % 2 == 0 else int((spoken + 1 + rng.integers(9)) % 10)
        frames = int(rng.integers(10, 90))
        pairs.append(
            PairSpec(
                f"{prefix}-{i}",
                spoken,
                written,
                rng.normal(size=(frames, 13)).astype(np.float32),
                rng.integers(0, 256, size=(28, 28), dtype=np.uint8),
            )
        )
    return pairs


class Sender:
    def __init__(self, conn: KafkaConnection, topic: str):
        self.topic = topic
        self.producer = KafkaProducer(**conn.producer_kwargs(linger_ms=2))

    def send(self, record, *, flush: bool = False, timestamp_ms: int | None = None) -> None:
        """``timestamp_ms``: the record's create time (default: now, the producer's)."""
        key, value, headers = record
        self.producer.send(self.topic, key=key, value=value, headers=headers, timestamp_ms=timestamp_ms)
        if flush:
            self.producer.flush()

    def send_all(self, records, *, timestamp_ms: int | None = None) -> None:
        for record in records:
            self.send(record, timestamp_ms=timestamp_ms)
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


@dataclass
class Collected:
    verdicts: dict[str, list[wire.Verdict]] = field(default_factory=dict)
    dead_letters: list = field(default_factory=list)  # (key, value, headers as dict)

    def dead_letter_reasons(self) -> dict[bytes | None, str]:
        return {key: headers[wire.H_DLQ_REASON].decode() for key, _, headers in self.dead_letters}


class Reader:
    """Reads a test's output and dead-letter topics from the beginning (no consumer group);
    ``read_committed``: as a downstream consumer of an exactly-once matcher reads them."""

    def __init__(self, conn: KafkaConnection, topics: Topics, read_committed: bool = False):
        self.topics = topics
        self.consumer = KafkaConsumer(**conn.consumer_kwargs(
            None, isolation_level="read_committed" if read_committed else "read_uncommitted"))
        parts = [
            TopicPartition(t, p)
            for t in (topics.output, topics.dlq)
            for p in self.consumer.partitions_for_topic(t) or ()
        ]
        self.consumer.assign(parts)  # no committed offsets: reads from the earliest
        self.seen = Collected()

    def poll(self, timeout_s: float) -> Collected:
        deadline = time.monotonic() + timeout_s
        while True:
            for tp, records in self.consumer.poll(timeout_ms=200).items():
                for r in records:
                    if tp.topic == self.topics.output:
                        v = wire.Verdict.from_bytes(r.value)
                        assert r.key == v.pair_id.encode()
                        self.seen.verdicts.setdefault(v.pair_id, []).append(v)
                    else:
                        self.seen.dead_letters.append((r.key, r.value, dict(r.headers)))
            if time.monotonic() >= deadline:
                return self.seen

    def wait_for(self, condition, timeout_s: float = 60) -> Collected:
        """Poll until ``condition(collected)`` holds; returns what was read either way."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.poll(0.2)):
                break
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def until(condition, timeout_s: float = 30.0, interval_s: float = 0.01) -> bool:
    """Wait until ``condition()`` holds; False if it did not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def decision(v: wire.Verdict) -> tuple:
    """The fields a re-emitted verdict must repeat exactly."""
    return (v.outcome, v.score, v.threshold, v.model.name, v.model.version, v.missing_half,
            None if v.predicted is None else (v.predicted.spoken, v.predicted.written))


# --------------------------------------------------------------------------- a real process


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample from Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return None


def readyz(port: int) -> tuple[int, dict]:
    status, body = http_get(port, "/readyz")
    return status, (json.loads(body) if body else {})
