"""The Kafka client interface (:mod:`digitmatch.kafka.client`) on librdkafka (``confluent-kafka``).

Why librdkafka: record parsing, produce batching and delivery reports run in C on its own
threads, without the GIL (a quarter less CPU per pair than kafka-python, docs/benchmarks.md), and
it returns a record whose header name is not UTF-8 where kafka-python cannot read past it.

What it takes to give librdkafka the interface's behaviour:

* Rebalance callbacks run on the thread that polls, inside :meth:`LibrdkafkaConsumer.poll`. A new
  assignment is applied *before* the callback is told, so it can pause or seek the partitions.
* librdkafka's pause drops what it has prefetched for the partition and fetches it again on
  resume. A caller that pauses and resumes at every batch (the matcher, when the model is the
  bottleneck) then takes each time the first partition of the next fetch response, and the others
  wait: with four partitions of backlog, two got nothing until the other two were done
  (tests/kafka/test_clients.py). So a pause first only stops taking records in
  (:meth:`LibrdkafkaConsumer.pause`).
* Records come as one list; :meth:`~LibrdkafkaConsumer.poll` groups them per partition and
  returns as soon as any record is there (librdkafka's ``consume`` waits for a full batch).
* A record librdkafka cannot decode (a compressed batch it refuses to inflate) is reported as an
  unreadable :class:`~digitmatch.kafka.client.Record` at its offset and skipped; otherwise every
  fetch fails on it again and its partition stops for good.
* The producer is in :mod:`.librdkafka_producer`.
* Creating a librdkafka client does not contact the cluster; the constructors open a TCP
  connection and ask for metadata once, so a missing broker raises :class:`ClientError` there.
"""

from __future__ import annotations

import logging
import operator
import time
from typing import Any, Iterable, Mapping

import confluent_kafka

from digitmatch.kafka.admin import reachable
from digitmatch.kafka.client import ClientError, Committed, Partition, Record
from digitmatch.kafka.configuration import CLIENT_LOGGER, KafkaConnection

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
PRODUCER_POLL_S = 0.05
# How long a pause may only hold records back in librdkafka's queue before it becomes librdkafka's
# own pause, so that polls serve rebalances again and stay within max.poll.interval.ms.
SOFT_PAUSE_S = 5.0
# librdkafka's bound on prefetched records (queued.max.messages.kbytes; its default is 64 MiB):
# while the matcher is paused, this is what waits in memory besides its own queues.
PREFETCH_KIB = 16 * 1024
# How long librdkafka waits before fetching again for a partition whose prefetched records reached
# PREFETCH_KIB (its default, 1,000 ms, starved a matcher that reads slower than the broker serves:
# the queue ran dry long before the next fetch; docs/benchmarks.md, "The prefetch queue").
FETCH_QUEUE_BACKOFF_MS = 10
HOLD_CHUNK = 1000  # records taken per call when emptying librdkafka's queue before its pause
# Consumer errors about the data at one offset, which every fetch of it repeats.
UNREADABLE_ERRORS = frozenset({confluent_kafka.KafkaError._BAD_COMPRESSION, confluent_kafka.KafkaError._BAD_MSG})


def _error(error: Any) -> ClientError:
    """librdkafka's KafkaError (or a message) as the interface's ClientError."""
    if not isinstance(error, confluent_kafka.KafkaError):
        return ClientError(str(error))
    return ClientError(str(error), too_large=error.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
                       fatal=error.fatal(), abortable=error.txn_requires_abort(), retriable=error.retriable())


def _raised(exc: confluent_kafka.KafkaException) -> ClientError:
    return _error(exc.args[0] if exc.args else exc)


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
        raise _raised(exc) from None


def _native(tp: Partition, offset: int | None = None, metadata: str | None = None) -> confluent_kafka.TopicPartition:
    if offset is None:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition)
    if metadata:
        return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset, metadata=metadata)
    return confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)


def native_offsets(offsets: Mapping[Partition, Committed]) -> list[confluent_kafka.TopicPartition]:
    """``{partition: Committed}`` as librdkafka's list (commits and ``send_offsets_to_transaction``)."""
    return [_native(tp, c.offset, c.metadata) for tp, c in offsets.items()]


class _Closed:
    """Stands in for a released librdkafka handle: any use raises :class:`ClientError`."""

    def __getattr__(self, name: str):
        raise ClientError("client closed")


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


METADATA_REFRESH_MS = 10_000


class LibrdkafkaConsumer:
    """A group :class:`~digitmatch.kafka.client.Consumer` with explicit commits, starting from the
    earliest offset of a new group."""

    def __init__(self, conn: KafkaConnection, group_id: str, *, session_timeout_ms: int,
                 heartbeat_interval_ms: int, fetch_max_wait_ms: int, read_committed: bool = False):
        self._consumer = confluent_kafka.Consumer(common_config(conn) | {
            # read_committed also makes committed() wait for transactions that still hold offsets
            # of the partitions (KIP-447's require_stable), which exactly-once needs.
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "fetch.wait.max.ms": fetch_max_wait_ms,
            "enable.partition.eof": False,
            "queued.max.messages.kbytes": PREFETCH_KIB,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            # How soon a subscribed topic that appears (created after the matcher joined, a new
            # cluster behind the same address) or gains partitions is noticed, and assigned:
            # librdkafka's default is 5 minutes. One metadata request per interval.
            "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
        })
        try:
            _check_reachable(self._consumer, conn)
        except ClientError:
            self._consumer.close()
            self._consumer = _Closed()
            raise
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._assignment = None
        self._assigned: set[Partition] = set()
        self._paused: set[Partition] = set()  # what the caller paused
        self._paused_at = 0.0  # when the caller last paused a partition
        self._paused_in_librdkafka: set[Partition] = set()
        self._held: dict[Partition, list[Record]] = {}  # records of paused partitions, in order
        self._seeks: dict[Partition, int] = {}  # seeks librdkafka refused so far (see seek)

    # ---------------------------------------------------------------- group membership

    def subscribe(self, topics: list[str], assignment) -> None:
        self._assignment = assignment
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def _tps(self, partitions) -> list[Partition]:
        return [self._tp(p.topic, p.partition) for p in partitions]

    def _on_assign(self, consumer, partitions) -> None:
        consumer.assign(partitions)  # first, so that the listener can pause or seek them
        tps = self._tps(partitions)
        self._assigned.update(tps)
        self._assignment.on_assigned(set(tps))

    def _on_revoke(self, consumer, partitions) -> None:
        tps = self._tps(partitions)
        self._assignment.on_revoked(set(tps))
        self._forget(tps)

    def _on_lost(self, consumer, partitions) -> None:
        tps = self._tps(partitions)
        self._assignment.on_lost(set(tps))
        self._forget(tps)

    def _forget(self, tps: list[Partition]) -> None:
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

    def _tp(self, topic: str, partition: int) -> Partition:
        tp = self._partitions.get((topic, partition))
        if tp is None:
            tp = self._partitions[(topic, partition)] = Partition(topic, partition)
        return tp

    def poll(self, timeout_s: float = 0.0, max_records: int = 500) -> dict[Partition, list[Record]]:
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
                time.sleep(timeout_s)  # leave the records in librdkafka's (bounded) queue
                return {}
            self._pause_in_librdkafka(self._paused)
        # Like kafka-python, return as soon as anything is there: librdkafka's consume() waits
        # until it has max_records or the timeout has passed, which under a light load would add
        # the whole timeout to every record's latency.
        messages = self._consumer.consume(max_records, 0)
        if not messages and timeout_s > 0:
            first = self._consumer.poll(timeout_s)
            if first is not None:
                messages = [first] + (self._consumer.consume(max_records - 1, 0) if max_records > 1 else [])
        records = self._group(messages)
        held = self._held.keys() & self._paused
        if held:  # records of paused partitions came with others: stop fetching more of them
            self._pause_in_librdkafka(held)
        return records

    def _group(self, messages: list) -> dict[Partition, list[Record]]:
        """Messages as records per partition; those of paused partitions go to the held ones, and
        those of a partition with a seek still to come are dropped (read from the old position)."""
        records: dict[Partition, list[Record]] = {}
        last = current = None
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise _error(error)
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

    def _unreadable(self, message, error) -> tuple[Partition, Record]:
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

    def _release_held(self, max_records: int) -> dict[Partition, list[Record]]:
        released: dict[Partition, list[Record]] = {}
        for tp in [tp for tp in self._held if tp not in self._paused]:
            if max_records <= 0:
                break
            records = self._held.pop(tp)
            released[tp] = records[:max_records]
            if len(records) > max_records:
                self._held[tp] = records[max_records:]
            max_records -= len(released[tp])
        return released

    def seek(self, tp: Partition, offset: int) -> None:
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
                raise _error(error) from None
            del self._seeks[tp]

    def pause(self, partitions: Iterable[Partition]) -> None:
        """Stop returning records of these partitions until they are resumed. A pause first only
        holds records back (see the module docstring): while every assigned partition is paused,
        :meth:`poll` leaves librdkafka's queue alone (bounded by ``PREFETCH_KIB``), and the records
        of a paused partition that come with others are kept and returned after resume.
        librdkafka's own pause is used for a pause that lasts longer than ``SOFT_PAUSE_S`` and for
        partitions whose records had to be held back, after taking what librdkafka prefetched."""
        added = set(partitions) - self._paused
        if added:
            self._paused |= added
            self._paused_at = time.monotonic()

    def resume(self, partitions: Iterable[Partition]) -> None:
        resumed = set(partitions)
        self._paused -= resumed
        self._resume_in_librdkafka(resumed & self._paused_in_librdkafka)

    def _pause_in_librdkafka(self, tps: set[Partition]) -> None:
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

    def _resume_in_librdkafka(self, tps: set[Partition]) -> None:
        if tps:
            self._consumer.resume([_native(tp) for tp in tps])
            self._paused_in_librdkafka -= tps

    def paused(self) -> set[Partition]:
        return set(self._paused)

    # ---------------------------------------------------------------- offsets, metadata

    def commit(self, offsets: Mapping[Partition, Committed]) -> None:
        """Synchronous commit of ``{partition: (next offset to read, metadata)}``."""
        partitions = native_offsets(offsets)
        try:
            result = self._consumer.commit(offsets=partitions, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            raise _raised(exc) from None
        failed = [p for p in result or () if p.error is not None]
        if failed:
            raise _error(failed[0].error)

    def committed(self, partitions: Iterable[Partition], timeout_s: float) -> dict[Partition, Committed | None]:
        tps = list(partitions)
        try:
            found = self._consumer.committed([_native(tp) for tp in tps], timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise _raised(exc) from None
        out: dict[Partition, Committed | None] = {}
        for p in found:
            if p.error is not None:
                raise _error(p.error)
            out[self._tp(p.topic, p.partition)] = Committed(p.offset, p.metadata or "") if p.offset >= 0 else None
        return out

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def highwater(self, tp: Partition) -> int | None:
        """The partition's end offset as of the last fetch response (None before one)."""
        _, high = self._consumer.get_watermark_offsets(_native(tp),
                                                       cached=True)
        return high if high >= 0 else None

    def position(self, tp: Partition) -> int | None:
        """The offset of the next record :meth:`poll` returns for the partition."""
        if tp in self._seeks:
            return self._seeks[tp]
        if self._held.get(tp):
            return self._held[tp][0].offset
        (found,) = self._consumer.position([_native(tp)])
        return found.offset if found.offset >= 0 else None

    def lag(self, tp: Partition) -> int | None:
        """Records after the next one :meth:`poll` returns, as of the last fetch response."""
        high, position = self.highwater(tp), self.position(tp)
        return None if high is None or position is None else max(0, high - position)

    def partitions(self, topic: str) -> set[int] | None:
        try:
            metadata = self._consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S)
        except confluent_kafka.KafkaException as exc:  # no answer within the timeout
            raise _raised(exc) from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return None
        return set(found.partitions)

    def close(self) -> None:
        """Leave the group (the revocation reaches the listener first), then release the client.
        Never commits by itself."""
        if isinstance(self._consumer, _Closed):
            return
        try:
            self._consumer.close()
        finally:
            self._consumer = _Closed()
