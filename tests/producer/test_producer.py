"""SpokenProducer / WrittenProducer against a real broker: keys, partitions, headers, payloads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from kafka import KafkaProducer

from digitmatch import wire
from digitmatch.features import FeatureError, mfcc
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.reader import open_reader
from digitmatch.producer.producer import PairProducer, SpokenProducer, WrittenProducer

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(1)


def consume(conn, topic, n, timeout_s=20):
    consumer = open_reader(conn, topic)
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
    finally:
        consumer.close()
    return records


def test_both_halves_land_in_one_partition_keyed_by_pair_id(broker):
    topic = "producer-1.pairs.in"
    ensure_topics(broker.connection, {topic: 4})
    t = np.arange(8000) / 8000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    frames = RNG.normal(size=(40, 13)).astype(np.float32)
    images = RNG.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    before = time.time_ns() // 1_000_000
    with PairProducer(broker.connection, topic) as producer:
        futures = []
        for i in range(12):
            pid = f"pp-{i}"
            if i % 2:
                futures.append(producer.spoken.send(pid, audio, sample_rate=8000, digit=i % 10))
            else:
                futures.append(producer.spoken.send(pid, frames, digit=i % 10))
            futures.append(producer.written.send(pid, images[i], digit=(i + 1) % 10))
        metadata = [f.get(timeout=10) for f in futures]
    # Each pair's two halves went to the same partition, and the pairs spread over several.
    by_pair = [{metadata[2 * i].partition, metadata[2 * i + 1].partition} for i in range(12)]
    assert all(len(p) == 1 for p in by_pair) and len(set.union(*by_pair)) > 1

    records = consume(broker.connection, topic, 24)
    assert len(records) == 24
    halves = {}
    for record in records:
        half = wire.decode_half(record.key, record.value, record.headers)
        assert record.key == half.pair_id.encode()
        assert before <= half.produced_ms <= time.time_ns() // 1_000_000
        halves[(half.pair_id, half.half)] = (record.partition, half)
    for i in range(12):
        p_spoken, spoken = halves[(f"pp-{i}", wire.Half.SPOKEN)]
        p_written, written = halves[(f"pp-{i}", wire.Half.WRITTEN)]
        assert p_spoken == p_written
        assert (spoken.digit, written.digit) == (i % 10, (i + 1) % 10)
        np.testing.assert_array_equal(written.array, images[i])
        expected = mfcc(audio, 8000) if i % 2 else frames
        np.testing.assert_allclose(spoken.array, expected, rtol=1e-6, atol=1e-6)


def test_a_recording_is_sent_raw_as_pcm16(broker):
    topic = "producer-pcm.pairs.in"
    ensure_topics(broker.connection, {topic: 2})
    samples = RNG.integers(-9000, 9000, size=7000, dtype=np.int16)
    with PairProducer(broker.connection, topic) as producer:
        producer.spoken.send_pcm16("pcm-1", samples, 16000, digit=4).get(timeout=10)
        with pytest.raises(wire.InvalidMessage) as caught:
            producer.spoken.send_pcm16("pcm-2", samples, 12345)
        assert caught.value.reason is wire.Reason.BAD_HEADER
    [record] = consume(broker.connection, topic, 1)
    half = wire.decode_half(record.key, record.value, record.headers)
    assert (half.pair_id, half.encoding, half.sample_rate, half.digit) == ("pcm-1", wire.Encoding.PCM16, 16000, 4)
    assert np.array_equal(half.array, samples) and half.produced_ms is not None


def test_halves_share_a_caller_owned_producer(broker):
    topic = "producer-2.pairs.in"
    ensure_topics(broker.connection, {topic: 2})
    kafka = KafkaProducer(**broker.connection.producer_kwargs())
    spoken, written = SpokenProducer(kafka, topic), WrittenProducer(kafka, topic)
    spoken.send("shared-1", RNG.normal(size=(5, 13)), produced_ms=42).get(timeout=10)
    written.send("shared-1", np.zeros((28, 28), np.uint8)).get(timeout=10)
    spoken.close()  # does not close a producer it was handed
    written.send("shared-2", np.zeros((28, 28), np.uint8)).get(timeout=10)
    kafka.close()
    records = consume(broker.connection, topic, 3)
    assert sorted(r.key for r in records) == [b"shared-1", b"shared-1", b"shared-2"]
    spoken_record = next(r for r in records if (wire.H_HALF, b"spoken") in r.headers)
    assert (wire.H_PRODUCED_MS, b"42") in spoken_record.headers
    assert wire.H_DIGIT not in dict(spoken_record.headers)


def test_bad_input_is_refused_before_anything_is_sent(broker):
    topic = "producer-3.pairs.in"
    ensure_topics(broker.connection, {topic: 1})
    with PairProducer(broker.connection, topic) as producer:
        with pytest.raises(ValueError, match="sample_rate"):
            producer.spoken.send("p", np.zeros(800, np.int16))
        with pytest.raises(ValueError, match="only meaningful"):
            producer.spoken.send("p", np.zeros((3, 13), np.float32), sample_rate=8000)
        with pytest.raises(FeatureError):
            producer.spoken.send("p", np.zeros(0, np.int16), sample_rate=8000)
        with pytest.raises(wire.InvalidMessage) as caught:
            producer.spoken.send("p", np.full((3, 13), np.nan, np.float32))
        assert caught.value.reason is wire.Reason.NON_FINITE
        with pytest.raises(wire.InvalidMessage):
            producer.written.send("p", np.zeros((28, 28), np.float32))
        with pytest.raises(wire.InvalidMessage):
            producer.written.send("not a valid id", np.zeros((28, 28), np.uint8))
        producer.written.send("sentinel", np.zeros((28, 28), np.uint8)).get(timeout=10)
    assert [r.key for r in consume(broker.connection, topic, 1, timeout_s=3)] == [b"sentinel"]
