"""publish_pairs and ``digitmatch produce`` against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from digitmatch import wire
from digitmatch.dev.broker import free_port
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.reader import open_reader
from digitmatch.producer.load import PairSet, publish_pairs
from digitmatch.producer.producer import PairProducer

pytestmark = pytest.mark.slow


def synthetic_pairs(n: int, run_id: str, seed: int = 0) -> PairSet:
    rng = np.random.default_rng(seed)
    spoken = rng.integers(0, 10, n)
    written = np.where(np.arange(n) % 2 == 0, spoken, (spoken + 3) % 10)
    return PairSet(
        pair_ids=[f"{run_id}-{i}" for i in range(n)],
        mfcc=[rng.normal(size=(int(rng.integers(5, 93)), 13)).astype(np.float32) for _ in range(n)],
        images=rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        spoken_digits=spoken,
        written_digits=written,
        run_id=run_id,
    )


def read_halves(conn, topic, n, timeout_s=20):
    """{pair_id: [(partition, offset, DecodedHalf), ...]} for ``n`` records of ``topic``."""
    consumer = open_reader(conn, topic)
    found, count = defaultdict(list), 0
    deadline = time.monotonic() + timeout_s
    try:
        while count < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    found[r.key.decode()].append((r.partition, r.offset, wire.decode_half(r.key, r.value, r.headers)))
                    count += 1
    finally:
        consumer.close()
    return found


def test_publish_sends_both_halves_with_ground_truth_on_schedule(broker):
    topic = "load-1.pairs.in"
    ensure_topics(broker.connection, {topic: 4})
    pairs = synthetic_pairs(40, "sched")
    rate = 200.0
    with PairProducer(broker.connection, topic) as producer:
        report = publish_pairs(pairs, producer, rate=rate, seed=3, progress=False)
    assert (report.pairs, report.halves, report.partner_missing, report.failed) == (40, 80, 0, 0)
    found = read_halves(broker.connection, topic, 80)
    assert set(found) == set(pairs.pair_ids)
    first_halves = set()
    for i, pid in enumerate(pairs.pair_ids):
        records = found[pid]
        assert len(records) == 2 and records[0][0] == records[1][0]  # one partition per pair
        halves = {h.half: h for _, _, h in records}
        assert halves[wire.Half.SPOKEN].digit == pairs.spoken_digits[i]
        assert halves[wire.Half.WRITTEN].digit == pairs.written_digits[i]
        np.testing.assert_array_equal(halves[wire.Half.SPOKEN].array, pairs.mfcc[i])
        np.testing.assert_array_equal(halves[wire.Half.WRITTEN].array, pairs.images[i])
        first = min(records, key=lambda r: r[1])[2]
        first_halves.add(first.half)
        # Open-loop schedule: pair i is never sent before i / rate (ms clock, 2 ms of rounding).
        assert first.produced_ms >= report.started_ms + 1000 * i / rate - 2
    assert first_halves == {wire.Half.SPOKEN, wire.Half.WRITTEN}  # both orders occur


def test_missing_partners_and_skew(broker):
    topic = "load-2.pairs.in"
    ensure_topics(broker.connection, {topic: 2})
    pairs = synthetic_pairs(50, "skew")
    with PairProducer(broker.connection, topic) as producer:
        report = publish_pairs(pairs, producer, skew_ms=150, partner_missing_ratio=0.2, seed=1, progress=False)
    assert (report.pairs, report.partner_missing, report.halves) == (50, 10, 90)
    found = read_halves(broker.connection, topic, 90)
    assert sorted(len(r) for r in found.values()) == [1] * 10 + [2] * 40
    delays = []
    for records in found.values():
        if len(records) == 2:
            (_, o1, h1), (_, o2, h2) = sorted(records, key=lambda r: r[1])
            delays.append(h2.produced_ms - h1.produced_ms)
    assert min(delays) >= 0 and max(delays) > 0


def test_stop_event_ends_publishing_early(broker):
    import threading

    topic = "load-3.pairs.in"
    ensure_topics(broker.connection, {topic: 1})
    stop = threading.Event()
    stop.set()
    with PairProducer(broker.connection, topic) as producer:
        report = publish_pairs(synthetic_pairs(5, "stopped"), producer, rate=1, stop=stop, progress=False)
    assert (report.pairs, report.halves) == (0, 0)


def produce(*args, timeout=240):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "digitmatch.cli", "produce", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_produce_command_publishes_heldout_pairs(broker):
    topic = "load-4.pairs.in"
    ensure_topics(broker.connection, {topic: 4})
    done = produce("--bootstrap-servers", broker.bootstrap, "--topic", topic, "--pairs", "30", "--rate", "150",
                   "--match-ratio", "0.4", "--run-id", "cli1", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["pairs"] == 30 and summary["halves"] == 60 and summary["failed"] == 0
    assert summary["run_id"] == "cli1" and summary["source"]
    assert summary["pairs_per_s"] > 0
    found = read_halves(broker.connection, topic, 60)
    assert set(found) == {f"cli1-{i}" for i in range(30)}
    same = 0
    for records in found.values():
        halves = {h.half: h for _, _, h in records}
        assert set(halves) == {wire.Half.SPOKEN, wire.Half.WRITTEN}
        assert 1 <= halves[wire.Half.SPOKEN].array.shape[0] <= 93
        same += halves[wire.Half.SPOKEN].digit == halves[wire.Half.WRITTEN].digit
    assert same == 12  # exactly round(30 * 0.4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pairs", "0"], "--pairs"),
        (["--match-ratio", "1.5"], "--match-ratio"),
        (["--run-id", "no spaces"], "--run-id"),
        (["--bootstrap-servers", "nonsense"], "host:port"),
        (["--bootstrap-servers", "127.0.0.1:{port}", "--wait-for-broker-s", "0.5"], "no Kafka broker answered"),
    ],
)
def test_produce_command_errors_are_one_line(args, message):
    args = [a.format(port=free_port()) for a in args]
    done = produce(*args)
    assert done.returncode in (1, 2) and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
