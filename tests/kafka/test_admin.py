"""Waiting for a broker and creating topics, against a real Tansu broker."""

from __future__ import annotations

import threading
import time

import pytest

from digitmatch.dev.broker import EmbeddedBroker, free_port
from digitmatch.kafka.admin import ensure_topics, topic_partitions, wait_for_broker
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import BrokerUnavailable

pytestmark = pytest.mark.slow


def test_ensure_topics_is_idempotent_and_keeps_existing_topics(broker, caplog):
    conn = broker.connection
    assert ensure_topics(conn, {"admin-a": 3, "admin-b": 1}) == {"admin-a": 3, "admin-b": 1}
    # Again, with one more topic and a bigger count for an existing one: nothing is re-created.
    counts = ensure_topics(conn, {"admin-a": 6, "admin-b": 1, "admin-c": 2})
    assert counts == {"admin-a": 3, "admin-b": 1, "admin-c": 2}
    assert "admin-a has 3 partitions, fewer than the 6" in caplog.text
    assert set(topic_partitions(conn, ["admin-a", "admin-c", "missing"])) == {"admin-a", "admin-c"}


def test_concurrent_creation_of_the_same_topics_succeeds(broker):
    results, errors = [], []

    def create():
        try:
            results.append(ensure_topics(broker.connection, {"race-1": 2, "race-2": 2}))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [{"race-1": 2, "race-2": 2}] * 4


def test_a_controller_not_in_the_metadata_yet_is_asked_again(broker, monkeypatch):
    # A node of a cluster that has just started may name a controller its metadata does not list
    # yet (seen in CI on a 3-node Apache Kafka cluster): kafka-python then raises
    # UnknownBrokerIdError, and the creation is tried again with a fresh client.
    from kafka import KafkaAdminClient
    from kafka.errors import UnknownBrokerIdError

    real, calls = KafkaAdminClient.create_topics, []

    def create_topics(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 1:
            raise UnknownBrokerIdError(2)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KafkaAdminClient, "create_topics", create_topics)
    assert ensure_topics(broker.connection, {"admin-late-controller": 2}) == {"admin-late-controller": 2}
    assert len(calls) == 2 and calls[0] is not calls[1]


def test_wait_for_broker_gives_up_with_the_address():
    conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match=conn.bootstrap_servers):
        wait_for_broker(conn, timeout_s=0.5)


def test_wait_for_broker_backs_off_and_gives_up_at_its_timeout():
    """Attempts at 0, 0.05, 0.15, 0.35 and 0.75 s (the backoff doubling from 0.05 s), then at the
    deadline: the next backoff (0.8 s) is cut to what is left, not slept in full."""
    conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    given_up = r"within 1 s \([56] attempts; last error: ConnectionRefusedError"  # 5 if sleeps overran
    with pytest.raises(BrokerUnavailable, match=given_up):
        wait_for_broker(conn, timeout_s=1.0)
    assert 1.0 <= time.monotonic() - started < 1.4


def test_wait_for_broker_outlasts_a_late_start(tmp_path):
    port = free_port()
    late = EmbeddedBroker(port, log_path=tmp_path / "tansu.log")
    timer = threading.Timer(1.0, late.start)
    timer.start()
    try:
        topics = wait_for_broker(KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}"), timeout_s=30)
        assert isinstance(topics, list)
    finally:
        timer.join()
        late.stop()
