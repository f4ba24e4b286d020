"""Which Kafka client library the matcher runs on: ``kafka-python`` (pure Python, the default) or
``librdkafka`` (``confluent-kafka``; see :mod:`.librdkafka`). Both give the matcher the same
consumer and producer interface, and raise errors that :data:`CLIENT_ERRORS` catches."""

from __future__ import annotations

from typing import Any, Literal

from kafka.errors import KafkaError

from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.librdkafka import ClientError, LibrdkafkaConsumer, LibrdkafkaProducer

ClientLibrary = Literal["kafka-python", "librdkafka"]
CLIENT_LIBRARIES: tuple[str, ...] = ("kafka-python", "librdkafka")

CLIENT_ERRORS = (KafkaError, ClientError)


def new_producer(library: ClientLibrary, conn: KafkaConnection):
    """A durable producer (see :meth:`KafkaConnection.producer_kwargs`)."""
    if library == "librdkafka":
        return LibrdkafkaProducer(conn)
    from kafka import KafkaProducer

    return KafkaProducer(**conn.producer_kwargs())


def new_consumer(library: ClientLibrary, conn: KafkaConnection, group_id: str, *, session_timeout_ms: int,
                 heartbeat_interval_ms: int, max_poll_records: int, fetch_max_wait_ms: int) -> Any:  # fmt: skip
    """A group consumer with explicit commits (see :meth:`KafkaConnection.consumer_kwargs`)."""
    settings = {"session_timeout_ms": session_timeout_ms, "heartbeat_interval_ms": heartbeat_interval_ms,
                "fetch_max_wait_ms": fetch_max_wait_ms}
    if library == "librdkafka":
        return LibrdkafkaConsumer(conn, group_id, **settings)
    from kafka import KafkaConsumer

    return KafkaConsumer(**conn.consumer_kwargs(group_id, max_poll_records=max_poll_records, **settings))
