"""Reading verdicts and dead letters back, against a real Tansu broker."""

from __future__ import annotations

import threading

import pytest
from kafka import KafkaProducer

from digitmatch import wire
from digitmatch.consumer.dead_letter import dead_letter_headers
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.reader import percentiles, read_dead_letters, read_verdicts

pytestmark = pytest.mark.slow


def verdict(pair_id: str, outcome: str = "match", e2e: float | None = 10.0) -> wire.Verdict:
    return wire.Verdict(
        pair_id=pair_id,
        outcome=outcome,
        score=0.9 if outcome != "unpaired" else None,
        threshold=0.5,
        model=wire.ModelRef(name="m", version=1),
        timestamps=wire.Timestamps(first_seen_ms=1, decided_ms=2),
        latency_ms=wire.Latencies(end_to_end=e2e),
    )


@pytest.fixture(scope="module")
def producer(broker):
    producer = KafkaProducer(**broker.connection.producer_kwargs())
    yield producer
    producer.close()


def send_verdicts(producer, topic, verdicts, garbage=0):
    for v in verdicts:
        producer.send(topic, key=wire.verdict_key(v.pair_id), value=v.to_bytes())
    for i in range(garbage):
        producer.send(topic, key=b"x", value=b"{not json" if i % 2 else b'{"pair_id": "x"}')
    producer.flush()


def test_reads_until_every_expected_pair_has_a_verdict(broker, producer):
    ensure_topics(broker.connection, {"verdicts-1": 3})
    sent = [verdict(f"r1-{i}", "match" if i % 3 else "no_match", e2e=float(i)) for i in range(30)]
    others = [verdict(f"other-{i}") for i in range(5)]
    send_verdicts(producer, "verdicts-1", sent + others + sent[:4], garbage=2)

    result = read_verdicts(broker.connection, [v.pair_id for v in sent], topic="verdicts-1", timeout_s=30)
    assert result.complete and set(result.verdicts) == {v.pair_id for v in sent}
    assert result.outcomes() == {"match": 20, "no_match": 10}
    assert sorted(result.end_to_end_ms()) == [float(i) for i in range(30)]
    assert set(result.seen_ms) == set(result.verdicts)
    # Whatever was read before the last expected verdict is counted, not mixed in.
    assert result.duplicates <= 4 and result.ignored <= 5 and result.invalid <= 2


def test_counts_distinct_pairs_and_stops_at_the_deadline(broker, producer):
    ensure_topics(broker.connection, {"verdicts-2": 2})
    send_verdicts(producer, "verdicts-2", [verdict(f"r2-{i}", "unpaired", None) for i in range(6)])
    assert read_verdicts(broker.connection, 6, topic="verdicts-2", timeout_s=30).complete

    short = read_verdicts(broker.connection, 7, topic="verdicts-2", timeout_s=1.5)
    assert not short.complete and len(short.verdicts) == 6 and short.end_to_end_ms() == []


def test_stop_event_ends_the_read(broker):
    ensure_topics(broker.connection, {"verdicts-3": 1})
    stop = threading.Event()
    stop.set()
    result = read_verdicts(broker.connection, 1, topic="verdicts-3", timeout_s=60, stop=stop)
    assert not result.complete and result.seconds < 60


def test_dead_letters_are_counted_by_reason(broker, producer):
    ensure_topics(broker.connection, {"dlq-1": 1})
    for i, reason in enumerate([wire.Reason.BAD_SHAPE] * 3 + [wire.Reason.MISSING_KEY]):
        headers = dead_letter_headers([], reason, "detail", f"pairs.in:0:{i}")
        producer.send("dlq-1", key=f"d1-{i}".encode(), value=b"raw", headers=headers)
    producer.send("dlq-1", key=b"elsewhere-1", value=b"raw", headers=[])
    producer.flush()
    counts = read_dead_letters(broker.connection, topic="dlq-1", idle_s=1.0, pair_prefix="d1-")
    assert counts == {"bad_shape": 3, "missing_key": 1}
    assert read_dead_letters(broker.connection, topic="dlq-1", idle_s=1.0)["unknown"] == 1


def test_percentiles():
    assert percentiles(range(1, 101)) == {"p50": 50.5, "p95": 95.05, "p99": 99.01}
    assert percentiles([], (50, 99.9)) == {"p50": None, "p99.9": None}
