"""The matcher's librdkafka clients (:mod:`digitmatch.kafka.librdkafka`), against a real Tansu broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from pydantic import SecretStr

from digitmatch.dev.broker import free_port
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.clients import new_consumer, new_producer, new_transactional_producer
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.client import ClientError, Committed, OutgoingRecord, Partition
from digitmatch.kafka.librdkafka import LibrdkafkaConsumer, common_config
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer

pytestmark = pytest.mark.slow

GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 20}


def test_connection_settings_map_to_librdkafka_names(tmp_path: Path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
    conn = KafkaConnection(bootstrap_servers="a:1,b:2", client_id="me", security_protocol="SASL_SSL",
                           sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password=SecretStr("p"),
                           ssl_cafile=ca, ssl_certfile=cert, ssl_keyfile=key, request_timeout_ms=1234)
    config = common_config(conn)
    assert {k: v for k, v in config.items() if k != "logger"} == {
        "bootstrap.servers": "a:1,b:2", "client.id": "me", "security.protocol": "SASL_SSL",
        "socket.timeout.ms": 1234, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p",
        "ssl.ca.location": str(ca), "ssl.certificate.location": str(cert), "ssl.key.location": str(key),
    }
    plain = common_config(KafkaConnection())
    assert not any(k.startswith(("sasl.", "ssl.")) for k in plain)


def test_no_broker_fails_at_once_like_kafka_python():
    conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ClientError, match="no broker reachable"):
        LibrdkafkaProducer(conn)
    with pytest.raises(ClientError, match="no broker reachable"):
        LibrdkafkaConsumer(conn, "g", **GROUP_TIMING)
    assert time.monotonic() - started < 10


def _deliver(producer, topic: str, records: list[tuple]) -> list:
    """Send (key, value, headers, partition) records; returns each one's outcome ("ok" or the
    ClientError) once all are in."""
    outcomes: list = [None] * len(records)
    done = threading.Semaphore(0)

    def report(i, error):
        outcomes[i] = error if error is not None else "ok"
        done.release()

    for i, (key, value, headers, partition) in enumerate(records):
        producer.produce(OutgoingRecord(topic, key, value, headers or [], partition),
                         lambda error, _offset, i=i: report(i, error))
    for _ in records:
        assert done.acquire(timeout=30)
    return outcomes


def test_round_trip_with_a_group_consumer(broker):
    topic = "rdk-roundtrip"
    ensure_topics(broker.connection, {topic: 2})
    producer = new_producer(broker.connection)
    records = [(f"k{i}".encode(), f"v{i}".encode(), [("dm-half", b"spoken")] if i % 2 else [], i % 2)
               for i in range(20)]
    try:
        outcomes = _deliver(producer, topic, records)
    finally:
        producer.close(10)
    assert all(not isinstance(o, Exception) for o in outcomes)

    assigned, revoked = [], []

    class Listener:
        def on_assigned(self, partitions):
            assigned.append(sorted(partitions))
            consumer.pause(partitions)  # the partitions are assigned already: the callback may pause them

        def on_revoked(self, partitions):
            revoked.append(sorted(partitions))

        def on_lost(self, partitions):
            revoked.append(sorted(partitions))

    consumer = new_consumer(broker.connection, "rdk-group", **GROUP_TIMING)
    try:
        consumer.subscribe([topic], Listener())
        tps = [Partition(topic, 0), Partition(topic, 1)]
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            assert consumer.poll(0.1) == {}
        assert assigned == [tps] and consumer.paused() == set(tps)
        time.sleep(0.5)
        assert consumer.poll(0.3) == {}, "paused partitions return nothing"
        consumer.resume(tps)
        got: dict = {}
        deadline = time.monotonic() + 30
        while sum(map(len, got.values())) < 20 and time.monotonic() < deadline:
            for tp, batch in consumer.poll(0.2, max_records=7).items():
                assert isinstance(tp, Partition) and len(batch) <= 7
                got.setdefault(tp, []).extend(batch)
        assert set(got) == set(tps)
        for tp, batch in got.items():
            assert [r.offset for r in batch] == list(range(10))
            for r in batch:
                i = int(r.key[1:])
                assert i % 2 == tp.partition and r.value == f"v{i}".encode()
                assert r.headers == ([("dm-half", b"spoken")] if i % 2 else [])
        assert consumer.lag(tps[0]) == 0 and consumer.position(tps[0]) == 10
        assert consumer.partitions(topic) == {0, 1}
        assert consumer.partitions("rdk-no-such-topic") is None

        consumer.commit({tps[0]: Committed(4, "v1:meta"), tps[1]: Committed(10)})
        assert consumer.committed(tps, 10)[tps[1]] == Committed(10, "")
        consumer.seek(tps[0], 8)
        again: list = []
        deadline = time.monotonic() + 10
        while len(again) < 2 and time.monotonic() < deadline:
            again += consumer.poll(0.2).get(tps[0], [])
        assert [r.offset for r in again] == [8, 9]
    finally:
        consumer.close()
    assert revoked == [tps]  # leaving the group revokes, and the callback hears it first
    check = KafkaConsumer(**broker.connection.consumer_kwargs("rdk-group"))
    try:
        assert [check.committed(TopicPartition(*tp)) for tp in tps] == [4, 10]
    finally:
        check.close()


def test_a_seek_right_after_the_assignment_is_not_lost(broker):
    """librdkafka refuses to seek a partition before its fetching has started ("Erroneous
    state"); the matcher seeks partitions as soon as they are assigned, which crashed it once."""
    topic = "rdk-early-seek"
    ensure_topics(broker.connection, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for i in range(20):
        producer.send(topic, key=b"k", value=b"%d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    sought = []

    class Listener:
        def on_assigned(self, partitions):
            for tp in partitions:
                consumer.seek(tp, 7)
                sought.append(tp)

        def on_revoked(self, partitions):
            pass

        def on_lost(self, partitions):
            pass

    consumer = new_consumer(broker.connection, "rdk-early-seek", **GROUP_TIMING)
    got: dict = {}
    try:
        consumer.subscribe([topic], Listener())
        deadline = time.monotonic() + 30
        while sum(map(len, got.values())) < 6 and time.monotonic() < deadline:
            for tp, batch in consumer.poll(0.1).items():
                got.setdefault(tp.partition, []).extend(r.offset for r in batch)
    finally:
        consumer.close()
    assert len(sought) == 2
    assert got == {0: [7, 8, 9], 1: [7, 8, 9]}


def test_keyed_records_land_where_kafka_python_puts_them(broker):
    """Both clients must agree on a key's partition (the Java client's murmur2): verdicts of one
    pair go to one partition whichever client a matcher runs on."""
    topic = "rdk-keys"
    ensure_topics(broker.connection, {topic: 7})
    keys = [f"pair-{i}".encode() for i in range(50)]
    producer = LibrdkafkaProducer(broker.connection)
    try:
        outcomes = _deliver(producer, topic, [(k, b"x", None, None) for k in keys])
    finally:
        producer.close(10)
    assert outcomes == ["ok"] * len(keys)
    reference = KafkaProducer(**broker.connection.producer_kwargs())
    try:
        placed = [reference.send(topic, key=k, value=b"y").get(timeout=30).partition for k in keys]
    finally:
        reference.close()
    check = KafkaConsumer(**broker.connection.consumer_kwargs(None))
    try:
        check.assign([TopicPartition(topic, p) for p in range(7)])
        landed: dict[bytes, set[int]] = {}
        deadline = time.monotonic() + 30
        while sum(map(len, landed.values())) < 2 * len(keys) and time.monotonic() < deadline:
            for tp, batch in check.poll(timeout_ms=200).items():
                for r in batch:
                    landed.setdefault(r.key, set()).add(tp.partition)
    finally:
        check.close()
    assert [landed[k] for k in keys] == [{p} for p in placed]  # each key in one partition, kafka-python's
    assert len(set(placed)) > 3  # the keys are spread, not all sent to one partition


def test_a_closed_producer_refuses_records_and_closing_twice_is_harmless(broker):
    producer = LibrdkafkaProducer(broker.connection)
    producer.close(5)
    producer.close(5)
    with pytest.raises(ClientError):
        producer.produce(OutgoingRecord("rdk-closed", None, b"x", []), lambda error, offset: None)


def test_a_record_that_cannot_be_queued_raises(broker):
    topic = "rdk-errors"
    ensure_topics(broker.connection, {topic: 1})
    producer = LibrdkafkaProducer(broker.connection)
    try:
        with pytest.raises(ClientError, match="Unknown partition"):
            producer.produce(OutgoingRecord(topic, None, b"v", [], 5), lambda error, offset: None)
    finally:
        producer.close(5)


def test_an_undelivered_record_reaches_the_errback(fresh_broker):
    """A broker gone: the delivery times out and the errback gets a ClientError (the matcher
    counts it and retries the record)."""
    topic = "rdk-outage"
    ensure_topics(fresh_broker.connection, {topic: 1})
    producer = LibrdkafkaProducer(fresh_broker.connection, **{"message.timeout.ms": 1000})
    try:
        fresh_broker.stop()
        (outcome,) = _deliver(producer, topic, [(b"k", b"v", None, None)])
    finally:
        producer.close(5)
    assert isinstance(outcome, ClientError)  # (timed out, or the transport failed first)


@pytest.mark.kafka_only
def test_a_transaction_commits_records_and_offsets_with_metadata_together(broker):
    """Apache Kafka: records of an aborted transaction stay invisible to a read_committed reader,
    those of a committed one appear with the offsets (and their metadata) sent with it."""
    source, sink = "rdk-tx-in", "rdk-tx-out"
    ensure_topics(broker.connection, {source: 1, sink: 1})
    consumer = new_consumer(broker.connection, "rdk-tx-group", read_committed=True, **GROUP_TIMING)
    producer = new_transactional_producer(broker.connection, "rdk-tx-1", transaction_timeout_ms=10_000)
    tp = Partition(source, 0)
    try:
        assigned = threading.Event()

        class Listener:
            def on_assigned(self, partitions):
                assigned.set()

            on_revoked = on_lost = lambda self, partitions: None

        consumer.subscribe([source], Listener())
        deadline = time.monotonic() + 30
        while not assigned.is_set() and time.monotonic() < deadline:
            consumer.poll(0.1)
        for value, commit in ((b"aborted", False), (b"committed", True)):
            producer.begin()
            producer.produce(OutgoingRecord(sink, b"k", value, []), lambda error, offset: None)
            producer.send_offsets({tp: Committed(7 if commit else 3, f"v1:{value.decode()}")},
                                  consumer.group_metadata(), 10)
            (producer.commit if commit else producer.abort)(10)
        assert consumer.committed([tp], 10) == {tp: Committed(7, "v1:committed")}
    finally:
        consumer.close()
        producer.close(10)
    reader = KafkaConsumer(**broker.connection.consumer_kwargs(None, isolation_level="read_committed"))
    try:
        reader.assign([TopicPartition(sink, 0)])
        seen = [r.value for batch in reader.poll(timeout_ms=5000).values() for r in batch]
    finally:
        reader.close()
    assert seen == [b"committed"]


@pytest.mark.kafka_only
def test_a_second_producer_of_the_same_transactional_id_fences_the_first(broker):
    # (The topic made here: without it, run alone, the commit timed out waiting for the topic
    # instead of meeting the fence.)
    ensure_topics(broker.connection, {"rdk-tx-fenced-out": 1})
    first = new_transactional_producer(broker.connection, "rdk-tx-fenced", transaction_timeout_ms=10_000)
    second = new_transactional_producer(broker.connection, "rdk-tx-fenced", transaction_timeout_ms=10_000)
    try:
        first.begin()
        first.produce(OutgoingRecord("rdk-tx-fenced-out", b"k", b"zombie", []), lambda error, offset: None)
        with pytest.raises(ClientError) as raised:
            first.commit(10)
        assert raised.value.fatal
        time.sleep(0.5)
        assert first._poller.is_alive()  # the fatal error did not end the delivery reports' thread
    finally:
        first.close(1)
        second.close(1)


def _deliver_many(producer, records: list[OutgoingRecord]) -> list:
    """``produce_many`` of ``records``; each one's (error, offset), in order, once every report is in
    (a second report of a record fails the test)."""
    outcomes: list = [None] * len(records)
    done = threading.Semaphore(0)

    def report(index, error, offset):
        assert outcomes[index] is None, f"record {index} reported twice"
        outcomes[index] = (error, offset)
        done.release()

    producer.produce_many(records, report)
    for _ in records:
        assert done.acquire(timeout=30)
    return outcomes


def _read_all(broker, topic: str, partitions: int, count: int) -> dict[tuple[int, int], tuple]:
    """``{(partition, offset): (key, value, headers)}`` of the first ``count`` records of ``topic``."""
    check = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        check.assign([TopicPartition(topic, p) for p in range(partitions)])
        landed: dict = {}
        deadline = time.monotonic() + 30
        while len(landed) < count and time.monotonic() < deadline:
            for tp, batch in check.poll(timeout_ms=200).items():
                for r in batch:
                    landed[(tp.partition, r.offset)] = (r.key, r.value, [(n, bytes(v)) for n, v in r.headers])
    finally:
        check.close()
    return landed


def test_produce_many_reports_each_record_once_with_the_offset_it_landed_at(broker):
    """Batched records, and those that go one by one (headers, no key, a key seen before in the
    call), all reported by their own index with their own offset."""
    topic = "rdk-many"
    ensure_topics(broker.connection, {topic: 3})
    records = [OutgoingRecord(topic, f"k{i}".encode(), f"v{i}".encode(), [], i % 3 if i % 4 else None)
               for i in range(40)]
    records[5] = records[5]._replace(headers=[("dm-half", b"spoken")])
    records[9] = records[9]._replace(key=None)
    records[12] = records[12]._replace(key=b"k3", value=b"second k3")  # the same key twice in one call
    producer = new_producer(broker.connection)
    try:
        outcomes = _deliver_many(producer, records)
    finally:
        producer.close(10)
    assert [error for error, _ in outcomes] == [None] * len(records)
    landed = _read_all(broker, topic, 3, len(records))
    by_value = {value: (where, key, headers) for where, (key, value, headers) in landed.items()}
    for record, (_, offset) in zip(records, outcomes):
        (partition, at), key, headers = by_value[record.value]
        assert (at, key, headers) == (offset, record.key, record.headers)
        if record.partition is not None:
            assert partition == record.partition


def test_produce_many_reports_a_record_refused_for_its_size_and_delivers_the_others(broker):
    topic = "rdk-many-large"
    ensure_topics(broker.connection, {topic: 1})
    records = [OutgoingRecord(topic, b"a", b"small", []), OutgoingRecord(topic, b"b", b"x" * 2_000_000, []),
               OutgoingRecord(topic, b"c", b"small too", [])]
    producer = LibrdkafkaProducer(broker.connection, **{"message.max.bytes": 1_000_000})
    try:
        (first, big, last) = _deliver_many(producer, records)
    finally:
        producer.close(10)
    assert first[0] is None and last[0] is None
    assert isinstance(big[0], ClientError) and big[0].too_large and big[1] is None


def test_produce_many_waits_for_room_when_the_local_queue_is_full(broker):
    topic = "rdk-many-full"
    ensure_topics(broker.connection, {topic: 1})
    producer = LibrdkafkaProducer(broker.connection, **{"queue.buffering.max.messages": 10})
    records = [OutgoingRecord(topic, f"k{i}".encode(), f"v{i}".encode(), [], 0) for i in range(100)]
    try:
        outcomes = _deliver_many(producer, records)
    finally:
        producer.close(10)
    assert [error for error, _ in outcomes] == [None] * 100
    assert sorted(offset for _, offset in outcomes) == list(range(100))


def test_produce_many_on_a_closed_producer_reports_each_record_failed(broker):
    producer = LibrdkafkaProducer(broker.connection)
    producer.close(5)
    records = [OutgoingRecord("rdk-closed", b"k", b"x", []), OutgoingRecord("rdk-closed", None, b"y", [("h", b"1")])]
    outcomes = _deliver_many(producer, records)
    assert all(isinstance(error, ClientError) and offset is None for error, offset in outcomes)
