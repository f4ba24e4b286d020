"""Apache Kafka without Docker: a real KRaft cluster of 1 or 3 nodes on the local JVM, for
development, the test suite and ``digitmatch broker --engine kafka``.

Rules:

* **The jars** are those of ``deploy/kafka-native/pom.xml`` (``org.apache.kafka:kafka_2.13`` at
  docker-compose.yml's image version and its runtime dependencies), resolved by Maven into the local
  repository (``~/.m2``): once online, offline afterwards. The classpath Maven reports is cached in
  ``~/.cache/digitmatch`` per pom content. ``DIGITMATCH_KAFKA_CLASSPATH`` (a Java classpath) or
  ``KAFKA_HOME`` (an unpacked Apache Kafka distribution: its ``libs/``) replace Maven.
* **Each node is a combined broker and controller**; ``nodes`` of them form the controller quorum
  (every node a voter). Replication factor = ``nodes`` for the project's topics and Kafka's own,
  ``min.insync.replicas`` = 2 on three nodes (1 on one).
* **Settings as docker-compose.yml's broker**: topics are never created automatically, the first
  rebalance of a group is not delayed, PLAINTEXT listeners on loopback.
* **Storage** is a temporary directory, formatted at :meth:`KafkaCluster.start` and removed at
  :meth:`KafkaCluster.stop`. Unlike the embedded Tansu broker, a node stopped and started again
  (:meth:`KafkaCluster.restart`, :meth:`KafkaCluster.start_node`) keeps its log: records, committed
  offsets and producer state survive.
* The node processes run in process groups of their own and die with the process that started
  them (``digitmatch.dev.child_process``); :meth:`KafkaCluster.stop` sends SIGTERM (a controlled
  shutdown) and SIGKILL after ``stop_timeout_s``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import confluent_kafka.admin

from digitmatch import wire
from digitmatch.dev.child_process import spawn
from digitmatch.kafka.admin import ensure_topics, wait_for_broker
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import BrokerBinaryMissing, BrokerExited, KafkaSetupError
from digitmatch.settings import checkout_root

log = logging.getLogger(__name__)

POM = Path("deploy") / "kafka-native" / "pom.xml"
CLASSPATH_ENV = "DIGITMATCH_KAFKA_CLASSPATH"
MAIN_CLASS = "kafka.Kafka"
FORMAT_CLASS = "kafka.tools.StorageTool"

# Kafka's own logging: warnings, plus the lines that say a node started and stopped.
LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
log4j.logger.kafka.server.ControllerServer=INFO
"""


# --------------------------------------------------------------------------- the jars


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "digitmatch"


def java_executable() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on the PATH; :class:`BrokerBinaryMissing` if neither."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise BrokerBinaryMissing(
            "Apache Kafka needs Java 17 or later and no `java` was found (set JAVA_HOME, or install one: "
            "Debian `apt-get install openjdk-17-jre-headless`)"
        )
    return found


def kafka_classpath() -> str:
    """The broker's Java classpath (see the module's rules for where it comes from)."""
    if os.environ.get(CLASSPATH_ENV):
        return os.environ[CLASSPATH_ENV]
    if os.environ.get("KAFKA_HOME"):
        libs = Path(os.environ["KAFKA_HOME"]) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerBinaryMissing(f"KAFKA_HOME={os.environ['KAFKA_HOME']} has no libs/kafka_2.13-*.jar")
        return str(libs / "*")
    root = checkout_root()
    if root is None or not (root / POM).is_file():
        raise BrokerBinaryMissing(
            f"Apache Kafka's jars are resolved from {POM} of a digitmatch checkout; from an installed package, "
            f"set KAFKA_HOME to an Apache Kafka distribution or {CLASSPATH_ENV} to its classpath"
        )
    pom = root / POM
    cached = cache_dir() / f"kafka-classpath-{hashlib.sha256(pom.read_bytes()).hexdigest()[:16]}.txt"
    if cached.is_file():
        classpath = cached.read_text().strip()
        if classpath and all(Path(jar).is_file() for jar in classpath.split(os.pathsep)):
            return classpath
    classpath = _resolve_with_maven(pom, cached)
    return classpath


def _resolve_with_maven(pom: Path, cached: Path) -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerBinaryMissing(
            f"Apache Kafka's jars are not resolved yet and Maven (`mvn`) is not installed: install it "
            f"(Debian `apt-get install maven`) and run `mvn -f {POM} dependency:resolve` once (it downloads from "
            f"Maven Central), or set KAFKA_HOME to an Apache Kafka distribution"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    out = cached.with_suffix(f".{os.getpid()}.tmp")
    command = [mvn, "-B", "-q", "-f", str(pom), "dependency:build-classpath", f"-Dmdep.outputFile={out}"]
    # Offline first: once the jars are in ~/.m2 no network is needed.
    for offline in (["-o"], []):
        log.info("resolving Apache Kafka's jars with Maven%s", " (offline)" if offline else "")
        done = subprocess.run(command[:1] + offline + command[1:], capture_output=True, text=True)
        if done.returncode == 0 and out.is_file():
            classpath = out.read_text().strip()
            out.replace(cached)
            return classpath
    out.unlink(missing_ok=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
    raise BrokerBinaryMissing(
        f"Maven could not resolve Apache Kafka's jars from {pom} (it needs Maven Central the first time): {tail}"
    )


def new_cluster_id() -> str:
    """A KRaft cluster ID: 16 random bytes, URL-safe base64 without padding (as Kafka's ``Uuid``),
    never starting with ``-`` (Kafka's own ``Uuid.randomUuid`` draws again too: the storage tool
    would read such an ID as an option, about one start in 64)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------- one node


@dataclass
class KafkaNode:
    """One combined broker + controller process of a :class:`KafkaCluster`."""

    node_id: int
    port: int
    controller_port: int
    directory: Path  # its properties, its log4j file and its data (``data/``)
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            os.kill(self.process.pid, sig)

    def stop(self, timeout_s: float) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after ``timeout_s``; the data stays."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, signal.SIGCONT)  # a paused node cannot shut down
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=timeout_s)
                break
            except subprocess.TimeoutExpired:
                log.info("Kafka node %d (pid %d) still up %g s after %s", self.node_id, process.pid, timeout_s, sig.name)
        process.wait()

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, the data stays as it was on disk."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- the cluster


class KafkaCluster:
    """A KRaft cluster of ``nodes`` local Apache Kafka processes with ``pairs.in``, ``matches.out``
    and ``pairs.dlq`` created. Use as a context manager, or :meth:`start` / :meth:`stop`.

    ``port=None`` picks free ports; ``port=P`` puts the brokers' listeners on ``P``, ``P+1``, ...
    (the controllers' ports are always picked). ``log_path`` is the file of node 1's log (node
    ``n``'s gets ``-n`` before its suffix); without it the logs stay in the storage directory and go
    with it.
    """

    engine = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        nodes: int = 1,
        host: str = "127.0.0.1",
        advertised_host: str | None = None,
        partitions: int = 4,
        dlq_partitions: int = 1,
        log_path: Path | str | None = None,
        heap_mb: int = 512,
        startup_timeout_s: float = 90.0,
        stop_timeout_s: float = 20.0,
    ):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if partitions < 1 or dlq_partitions < 1:
            raise ValueError("topics need at least one partition")
        self.java = java_executable()
        self.classpath = kafka_classpath()
        self.node_count = nodes
        self.host = host
        self.advertised_host = advertised_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self._fixed_port = port
        self.topics = {wire.TOPIC_PAIRS: partitions, wire.TOPIC_MATCHES: partitions, wire.TOPIC_DLQ: dlq_partitions}
        self.replication = min(nodes, 3)
        self.min_insync = 2 if nodes >= 3 else 1
        self.log_path = Path(log_path) if log_path else None
        self.heap_mb = heap_mb
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.nodes: list[KafkaNode] = []
        self._storage: Path | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap(self) -> str:
        if not self.nodes:
            raise KafkaSetupError("the cluster has not been started")
        return ",".join(f"{self.advertised_host}:{node.port}" for node in self.nodes)

    @property
    def port(self) -> int | None:
        return self.nodes[0].port if self.nodes else None

    @property
    def connection(self) -> KafkaConnection:
        return KafkaConnection(bootstrap_servers=self.bootstrap, client_id="digitmatch-broker-admin")

    @property
    def pid(self) -> int | None:
        """Node 1's process (the only one of a one-node cluster)."""
        return self.nodes[0].pid if self.nodes else None

    @property
    def running(self) -> bool:
        return bool(self.nodes) and all(node.running for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "KafkaCluster":
        if self.running:
            return self
        self._storage = Path(tempfile.mkdtemp(prefix="digitmatch-kafka-"))
        try:
            self.nodes = self._plan(self._storage)
            cluster_id = new_cluster_id()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: self._format(node, cluster_id), self.nodes))
            for node in self.nodes:
                self._spawn(node)
            self._wait_ready()
            ensure_topics(self.connection, self.topics, replication=self.replication)
            self._wait_topics_everywhere()
        except BaseException:
            self.stop()
            raise
        log.info("broker ready at %s (Apache Kafka, %d node%s, pids %s)", self.bootstrap, len(self.nodes),
                 "s" if len(self.nodes) > 1 else "", ", ".join(str(n.pid) for n in self.nodes))
        return self

    def stop(self) -> None:
        """Stop every node (all at once: a controlled shutdown one by one would wait for the quorum
        the others take away) and remove the storage."""
        with ThreadPoolExecutor(max(1, len(self.nodes))) as pool:
            list(pool.map(lambda node: node.stop(self.stop_timeout_s), self.nodes))
        if self._storage is not None:  # (logs given a log_path live elsewhere and stay)
            shutil.rmtree(self._storage, ignore_errors=True)
        self._storage = None

    def restart(self, *, keep_log: bool = True) -> "KafkaCluster":
        """Stop every node and start it again on the same ports. With ``keep_log`` on the same log
        (records, committed offsets, producer state and topics survive); without, as a new cluster
        behind the same addresses: storage formatted again with a new cluster ID, the topics
        created again, everything else gone."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(self.stop_timeout_s), self.nodes))
        if not keep_log:
            cluster_id = new_cluster_id()
            for node in self.nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: self._format(node, cluster_id), self.nodes))
        for node in self.nodes:
            self._spawn(node)
        self._wait_ready()
        if not keep_log:
            ensure_topics(self.connection, self.topics, replication=self.replication)
        self._wait_topics_everywhere()
        return self

    def kill_node(self, node_id: int) -> None:
        self.node(node_id).kill()

    def stop_node(self, node_id: int) -> None:
        self.node(node_id).stop(self.stop_timeout_s)

    def start_node(self, node_id: int, *, wait: bool = True) -> None:
        """Start a stopped or killed node again on its log; with ``wait``, until the cluster
        lists it among its brokers again."""
        node = self.node(node_id)
        if not node.running:
            self._spawn(node)
        if wait:
            self._wait_ready()

    def pause_node(self, node_id: int) -> None:
        self.node(node_id).signal(signal.SIGSTOP)

    def resume_node(self, node_id: int) -> None:
        self.node(node_id).signal(signal.SIGCONT)

    def leader(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        """The node ID leading ``topic``'s ``partition`` now."""
        metadata = self._admin().list_topics(topic, timeout=timeout_s)
        return metadata.topics[topic].partitions[partition].leader

    def leaders(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """``{partition: leader node ID}`` of ``topic`` (-1 for a partition without a leader)."""
        metadata = self._admin().list_topics(topic, timeout=timeout_s)
        return {p: meta.leader for p, meta in metadata.topics[topic].partitions.items()}

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the parts

    def _plan(self, storage: Path) -> list[KafkaNode]:
        from digitmatch.dev.broker import free_port, port_in_use

        listen = self.host or "0.0.0.0"
        ports = ([self._fixed_port + i for i in range(self.node_count)] if self._fixed_port
                 else _distinct_free_ports(self.node_count, listen, free_port))
        for port in ports if self._fixed_port else ():
            if port_in_use(listen, port):
                raise BrokerExited(f"cannot start Apache Kafka: port {port} on {listen} is already in use")
        controllers = _distinct_free_ports(self.node_count, "127.0.0.1", free_port, avoid=set(ports))
        nodes = []
        for i, (port, controller_port) in enumerate(zip(ports, controllers), start=1):
            directory = storage / f"node-{i}"
            directory.mkdir(parents=True)
            nodes.append(KafkaNode(i, port, controller_port, directory, self._node_log(i, directory)))
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        for node in nodes:
            node.properties.write_text(self._properties(node, voters))
            (node.directory / "log4j.properties").write_text(LOG4J)
        return nodes

    def _node_log(self, node_id: int, directory: Path) -> Path:
        if self.log_path is None:
            return directory / "kafka.log"
        if node_id == 1:
            return self.log_path
        return self.log_path.with_name(f"{self.log_path.stem}-{node_id}{self.log_path.suffix}")

    def _properties(self, node: KafkaNode, voters: str) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.advertised_host}:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": node.data_dir,
            # As docker-compose.yml's broker:
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            # Replication: every topic on every node (up to three), acknowledged by two of three.
            "default.replication.factor": self.replication,
            "min.insync.replicas": self.min_insync,
            "offsets.topic.replication.factor": self.replication,
            "transaction.state.log.replication.factor": self.replication,
            "transaction.state.log.min.isr": self.min_insync,
        }
        return "".join(f"{name}={value}\n" for name, value in settings.items())

    def _java(self, node: KafkaNode, main: str, *args: str) -> list[str]:
        return [
            self.java, f"-Xmx{self.heap_mb}m", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{node.directory / 'log4j.properties'}",
            "-cp", self.classpath, main, *args,
        ]

    def _format(self, node: KafkaNode, cluster_id: str) -> None:
        done = subprocess.run(self._java(node, FORMAT_CLASS, "format", "-t", cluster_id, "-c", str(node.properties)),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise BrokerExited(f"formatting Kafka node {node.node_id}'s storage failed: {tail}")

    def _spawn(self, node: KafkaNode) -> None:
        node.process = spawn(self._java(node, MAIN_CLASS, str(node.properties)), node.log_path)

    def _wait_ready(self) -> None:
        """Until every node is registered with the cluster (topics of replication factor
        ``nodes`` can be created), answers metadata requests and accepts connections on its own
        listener. (A node registers with the controller before its listener is open, and a node
        just killed stays registered until the controller fences it, 9 s later: registration alone
        let clients that connect to each node, as kafka-python's admin does, be refused.)"""
        deadline = time.monotonic() + self.startup_timeout_s
        wait_for_broker(self.connection, self.startup_timeout_s)
        admin = self._admin()
        while True:
            self._check_alive()
            try:
                registered = set(admin.list_topics(timeout=2).brokers)
            except confluent_kafka.KafkaException:
                registered = set()
            if registered >= {n.node_id for n in self.nodes} and all(self._listening(n) for n in self.nodes):
                return
            if time.monotonic() > deadline:
                raise BrokerExited(f"Apache Kafka nodes {sorted(registered)} of {len(self.nodes)} registered within "
                                   f"{self.startup_timeout_s:g} s")
            time.sleep(0.1)

    def _wait_topics_everywhere(self) -> None:
        """Until every node has answered a metadata request with every topic, each partition
        led and on all its replicas. (A topic is created on the controller; the other nodes learn
        of it from the metadata log a few hundred milliseconds later, and until then answer
        without it. A client cannot choose the node that answers, so each round asks a new client
        per node and counts the node that did answer.)"""
        deadline = time.monotonic() + self.startup_timeout_s
        confirmed: set[int] = set()
        while True:
            for node in self.nodes:
                admin = self._admin(f"{self.advertised_host}:{node.port}")
                try:
                    metadata = admin.list_topics(timeout=2)
                except confluent_kafka.KafkaException:
                    continue
                if self._lists_every_topic(metadata):
                    confirmed.add(metadata.orig_broker_id)
            if confirmed >= {n.node_id for n in self.nodes}:
                return
            self._check_alive()
            if time.monotonic() > deadline:
                missing = sorted({n.node_id for n in self.nodes} - confirmed)
                raise KafkaSetupError(f"Apache Kafka nodes {missing} did not list the topics "
                                      f"{sorted(self.topics)} within {self.startup_timeout_s:g} s")
            time.sleep(0.1)

    def _lists_every_topic(self, metadata: confluent_kafka.admin.ClusterMetadata) -> bool:
        for name, partitions in self.topics.items():
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None or len(topic.partitions) < partitions:
                return False
            if any(p.leader < 0 or len(p.replicas) < self.replication for p in topic.partitions.values()):
                return False
        return True

    def _listening(self, node: KafkaNode) -> bool:
        try:
            with socket.create_connection((self.advertised_host, node.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                raise BrokerExited(f"Apache Kafka node {node.node_id} exited with code {node.process.returncode}"
                                   f"{_log_tail(node.log_path)}")

    def _admin(self, bootstrap: str | None = None) -> confluent_kafka.admin.AdminClient:
        return confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap or self.bootstrap, "log_level": 0,
                                                  "logger": logging.getLogger("digitmatch.kafka.client")})


def _distinct_free_ports(count: int, host: str, free_port, avoid: set[int] = frozenset()) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


def _log_tail(path: Path) -> str:
    if not path.is_file():
        return ""
    tail = path.read_bytes()[-800:].decode("utf-8", "replace").strip()
    return f"; its log {path} ends with: {tail}" if tail else ""
