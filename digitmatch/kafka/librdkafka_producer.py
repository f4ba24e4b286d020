"""The Kafka client interface's :class:`~digitmatch.kafka.client.Producer` on librdkafka
(``confluent-kafka``).

* Delivery reports are served by a thread that polls the producer.
* ``produce_many`` hands librdkafka the records for each topic and partition (or the partitioner)
  in one ``produce_batch`` call, and maps each delivery report back to its record by the record's
  key; records with headers (which ``produce_batch`` cannot send), without a key, or with a key
  another record of the call has, go one by one. Those refused because the local queue is full are
  offered again once it has room. (``produce_batch`` ignores a partition given per message,
  confluent-kafka 2.16.1, whatever its documentation says: only the call's own ``partition`` is
  used; tests/kafka/test_librdkafka.py checks where each record lands.)
* The partitioner is ``murmur2_random``: keyed records land in the partitions the Java client
  and kafka-python pick for them.
* Creating it opens a TCP connection and asks for metadata once, so a missing broker raises
  :class:`~digitmatch.kafka.client.ClientError` at once.
* :class:`LibrdkafkaTransactionalProducer` is the exactly-once one (a ``transactional.id``):
  creating it also runs ``init_transactions``, which fences an older producer of the same ID and
  fails, or times out, on a broker that cannot do transactions:
  :class:`~digitmatch.kafka.exceptions.TransactionsUnavailable`, one line for the command.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

import confluent_kafka

from digitmatch.kafka.client import (ClientError, Committed, OnDelivery, OnEachDelivery, OutgoingRecord, Partition,
                                     produce_each)
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import TransactionsUnavailable
from digitmatch.kafka.librdkafka import (PRODUCER_POLL_S, _Closed, _check_reachable, _error, _raised, common_config,
                                         native_offsets)

log = logging.getLogger(__name__)


class LibrdkafkaProducer:
    """A durable :class:`~digitmatch.kafka.client.Producer` with the settings of
    :meth:`KafkaConnection.producer_kwargs`: acks from all in-sync replicas, idempotence, 5 requests
    in flight, 5 ms linger, no compression (``overrides``: librdkafka settings on top)."""

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
        """Delivery reports, until closed. A fatal error (a fenced transactional producer) is
        raised by ``poll``; it is logged once and the reports still pending go on being served
        (they fail), so that no sender waits for a report that never comes."""
        reported = False
        while not self._closed.is_set():
            try:
                self._producer.poll(PRODUCER_POLL_S)
            except confluent_kafka.KafkaException as exc:
                if not reported:
                    log.error("producer: %s", exc.args[0].str() if exc.args else exc)
                    reported = True
                self._closed.wait(PRODUCER_POLL_S)

    def produce(self, record: OutgoingRecord, on_delivery: OnDelivery) -> None:
        """Queue a record; waits while librdkafka's local queue is full. Raises :class:`ClientError`
        when the record cannot be queued (too large, or the producer is in a fatal state)."""

        def report(error, message) -> None:  # librdkafka's on_delivery(err, msg)
            if error is None:
                on_delivery(None, message.offset())
            else:
                on_delivery(_error(error), None)

        kwargs: dict[str, Any] = {"key": record.key, "on_delivery": report}
        if record.headers:
            kwargs["headers"] = record.headers
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                self._producer.produce(record.topic, record.value, **kwargs)
                return
            except BufferError:  # the local queue is full: wait for deliveries to make room
                if self._closed.is_set():
                    raise ClientError("producer closed") from None
                time.sleep(PRODUCER_POLL_S / 10)
            except confluent_kafka.KafkaException as exc:
                raise _raised(exc) from None

    def produce_many(self, records: list[OutgoingRecord], on_delivery: OnEachDelivery) -> None:
        """Queue ``records`` (module docstring); each is reported once, by its index, through
        ``on_delivery(index, error, offset)``, also when it cannot be queued."""
        batches: dict[tuple[str, int | None], dict[bytes, int]] = {}  # {key: index} per topic and partition
        keys_seen: set[tuple[str, bytes]] = set()
        alone: list[int] = []
        for index, record in enumerate(records):
            if record.headers or record.key is None or (record.topic, record.key) in keys_seen:
                alone.append(index)
            else:
                keys_seen.add((record.topic, record.key))
                batches.setdefault((record.topic, record.partition), {})[record.key] = index
        for (topic, partition), keys in batches.items():
            self._produce_batch(topic, partition, records, keys, on_delivery)
        if alone:
            produce_each(self, [records[i] for i in alone], lambda i, error, offset: on_delivery(alone[i], error, offset))

    def _produce_batch(self, topic: str, partition: int | None, records: list[OutgoingRecord], keys: dict[bytes, int],
                       on_delivery: OnEachDelivery) -> None:
        def report(error, message) -> None:
            index = keys[message.key()]
            if error is None:
                on_delivery(index, None, message.offset())
            else:
                on_delivery(index, _error(error), None)

        where = {} if partition is None else {"partition": partition}
        waiting = list(keys.values())
        while waiting:
            messages = [{"key": records[i].key, "value": records[i].value} for i in waiting]
            try:
                self._producer.produce_batch(topic, messages, on_delivery=report, **where)
            except ClientError as exc:  # a closed producer
                for index in waiting:
                    on_delivery(index, exc, None)
                return
            full = []
            for message, index in zip(messages, waiting):
                error = message.get("_error")
                if error is None:
                    continue
                if error.code() != confluent_kafka.KafkaError._QUEUE_FULL:
                    on_delivery(index, _error(error), None)
                elif self._closed.is_set():
                    on_delivery(index, ClientError("producer closed"), None)
                else:
                    full.append(index)
            if full:
                time.sleep(PRODUCER_POLL_S / 10)  # deliveries make room
            waiting = full

    def flush(self, timeout_s: float | None = None) -> None:
        remaining = self._producer.flush(-1 if timeout_s is None else timeout_s)
        if remaining:
            raise ClientError(f"{remaining} records not delivered within {timeout_s} s")

    def close(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then release the client: librdkafka
        keeps reconnecting for as long as the handle exists."""
        if self._closed.is_set():
            return
        try:
            self._producer.flush(-1 if timeout_s is None else timeout_s)
        finally:
            self._closed.set()
            self._poller.join()
            self._producer = _Closed()


class LibrdkafkaTransactionalProducer(LibrdkafkaProducer):
    """A :class:`~digitmatch.kafka.client.TransactionalProducer`: the durable producer's settings
    plus ``transactional.id`` (idempotence comes with it) and ``transaction.timeout.ms``, after
    which the coordinator aborts a transaction its producer left open (a SIGKILLed matcher)."""

    def __init__(self, conn: KafkaConnection, transactional_id: str, *, transaction_timeout_ms: int,
                 init_timeout_s: float = 30.0):
        # (librdkafka refuses a socket timeout longer than the transaction timeout)
        timeout_ms = min(conn.request_timeout_ms, transaction_timeout_ms)
        super().__init__(conn, **{"transactional.id": transactional_id, "transaction.timeout.ms": transaction_timeout_ms,
                                  "socket.timeout.ms": timeout_ms, "request.timeout.ms": timeout_ms})
        try:
            self._producer.init_transactions(init_timeout_s)
        except confluent_kafka.KafkaException as exc:
            self.close(0)
            raise TransactionsUnavailable(
                f"the broker at {conn.bootstrap_servers} cannot do transactions (init_transactions: "
                f"{_raised(exc)}); exactly-once needs a broker with transactions enabled") from None

    def _call(self, method: str, *args) -> None:
        try:
            getattr(self._producer, method)(*args)
        except confluent_kafka.KafkaException as exc:
            raise _raised(exc) from None

    def begin(self) -> None:
        self._call("begin_transaction")

    def send_offsets(self, offsets: Mapping[Partition, Committed], group_metadata: object, timeout_s: float) -> None:
        self._call("send_offsets_to_transaction", native_offsets(offsets), group_metadata, timeout_s)

    def commit(self, timeout_s: float) -> None:
        self._call("commit_transaction", timeout_s)

    def abort(self, timeout_s: float) -> None:
        self._call("abort_transaction", timeout_s)
