"""The matcher's Kafka clients on librdkafka (``confluent-kafka``), behind the part of
kafka-python's interface the matcher uses, so one poll loop runs on either client.

Why librdkafka (``--kafka-client librdkafka``): kafka-python parses record batches and builds
produce requests in Python, which on the matcher cost about as much CPU per pair as the model;
librdkafka does that work in C, on its own threads, without holding the GIL (a quarter less CPU
per pair, docs/benchmarks.md).

What differs from kafka-python, and how it is bridged here:

* Rebalance callbacks run on the thread that polls, inside :meth:`LibrdkafkaConsumer.poll`, so
  the listener may commit synchronously. A new assignment is applied *before* the listener is
  told, so it can pause or seek the partitions it is given.
* librdkafka's pause drops what it has prefetched for the partition and fetches it again on
  resume. Pausing at every batch that way starves partitions (below, :meth:`LibrdkafkaConsumer.pause`),
  so a pause first only stops taking records in, as kafka-python's does.
* Records come as one list; :meth:`~LibrdkafkaConsumer.poll` groups them per partition, as
  kafka-python does, with kafka-python's :class:`~kafka.structs.TopicPartition` as keys, and
  returns as soon as any record is there (librdkafka's ``consume`` waits for a full batch).
* Delivery reports are served by a thread that polls the producer; each one completes the
  :class:`Delivery` future :meth:`~LibrdkafkaProducer.send` returned.
* Creating a librdkafka client does not contact the cluster; the constructors open a TCP
  connection and ask for metadata once, so a missing broker raises :class:`ClientError` there, as
  it does with kafka-python.
* The partitioner is ``murmur2_random``: keyed records land in the partitions the Java client
  and kafka-python pick for them.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from typing import Any, Callable, NamedTuple

import confluent_kafka
from kafka.structs import TopicPartition

from digitmatch.kafka.admin import reachable
from digitmatch.kafka.configuration import KafkaConnection

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection failures, ...) go to Python logging under this name
# instead of straight to stderr; quiet_client_logs() raises its level with kafka-python's.
CLIENT_LOGGER = "digitmatch.kafka.librdkafka.client"

METADATA_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
PRODUCER_POLL_S = 0.05
# How long a pause may only hold records back in librdkafka's queue before it becomes librdkafka's
# own pause, so that polls serve rebalances again and stay within max.poll.interval.ms.
SOFT_PAUSE_S = 5.0
# librdkafka's bound on prefetched records (queued.max.messages.kbytes; its default is 64 MiB):
# while the matcher is paused, this is what waits in memory besides its own queues.
PREFETCH_KIB = 16 * 1024
HOLD_CHUNK = 1000  # records taken per call when emptying librdkafka's queue before its pause
# Consumer errors about the data at one offset, which every fetch of it repeats.
UNREADABLE_ERRORS = frozenset({confluent_kafka.KafkaError._BAD_COMPRESSION, confluent_kafka.KafkaError._BAD_MSG})


class ClientError(Exception):
    """A librdkafka error, raised or reported to a delivery callback (like kafka-python's KafkaError)."""

    def __init__(self, error: Any):
        super().__init__(str(error))
        self.error = error


def common_config(conn: KafkaConnection) -> dict[str, Any]:
    """librdkafka's names for the connection settings (servers, identity, security)."""
    config: dict[str, Any] = {
        "bootstrap.servers": conn.bootstrap_servers,
        "client.id": conn.client_id,
        "security.protocol": conn.security_protocol,
        "socket.timeout.ms": conn.request_timeout_ms,
        "logger": logging.getLogger(CLIENT_LOGGER),
    }
    if conn.sasl_mechanism:
        config["sasl.mechanism"] = conn.sasl_mechanism
        config["sasl.username"] = conn.sasl_username
        config["sasl.password"] = conn.sasl_password.get_secret_value() if conn.sasl_password else None
    for name, key in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                      ("ssl_keyfile", "ssl.key.location")):
        value = getattr(conn, name)
        if value is not None:
            config[key] = str(value)
    return config


def _check_reachable(client, conn: KafkaConnection) -> None:
    """Fail fast, as kafka-python does, when no broker is there: a TCP connection first (refused
    at once when nothing listens), then one metadata request."""
    error = reachable(conn, CONNECT_TIMEOUT_S)
    if error is not None:
        raise ClientError(f"no broker reachable at {conn.bootstrap_servers}: {error}")
    try:
        client.list_topics(timeout=conn.request_timeout_ms / 1000)
    except confluent_kafka.KafkaException as exc:
        raise ClientError(exc.args[0] if exc.args else exc) from None


def _native(tp: TopicPartition, offset: int | None = None) -> confluent_kafka.TopicPartition:
    """kafka-python's TopicPartition (what the matcher holds) as librdkafka's."""
    if offset is None:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition)
    return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


class _Closed:
    """Stands in for a released librdkafka handle: any use raises :class:`ClientError`."""

    def __getattr__(self, name: str):
        raise ClientError("client closed")


class Record(NamedTuple):
    """The fields of kafka-python's ConsumerRecord the matcher reads."""

    offset: int
    key: bytes | None
    value: bytes | None
    # None when the headers cannot be read: confluent-kafka fails on a header name that is not
    # valid UTF-8 (legal on the wire, where header names are bytes).
    headers: list[tuple[str, bytes]] | None
    timestamp: int  # epoch ms (-1 when the record has none)
    # Why the client could not read the record at this offset at all (see UNREADABLE_ERRORS); its
    # key and value are then None and its headers None.
    unreadable: str | None = None


# confluent-kafka's Message.headers() returns the list with the decode error of a bad header name
# still pending. Called through the C API (methodcaller: PyObject_Vectorcall), that becomes a
# SystemError at once; called from bytecode, CPython 3.11's specialised call skips the check and
# the error surfaces at some later, unrelated call.
_read_headers = operator.methodcaller("headers")


def _headers(message) -> list[tuple[str, bytes]] | None:
    try:
        return _read_headers(message) or []
    except (UnicodeDecodeError, SystemError):
        return None


class LibrdkafkaConsumer:
    """A group consumer with explicit commits, starting from the earliest offset of a new group."""

    def __init__(self, conn: KafkaConnection, group_id: str, *, session_timeout_ms: int,
                 heartbeat_interval_ms: int, fetch_max_wait_ms: int):  # fmt: skip
        self._consumer = confluent_kafka.Consumer(common_config(conn) | {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "enable.partition.eof": False,
            "queued.max.messages.kbytes": PREFETCH_KIB,
        })
        try:
            _check_reachable(self._consumer, conn)
        except ClientError:
            self._consumer.close()
            self._consumer = _Closed()
            raise
        self._partitions: dict[tuple[str, int], TopicPartition] = {}
        self._listener = None
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()  # what the caller paused
        self._paused_at = 0.0  # when the caller last paused a partition
        self._paused_in_librdkafka: set[TopicPartition] = set()
        self._held: dict[TopicPartition, list[Record]] = {}  # records of paused partitions, in order
        self._seeks: dict[TopicPartition, int] = {}  # seeks librdkafka refused so far (see seek)

    # ---------------------------------------------------------------- group membership

    def subscribe(self, topics: list[str], listener=None) -> None:
        self._listener = listener
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _tps(self, partitions) -> list[TopicPartition]:
        return [self._tp(p.topic, p.partition) for p in partitions]

    def _on_assign(self, consumer, partitions) -> None:
        consumer.assign(partitions)  # first, so that the listener can pause or seek them
        tps = self._tps(partitions)
        self._assigned.update(tps)
        if self._listener is not None:
            self._listener.on_partitions_assigned(tps)

    def _on_revoke(self, consumer, partitions) -> None:
        tps = self._tps(partitions)
        if self._listener is not None:
            self._listener.on_partitions_revoked(tps)
        self._forget(tps)

    def _on_lost(self, consumer, partitions) -> None:
        tps = self._tps(partitions)
        if self._listener is not None:
            self._listener.on_partitions_lost(tps)
        self._forget(tps)

    def _forget(self, tps: list[TopicPartition]) -> None:
        """Partitions leaving the assignment: librdkafka keeps a partition paused across a new
        assignment, so undo its pause while it is still assigned."""
        gone = set(tps)
        self._resume_in_librdkafka(gone & self._paused_in_librdkafka)
        self._assigned -= gone
        self._paused -= gone
        for tp in gone:
            self._held.pop(tp, None)
            self._seeks.pop(tp, None)

    # ---------------------------------------------------------------- records

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._partitions.get((topic, partition))
        if tp is None:
            tp = self._partitions[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records`` records, grouped per partition in offset order. Transient errors
        (a broker unreachable for a while) are logged and retried by librdkafka; fatal ones raise.
        Records held back while their partition was paused come first once it is resumed."""
        if self._seeks:
            self._retry_seeks()
        held = self._release_held(max_records)
        if held:
            return held
        if self._assigned and self._assigned <= self._paused:
            if time.monotonic() - self._paused_at < SOFT_PAUSE_S:
                time.sleep(timeout_ms / 1000)  # leave the records in librdkafka's (bounded) queue
                return {}
            self._pause_in_librdkafka(self._paused)
        # Like kafka-python, return as soon as anything is there: librdkafka's consume() waits
        # until it has max_records or the timeout has passed, which under a light load would add
        # the whole timeout to every record's latency.
        messages = self._consumer.consume(max_records, 0)
        if not messages and timeout_ms > 0:
            first = self._consumer.poll(timeout_ms / 1000)
            if first is not None:
                messages = [first] + (self._consumer.consume(max_records - 1, 0) if max_records > 1 else [])
        records = self._group(messages)
        held = self._held.keys() & self._paused
        if held:  # records of paused partitions came with others: stop fetching more of them
            self._pause_in_librdkafka(held)
        return records

    def _group(self, messages: list) -> dict[TopicPartition, list[Record]]:
        """Messages as records per partition; those of paused partitions go to the held ones, and
        those of a partition with a seek still to come are dropped (read from the old position)."""
        records: dict[TopicPartition, list[Record]] = {}
        last = current = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise ClientError(error)
                if error.code() in UNREADABLE_ERRORS and message.partition() is not None and message.offset() >= 0:
                    tp, record = self._unreadable(message, error)
                    (self._held if tp in self._paused else records).setdefault(tp, []).append(record)
                    last = None  # the partition's later messages are dropped: read again after the seek
                    continue
                log.warning("consumer: %s", error)
                continue
            key = (message.topic(), message.partition())
            if key != last:  # messages come in runs per partition
                last = key
                tp = self._tp(*key)
                if tp in self._seeks:
                    current = []
                else:
                    current = (self._held if tp in self._paused else records).setdefault(tp, [])
            current.append(Record(message.offset(), message.key(), message.value(), _headers(message),
                                  message.timestamp()[1]))
        return records

    def _unreadable(self, message, error) -> tuple[TopicPartition, Record]:
        """A batch librdkafka cannot decode (a compression bomb it refuses to inflate, corrupt
        data) stops its partition for good: every fetch fails on it again. The offset it failed at
        is returned as an unreadable record and reading goes on after it (a batch of several such
        records fails once per record, each reported at its own offset)."""
        tp = self._tp(message.topic(), message.partition())
        offset = message.offset()
        log.warning("consumer: partition %d, offset %d cannot be read (%s): reported and skipped",
                    tp.partition, offset, error.str())
        self.seek(tp, offset + 1)
        return tp, Record(offset, None, None, None, -1, f"the Kafka client cannot read it: {error.str()}")

    def _release_held(self, max_records: int) -> dict[TopicPartition, list[Record]]:
        released: dict[TopicPartition, list[Record]] = {}
        for tp in [tp for tp in self._held if tp not in self._paused]:
            if max_records <= 0:
                break
            records = self._held.pop(tp)
            released[tp] = records[:max_records]
            if len(records) > max_records:
                self._held[tp] = records[max_records:]
            max_records -= len(released[tp])
        return released

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read the partition from ``offset`` on. librdkafka refuses to seek a partition whose
        fetching has not started yet (just assigned: its committed offset is still being looked
        up); such a seek is retried at each poll, and until it is done the partition's records,
        read from the old position, are dropped."""
        self._held.pop(tp, None)
        self._seeks[tp] = offset
        self._retry_seeks()

    def _retry_seeks(self) -> None:
        for tp, offset in list(self._seeks.items()):
            try:
                self._consumer.seek(_native(tp, offset))
            except confluent_kafka.KafkaException as exc:
                error = exc.args[0] if exc.args else exc
                if isinstance(error, confluent_kafka.KafkaError) and error.code() == confluent_kafka.KafkaError._STATE:
                    continue  # not fetching yet: retried at the next poll
                del self._seeks[tp]
                raise ClientError(error) from None
            del self._seeks[tp]

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop returning records of these partitions until they are resumed.

        librdkafka's own pause drops the records it has prefetched for a partition, and its resume
        fetches them again. A caller that pauses and resumes at every batch (the matcher, when the
        model is the bottleneck) then takes each time the first partition of the next fetch
        response, and the others wait: with four partitions of backlog, two got nothing until
        the other two were done (tests/kafka/test_clients.py). So a pause first only holds records
        back: while every assigned partition is paused, :meth:`poll` leaves librdkafka's queue
        alone (bounded by ``PREFETCH_KIB``), and the records of a paused partition that come with
        others are kept and returned after resume.
        librdkafka's pause is used for a pause that lasts longer than ``SOFT_PAUSE_S`` and for
        partitions whose records had to be held back, after taking what librdkafka prefetched."""
        added = set(partitions) - self._paused
        if added:
            self._paused |= added
            self._paused_at = time.monotonic()

    def resume(self, *partitions: TopicPartition) -> None:
        resumed = set(partitions)
        self._paused -= resumed
        self._resume_in_librdkafka(resumed & self._paused_in_librdkafka)

    def _pause_in_librdkafka(self, tps: set[TopicPartition]) -> None:
        """Pause in librdkafka, after taking what it has prefetched (which its pause would drop,
        and its resume fetch again from the first record not taken)."""
        tps = tps - self._paused_in_librdkafka
        if not tps:
            return
        taken = 0  # bytes; more than librdkafka's bound means it keeps fetching as fast as this takes
        while taken < 2 * PREFETCH_KIB * 1024 and (messages := self._consumer.consume(HOLD_CHUNK, 0)):
            # (counted on the messages: _group already puts those of paused partitions in _held)
            taken += sum(len(m.value() or b"") for m in messages)
            for tp, records in self._group(messages).items():
                self._held.setdefault(tp, []).extend(records)
        self._consumer.pause([_native(tp) for tp in tps])
        self._paused_in_librdkafka |= tps

    def _resume_in_librdkafka(self, tps: set[TopicPartition]) -> None:
        if tps:
            self._consumer.resume([_native(tp) for tp in tps])
            self._paused_in_librdkafka -= tps

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    # ---------------------------------------------------------------- offsets, metadata

    def commit(self, offsets: dict) -> None:
        """Synchronous commit of ``{TopicPartition: OffsetAndMetadata}``."""
        partitions = [_native(tp, meta.offset) for tp, meta in offsets.items()]
        try:
            result = self._consumer.commit(offsets=partitions, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            raise ClientError(exc.args[0] if exc.args else exc) from None
        failed = [p for p in result or () if p.error is not None]
        if failed:
            raise ClientError(failed[0].error)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch response (None before one)."""
        _, high = self._consumer.get_watermark_offsets(_native(tp),
                                                       cached=True)
        return high if high >= 0 else None

    def position(self, tp: TopicPartition, timeout_ms: int = 0) -> int | None:
        """The offset of the next record :meth:`poll` returns for the partition."""
        if tp in self._seeks:
            return self._seeks[tp]
        if self._held.get(tp):
            return self._held[tp][0].offset
        (found,) = self._consumer.position([_native(tp)])
        return found.offset if found.offset >= 0 else None

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        metadata = self._consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return set(found.partitions)

    def close(self, autocommit: bool = False) -> None:
        """Leave the group (the revocation reaches the listener first), then release the client.
        Never commits by itself."""
        if isinstance(self._consumer, _Closed):
            return
        try:
            self._consumer.close()
        finally:
            self._consumer = _Closed()


class Delivery:
    """What :meth:`LibrdkafkaProducer.send` returns: kafka-python's future, reduced to callbacks."""

    __slots__ = ("_callbacks", "_errbacks")

    def __init__(self):
        self._callbacks: list[tuple[Callable, tuple]] = []
        self._errbacks: list[tuple[Callable, tuple]] = []

    def add_callback(self, fn: Callable, *args) -> "Delivery":
        self._callbacks.append((fn, args))
        return self

    def add_errback(self, fn: Callable, *args) -> "Delivery":
        self._errbacks.append((fn, args))
        return self

    def _report(self, error, message) -> None:  # librdkafka's on_delivery(err, msg)
        if error is None:
            for fn, args in self._callbacks:
                fn(*args, message)
        else:
            exc = ClientError(error)
            for fn, args in self._errbacks:
                fn(*args, exc)


class LibrdkafkaProducer:
    """A durable producer with the settings of :meth:`KafkaConnection.producer_kwargs`: acks from
    all in-sync replicas, idempotence, 5 requests in flight, 5 ms linger, no compression."""

    def __init__(self, conn: KafkaConnection, **overrides: Any):
        self._producer = confluent_kafka.Producer(common_config(conn) | {
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "compression.type": "none",
            "partitioner": "murmur2_random",
            "request.timeout.ms": conn.request_timeout_ms,
        } | overrides)
        try:
            _check_reachable(self._producer, conn)
        except ClientError:
            self._producer = _Closed()  # released: no reconnecting in the background
            raise
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_reports, name="librdkafka-deliveries", daemon=True)
        self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(PRODUCER_POLL_S)

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
             headers: list | None = None, partition: int | None = None) -> Delivery:  # fmt: skip
        """Queue a record; waits while librdkafka's local queue is full. Raises :class:`ClientError`
        when the record cannot be queued (e.g. the producer is in a fatal state)."""
        delivery = Delivery()
        kwargs: dict[str, Any] = {"key": key, "on_delivery": delivery._report}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, value, **kwargs)
                return delivery
            except BufferError:  # the local queue is full: wait for deliveries to make room
                if self._closed.is_set():
                    raise ClientError("producer closed") from None
                time.sleep(PRODUCER_POLL_S / 10)
            except confluent_kafka.KafkaException as exc:
                raise ClientError(exc.args[0] if exc.args else exc) from None

    def flush(self, timeout: float | None = None) -> None:
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        if remaining:
            raise ClientError(f"{remaining} records not delivered within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then release the client: librdkafka
        keeps reconnecting for as long as the handle exists."""
        if self._closed.is_set():
            return
        try:
            self._producer.flush(-1 if timeout is None else timeout)
        finally:
            self._closed.set()
            self._poller.join()
            self._producer = _Closed()
