"""Dead letters: a rejected ``pairs.in`` record goes to ``pairs.dlq`` byte for byte (same key, value
and headers) plus ``dm-dlq-reason``, ``dm-dlq-detail`` and ``dm-dlq-source`` (``topic:partition:offset``),
so it can be inspected and replayed. See :func:`digitmatch.wire.dead_letter_headers`."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from digitmatch.wire import Reason, dead_letter_headers


class OutgoingRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # None: the producer's partitioner picks it from the key


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def dead_letter(
    dlq_topic: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    reason: Reason,
    detail: str,
) -> OutgoingRecord:
    """The record to publish on ``dlq_topic`` for one rejected input record."""
    return OutgoingRecord(
        dlq_topic,
        key,
        value,
        dead_letter_headers(headers, reason, detail, source_of(topic, partition, offset)),
    )
