"""The matcher's Kafka clients: librdkafka's (``confluent-kafka``, :mod:`.librdkafka`), behind
:mod:`.client`'s interface.

kafka-python stays the project's library for the producer command, the admin client and the
readers, but it is not a client the matcher runs on:

* it cannot read past a record whose header name is not valid UTF-8 (legal on the wire): every
  poll raises ``CorruptRecordError`` without saying which partition or offset, so the matcher can
  neither dead-letter the record nor skip it, and the partitions stop for good
  (docs/reliability.md, "Hostile input and pauses");
* on it the matcher used a quarter more CPU per pair (docs/benchmarks.md).
"""

from __future__ import annotations

from digitmatch.kafka.client import Consumer, Producer, TransactionalProducer
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.librdkafka import LibrdkafkaConsumer
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer, LibrdkafkaTransactionalProducer


def new_producer(conn: KafkaConnection) -> Producer:
    """A durable producer (see :class:`LibrdkafkaProducer`)."""
    return LibrdkafkaProducer(conn)


def new_transactional_producer(conn: KafkaConnection, transactional_id: str, *,
                               transaction_timeout_ms: int) -> TransactionalProducer:
    """An exactly-once producer, transactions initialised (see :class:`LibrdkafkaTransactionalProducer`)."""
    return LibrdkafkaTransactionalProducer(conn, transactional_id, transaction_timeout_ms=transaction_timeout_ms)


def new_consumer(conn: KafkaConnection, group_id: str, *, session_timeout_ms: int, heartbeat_interval_ms: int,
                 fetch_max_wait_ms: int, read_committed: bool = False) -> Consumer:
    """A group consumer with explicit commits (see :class:`LibrdkafkaConsumer`)."""
    return LibrdkafkaConsumer(conn, group_id, session_timeout_ms=session_timeout_ms,
                              heartbeat_interval_ms=heartbeat_interval_ms, fetch_max_wait_ms=fetch_max_wait_ms,
                              read_committed=read_committed)
