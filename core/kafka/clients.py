"""The matcher's Kafka clients: librdkafka's (``confluent-kafka``, :mod:`.librdkafka`), behind the
calls the poll loop makes; their errors are what :data:`CLIENT_ERRORS` catches.

kafka-python stays the project's library for the producer command, the admin client and the
readers, but it is no longer a client the matcher can run on (``--kafka-client`` is gone):

* it cannot read past a record whose header name is not valid UTF-8 (legal on the wire): every
  poll raises ``CorruptRecordError`` without saying which partition or offset, so the matcher can
  neither dead-letter the record nor skip it, and the partitions stop for good
  (docs/reliability.md, "Hostile input and pauses"); librdkafka returns the record, whose headers
  are then reported unreadable and which is dead-lettered as ``bad_header``;
* on it the matcher used a quarter more CPU per pair (docs/benchmarks.md), and its rebalance
  listener runs on the client's I/O thread, which cost the loop a second commit path.
"""

from __future__ import annotations

from kafka.errors import KafkaError

from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.librdkafka import ClientError, LibrdkafkaConsumer, LibrdkafkaProducer

# kafka-python's errors too: the matcher's admin calls (topic metadata) use kafka-python.
CLIENT_ERRORS = (KafkaError, ClientError)


def new_producer(conn: KafkaConnection) -> LibrdkafkaProducer:
    """A durable producer (see :class:`LibrdkafkaProducer`)."""
    return LibrdkafkaProducer(conn)


def new_consumer(conn: KafkaConnection, group_id: str, *, session_timeout_ms: int, heartbeat_interval_ms: int,
                 fetch_max_wait_ms: int) -> LibrdkafkaConsumer:
    """A group consumer with explicit commits (see :class:`LibrdkafkaConsumer`)."""
    return LibrdkafkaConsumer(conn, group_id, session_timeout_ms=session_timeout_ms,
                              heartbeat_interval_ms=heartbeat_interval_ms, fetch_max_wait_ms=fetch_max_wait_ms)
