"""Apache Kafka without Docker (digitmatch.dev.kafka_native): the jars from deploy/kafka-native, one
node and three, a restart that keeps the log, ``digitmatch broker --engine kafka``, and the errors a
machine without Java or the jars gets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import confluent_kafka
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from digitmatch import wire
from digitmatch.dev.broker import free_port
from digitmatch.dev.kafka_native import POM, KafkaCluster, kafka_classpath, new_cluster_id
from digitmatch.kafka.admin import topic_partitions, wait_for_broker
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import BrokerBinaryMissing, BrokerUnavailable

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ALL_TOPICS = [wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _storage_of(pid: int) -> Path:
    """The storage directory of the Kafka node running as ``pid`` (from its command line)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    properties = Path(next(a for a in argv if a.endswith(b"server.properties")).decode())
    return properties.parent.parent


def test_the_jars_are_the_version_of_the_compose_image():
    pom = (REPO / POM).read_text()
    compose = (REPO / "docker-compose.yml").read_text()
    jar_version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    image_version = re.search(r"apache/kafka:\$\{KAFKA_VERSION:-([^}]+)\}", compose).group(1)
    assert jar_version == image_version
    assert f"kafka_2.13-{jar_version}.jar" in kafka_classpath()


def test_cluster_ids_are_kraft_uuids():
    ids = {new_cluster_id() for _ in range(5000)}  # about 78 would start with "-" if drawn once
    assert len(ids) == 5000 and all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def _produce(bootstrap: str, value: bytes, topic: str = wire.TOPIC_DLQ) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, value, key=b"k")
    assert producer.flush(30) == 0


def _read(bootstrap: str, group: str, expected: int, topic: str = wire.TOPIC_DLQ, commit: bool = True) -> list[bytes]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values = []
    try:
        for _ in range(100):
            message = consumer.poll(0.3)
            if message is not None and not message.error():
                values.append(message.value())
            if len(values) >= expected and message is None:
                break
        if commit and values:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values


def test_one_node_keeps_its_log_across_a_restart(tmp_path):
    with KafkaCluster(partitions=3, dlq_partitions=2, log_path=tmp_path / "kafka.log") as cluster:
        assert cluster.running and cluster.bootstrap == f"127.0.0.1:{cluster.port}"
        assert topic_partitions(cluster.connection, ALL_TOPICS) == {
            wire.TOPIC_PAIRS: 3, wire.TOPIC_MATCHES: 3, wire.TOPIC_DLQ: 2}
        _produce(cluster.bootstrap, b"before")
        assert _read(cluster.bootstrap, "g", 1) == [b"before"]
        old_pid = cluster.pid
        cluster.restart()
        assert cluster.pid != old_pid and not _alive(old_pid)
        _produce(cluster.bootstrap, b"after")
        # The record and the group's committed offset survived: the group reads only the new one.
        assert _read(cluster.bootstrap, "g", 1) == [b"after"]
        assert sorted(_read(cluster.bootstrap, "other", 2, commit=False)) == [b"after", b"before"]
        # Topics are never created by a client asking for them (as docker-compose.yml's broker).
        metadata = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics("no-such-topic", timeout=5)
        assert metadata.topics["no-such-topic"].error is not None
        # Without its log: a new cluster behind the same address, with the topics and nothing else.
        cluster.restart(keep_log=False)
        assert topic_partitions(cluster.connection, ALL_TOPICS)[wire.TOPIC_DLQ] == 2
        _produce(cluster.bootstrap, b"new")
        assert _read(cluster.bootstrap, "other", 1) == [b"new"]
        pid = cluster.pid
    assert not _alive(pid)
    assert (tmp_path / "kafka.log").read_text().count("Kafka Server started") == 3


def test_three_nodes_replicate_everything_and_survive_a_killed_leader(tmp_path):
    with KafkaCluster(nodes=3, log_path=tmp_path / "kafka.log") as cluster:
        assert len(cluster.bootstrap.split(",")) == 3
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        metadata = admin.list_topics(timeout=10)
        assert sorted(metadata.brokers) == [1, 2, 3]
        for topic in ALL_TOPICS:
            assert all(len(p.replicas) == 3 for p in metadata.topics[topic].partitions.values())
        resource = ConfigResource(ConfigResource.Type.TOPIC, wire.TOPIC_PAIRS)
        configs = admin.describe_configs([resource])[resource].result()
        assert configs["min.insync.replicas"].value == "2"
        _produce(cluster.bootstrap, b"one")
        leader = cluster.leader(wire.TOPIC_DLQ, 0)
        cluster.kill_node(leader)
        _produce(cluster.bootstrap, b"two")  # two of three in sync: still accepted
        cluster.start_node(leader)
        # back means listening, not only still registered (a killed node is until it is fenced)
        socket.create_connection(("127.0.0.1", cluster.node(leader).port), timeout=2).close()
        assert sorted(_read(cluster.bootstrap, "g", 2)) == [b"one", b"two"]
        pids = [node.pid for node in cluster.nodes]
        storage = _storage_of(pids[0])
        assert storage.name.startswith("digitmatch-kafka-") and storage.is_dir()
    assert not any(_alive(pid) for pid in pids)
    assert not storage.exists()  # the storage went with the cluster
    assert (tmp_path / "kafka-3.log").is_file()


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "digitmatch.cli", "broker", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_runs_apache_kafka_and_leaves_nothing_behind(stop):
    port = free_port()
    proc = _cli("--engine", "kafka", "--port", str(port), "--partitions", "2")
    try:
        assert proc.stdout.readline().strip() == f"127.0.0.1:{port}"
        conn = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
        assert topic_partitions(conn, ALL_TOPICS) == {wire.TOPIC_PAIRS: 2, wire.TOPIC_MATCHES: 2, wire.TOPIC_DLQ: 1}
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        storage = _storage_of(int(children[0]))
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "broker ready at" in proc.stderr.read()
    assert not any(_alive(int(pid)) for pid in children)
    assert not storage.exists()
    with pytest.raises(BrokerUnavailable):
        wait_for_broker(conn, timeout_s=0.5)


def test_three_brokers_need_apache_kafka():
    proc = _cli("--brokers", "3", "--port", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.strip().count("\n") == 0 and "--engine kafka" in err


def test_no_java_is_a_clear_error(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _cli("--engine", "kafka", "--port", "0",
                env={"PATH": f"{empty}:{os.path.dirname(sys.executable)}", "JAVA_HOME": ""})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    assert err.strip().count("\n") == 0 and "Java 17" in err and "JAVA_HOME" in err


def test_jars_not_resolved_and_no_maven_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing cached
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.delenv("DIGITMATCH_KAFKA_CLASSPATH", raising=False)
    with pytest.raises(BrokerBinaryMissing, match=r"Maven .*mvn -f deploy/kafka-native/pom.xml dependency:resolve"):
        kafka_classpath()


def test_kafka_home_replaces_maven(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    with pytest.raises(BrokerBinaryMissing, match="libs/kafka_2.13"):
        kafka_classpath()
    (tmp_path / "libs").mkdir()
    (tmp_path / "libs" / "kafka_2.13-3.9.1.jar").write_bytes(b"")
    assert kafka_classpath() == f"{tmp_path / 'libs'}/*"
