"""What the matcher's poll loop needs from its Kafka client (librdkafka), against a real Tansu broker."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer
from digitmatch.kafka.client import Partition

from digitmatch.kafka import librdkafka
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.clients import new_consumer

pytestmark = pytest.mark.slow

PARTITIONS = 4
BACKLOG = 2500  # records per partition
POLL = 200
VALUE = b"\x00" * 3000  # about a spoken half


def _backlog(broker, topic: str) -> list[Partition]:
    ensure_topics(broker.connection, {topic: PARTITIONS})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5, batch_size=256 * 1024)
    for i in range(PARTITIONS * BACKLOG):
        producer.send(topic, key=b"%d" % i, value=VALUE, partition=i % PARTITIONS)
    producer.flush()
    producer.close()
    return [Partition(topic, p) for p in range(PARTITIONS)]


class NoCallbacks:
    def on_assigned(self, partitions):
        pass

    def on_revoked(self, partitions):
        pass

    def on_lost(self, partitions):
        pass


def _consumer(broker, topic: str):
    return new_consumer(broker.connection, f"g-{topic}", session_timeout_ms=6000, heartbeat_interval_ms=1000,
                        fetch_max_wait_ms=20)


@pytest.mark.parametrize("soft_pause_s", [
    None,  # pauses shorter than SOFT_PAUSE_S: records stay in librdkafka's queue
    0.0,  # every pause becomes librdkafka's own: prefetched records are held back
], ids=["short-pauses", "long-pauses"])
def test_pausing_at_every_poll_keeps_what_was_fetched(broker, monkeypatch, soft_pause_s):
    """The matcher pauses every partition when its inference queue is full and resumes them when
    a batch is scored, which under a slow model is after every poll. Records must keep coming in
    order, none while paused, and a resume must not throw away what was fetched: librdkafka's own
    pause does, and fetching it again after every resume made a poll come back empty 900 times
    here, slowed the drain five-fold and let one partition wait past the matcher's join TTL."""
    if soft_pause_s is not None:
        monkeypatch.setattr(librdkafka, "SOFT_PAUSE_S", soft_pause_s)
    topic = f"pause-all-{soft_pause_s}"
    tps = _backlog(broker, topic)
    consumer = _consumer(broker, topic)
    got = dict.fromkeys(range(PARTITIONS), 0)
    polls = empty = 0  # polls that returned records, and polls after the first record that returned none
    try:
        consumer.subscribe([topic], NoCallbacks())
        deadline = time.monotonic() + 120
        while sum(got.values()) < PARTITIONS * BACKLOG and time.monotonic() < deadline:
            records = consumer.poll(0.05, max_records=POLL)
            if not records:
                empty += sum(got.values()) > 0
                continue
            polls += 1
            assert sum(map(len, records.values())) <= POLL
            for tp, batch in records.items():
                assert [r.offset for r in batch] == list(range(got[tp.partition], got[tp.partition] + len(batch)))
                got[tp.partition] += len(batch)
            consumer.pause(tps)  # the queue is full: a batch is scored while the loop polls on
            for _ in range(3):
                assert consumer.poll(0.01, max_records=POLL) == {}, "records of paused partitions"
            consumer.resume(tps)
    finally:
        consumer.close()
    assert got == dict.fromkeys(range(PARTITIONS), BACKLOG)
    if soft_pause_s is None:  # a long pause may fetch again what did not fit in what was held back
        assert empty <= polls // 2, (empty, polls)


def test_records_of_a_paused_partition_come_back_in_order_after_resume(broker):
    """With some partitions paused and others consumed, librdkafka's records of the paused ones
    are held back, not dropped, and continue where they stopped."""
    topic = "pause-some"
    tps = _backlog(broker, topic)
    consumer = _consumer(broker, topic)
    got = dict.fromkeys(range(PARTITIONS), 0)
    try:
        consumer.subscribe([topic], NoCallbacks())
        deadline = time.monotonic() + 120
        while sum(got.values()) < PARTITIONS * BACKLOG and time.monotonic() < deadline:
            if got[0] > 0 and got[1] < BACKLOG:
                consumer.pause([tps[0]])  # partition 0 waits until partition 1 is done
            else:
                consumer.resume([tps[0]])
            for tp, batch in consumer.poll(0.05, max_records=POLL).items():
                assert tp.partition != 0 or tp not in consumer.paused()
                assert [r.offset for r in batch] == list(range(got[tp.partition], got[tp.partition] + len(batch)))
                got[tp.partition] += len(batch)
            for tp in tps:  # the next record poll returns, held back or not
                assert got[tp.partition] == 0 or consumer.position(tp) == got[tp.partition]
    finally:
        consumer.close()
    assert got == dict.fromkeys(range(PARTITIONS), BACKLOG)
