"""Dead letters: a rejected ``pairs.in`` record goes to ``pairs.dlq`` byte for byte (same key, value
and headers) plus ``dm-dlq-reason``, ``dm-dlq-detail`` and ``dm-dlq-source`` (``topic:partition:offset``),
so it can be inspected and replayed. See :func:`dead_letter_headers`.

A dead letter must always be one the producer and the broker take: a record near the broker's
largest message (a 1 MB value, 900 KB of extra headers) is rejected, and its copy with three more
headers would be larger than that limit, refused (``MSG_SIZE_TOO_LARGE``) at every retry, and
would hold the commit point behind it forever. So :func:`dead_letter` builds a record whose
:func:`encoded_size` is at most ``max_bytes`` (``--max-dead-letter-bytes``):

1. If the whole copy fits, it is sent byte for byte, as always.
2. Otherwise the original's headers are cut first: only its *small* ones are kept, in their order
   (name and value of at most ``KEPT_HEADER_BYTES`` each, like any valid ``dm-`` header or a
   ``traceparent``; the first ``KEPT_HEADERS`` of them).
3. Then the value is cut to the prefix that fits beside the key and those headers.
4. If the key and the small headers alone do not fit, the headers go entirely, and the value is
   cut to what fits beside the key; if even the key alone does not fit, the value is sent empty
   and the key is cut to its prefix that fits.
5. A truncated dead letter carries two more headers, last: ``dm-dlq-truncated`` (what was cut:
   ``headers``, ``value``, ``key``, comma-separated in that order) and ``dm-dlq-original-bytes``
   (:class:`DeadLetterSizes`: ``key=<n>,value=<n>,headers=<n>,header_count=<n>``).
   The partition and offset of the original are in ``dm-dlq-source``, so it can be read there.

``dm-dlq-detail`` is at most 512 bytes in every form (cut at a character boundary). A record whose
headers the client could not read at all (``headers_unreadable``: a header name that is not UTF-8)
is dead-lettered without them, as truncated (``headers``; ``dm-dlq-original-bytes`` says
``headers=unreadable``).

:func:`smallest` is the last resort, for a topic whose own limit is below ``max_bytes``: the key
cut to ``SMALLEST_KEY_BYTES``, an empty value and only the ``dm-dlq-`` headers, about 1.5 KB at
most. :func:`is_truncated` tells a truncated dead letter (for ``digitmatch_dead_letters_truncated_total``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from digitmatch.kafka.client import OutgoingRecord
from digitmatch.wire import (
    DLQ_CUT_PARTS,
    H_DLQ_DETAIL,
    H_DLQ_ORIGINAL_BYTES,
    H_DLQ_REASON,
    H_DLQ_SOURCE,
    H_DLQ_TRUNCATED,
    MAX_DLQ_DETAIL_BYTES,
    MAX_HEADER_BYTES,
    Headers,
    Reason,
)

# The size estimate (encoded_size), an upper bound of what Kafka's record format v2 takes:
RECORD_BATCH_OVERHEAD = 61  # the record batch header (one record per batch at worst)
RECORD_OVERHEAD = 100  # length, attributes, timestamp and offset deltas, key and value lengths,
#                        header count: 36 bytes of varints at most, rounded up generously
HEADER_OVERHEAD = 10  # a varint each for the name's and the value's length
DEFAULT_MAX_DEAD_LETTER_BYTES = 1_000_000  # librdkafka's and the Java client's default limit
MIN_DEAD_LETTER_BYTES = 4096  # leaves room for the key of the smallest form, headers and detail
KEPT_HEADER_BYTES = MAX_HEADER_BYTES  # a header this small in name and value survives a cut (rule 2)
KEPT_HEADERS = 16
SMALLEST_KEY_BYTES = 256


def dlq_detail(detail: str) -> bytes:
    """``detail`` as the ``dm-dlq-detail`` value: UTF-8, cut to at most ``MAX_DLQ_DETAIL_BYTES``
    at a character boundary (a detail can echo attacker input of any length)."""
    raw = detail.encode("utf-8", "replace")
    if len(raw) <= MAX_DLQ_DETAIL_BYTES:
        return raw
    return raw[:MAX_DLQ_DETAIL_BYTES].decode("utf-8", "ignore").encode("utf-8")


class DeadLetterSizes(NamedTuple):
    """The sizes of the original of a truncated dead letter, the ``dm-dlq-original-bytes`` header:
    ``key=<n>,value=<n>,headers=<n>,header_count=<n>`` (bytes; a missing key or value counts 0;
    ``headers`` is the bytes of every header name, UTF-8, and value), or
    ``key=<n>,value=<n>,headers=unreadable`` when the client could not read the original headers."""

    key: int
    value: int
    headers: int | None  # None: unreadable
    header_count: int | None

    @classmethod
    def of(cls, key: bytes | None, value: bytes | None, headers: Headers | None, *,
           headers_unreadable: bool = False) -> "DeadLetterSizes":
        key_bytes, value_bytes = len(key or b""), len(value or b"")
        if headers_unreadable:
            return cls(key_bytes, value_bytes, None, None)
        headers = headers or ()
        header_bytes = sum(len(name.encode("utf-8", "surrogatepass")) + len(raw or b"") for name, raw in headers)
        return cls(key_bytes, value_bytes, header_bytes, len(headers))

    def encode(self) -> bytes:
        if self.headers is None:
            return f"key={self.key},value={self.value},headers=unreadable".encode("ascii")
        sizes = f"key={self.key},value={self.value},headers={self.headers},header_count={self.header_count}"
        return sizes.encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> "DeadLetterSizes":
        fields = dict(item.split("=", 1) for item in raw.decode("ascii").split(","))
        if fields["headers"] == "unreadable":
            return cls(int(fields["key"]), int(fields["value"]), None, None)
        return cls(int(fields["key"]), int(fields["value"]), int(fields["headers"]), int(fields["header_count"]))


def dead_letter_headers(
    headers: Headers | None,
    reason: Reason,
    detail: str,
    source: str,
    *,
    truncated: Sequence[str] = (),
    original: DeadLetterSizes | None = None,
) -> list[tuple[str, bytes]]:
    """``headers`` (the original's, or what is kept of them) plus reason, detail (see
    :func:`dlq_detail`) and ``topic:partition:offset`` of the source; for a truncated dead letter
    (``truncated``: what was cut, of ``DLQ_CUT_PARTS``) also ``dm-dlq-truncated`` and
    ``dm-dlq-original-bytes``, which is then always the last header."""
    out = list(headers or ()) + [
        (H_DLQ_REASON, reason.value.encode()),
        (H_DLQ_DETAIL, dlq_detail(detail)),
        (H_DLQ_SOURCE, source.encode("utf-8", "replace")),
    ]
    if truncated:
        if original is None or not set(truncated) <= set(DLQ_CUT_PARTS):
            raise ValueError(f"a truncated dead letter needs the original's sizes and parts of {DLQ_CUT_PARTS}")
        out.append((H_DLQ_TRUNCATED, ",".join(part for part in DLQ_CUT_PARTS if part in truncated).encode("ascii")))
        out.append((H_DLQ_ORIGINAL_BYTES, original.encode()))
    return out


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def _headers_size(headers: Sequence[tuple[str, bytes | None]]) -> int:
    return sum(HEADER_OVERHEAD + len(name.encode("utf-8", "surrogatepass")) + len(raw or b"")
               for name, raw in headers)


def encoded_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> int:
    """An upper bound of the bytes one record takes as Kafka encodes it, alone in a record batch:
    ``RECORD_BATCH_OVERHEAD`` (61) + ``RECORD_OVERHEAD`` (100) + key + value + for each header
    its name (UTF-8) and value + ``HEADER_OVERHEAD`` (10). The true size is at most this
    (kafka-python's encoder: tests/consumer/test_dead_letter.py); librdkafka's own check
    (``message.max.bytes``) counts less, without the batch header."""
    return RECORD_BATCH_OVERHEAD + RECORD_OVERHEAD + len(key or b"") + len(value or b"") + _headers_size(headers)


def _small(headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    kept = []
    for name, raw in headers:
        if len(kept) == KEPT_HEADERS:
            break
        try:
            name_bytes = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            continue
        if name_bytes <= KEPT_HEADER_BYTES and len(raw or b"") <= KEPT_HEADER_BYTES:
            kept.append((name, raw))
    return kept


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
    max_bytes: int = DEFAULT_MAX_DEAD_LETTER_BYTES,
    headers_unreadable: bool = False,
) -> OutgoingRecord:
    """The record to publish on ``dlq_topic`` for one rejected input record: the whole copy if
    its :func:`encoded_size` is at most ``max_bytes``, else cut as the module says.
    ``headers_unreadable``: the client could not read the record's headers (``headers`` is then
    ignored). ``max_bytes`` must be at least ``MIN_DEAD_LETTER_BYTES``."""
    if max_bytes < MIN_DEAD_LETTER_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_DEAD_LETTER_BYTES}, got {max_bytes}")
    source = source_of(topic, partition, offset)
    original = [] if headers_unreadable else list(headers or ())
    if not headers_unreadable:
        whole = dead_letter_headers(original, reason, detail, source)
        if encoded_size(key, value, whole) <= max_bytes:
            return OutgoingRecord(dlq_topic, key, value, whole)
    sizes = DeadLetterSizes.of(key, value, original, headers_unreadable=headers_unreadable)
    # Ours, with the longest dm-dlq-truncated value: what the kept parts leave room for.
    most = dead_letter_headers((), reason, detail, source, truncated=DLQ_CUT_PARTS, original=sizes)
    ours = encoded_size(None, None, most)
    cut = {"headers"} if headers_unreadable else set()
    key_bytes = len(key or b"")
    for kept in (_small(original), []):
        room = max_bytes - ours - key_bytes - _headers_size(kept)
        if room >= 0:
            break
    if len(kept) < len(original):
        cut.add("headers")
    if room < 0:  # not even the key fits: no value, and the key's prefix that fits
        room = max_bytes - ours
        if room < 0 or key is None:  # only for a topic name far beyond Kafka's 249 characters
            raise ValueError(f"max_bytes {max_bytes} leaves no room for the dead-letter headers ({ours} bytes)")
        key = key[:room]
        cut.add("key")
        room = 0
    if value and len(value) > room:
        value = value[:room]
        cut.add("value")
    return OutgoingRecord(dlq_topic, key, value,
                          dead_letter_headers(kept, reason, detail, source, truncated=cut, original=sizes))


def is_truncated(record: OutgoingRecord) -> bool:
    """Whether a dead letter is not the whole original (its last header is ``dm-dlq-original-bytes``,
    which only :func:`dead_letter` and :func:`smallest` put there: a copied original's own
    headers always come before ``dm-dlq-source``)."""
    return bool(record.headers) and record.headers[-1][0] == H_DLQ_ORIGINAL_BYTES


def original_sizes(record: OutgoingRecord) -> DeadLetterSizes:
    """The sizes of a dead letter's original: from ``dm-dlq-original-bytes`` when truncated, else
    its own (but for the three ``dm-dlq-`` headers)."""
    if is_truncated(record):
        return DeadLetterSizes.decode(record.headers[-1][1])
    return DeadLetterSizes.of(record.key, record.value, _split(record)[0])


def _split(record: OutgoingRecord) -> tuple[list, list]:
    """(what is copied of the original's headers, the dm-dlq- headers added) of a dead letter."""
    headers = record.headers
    added = 5 if is_truncated(record) else 3
    if len(headers) < added or headers[-added + 2][0] != H_DLQ_SOURCE:
        raise ValueError("not a dead letter: its headers do not end with those of dead_letter_headers")
    return headers[:-added], headers[-added:]


def smallest(record: OutgoingRecord) -> OutgoingRecord:
    """The last resort for a dead letter the broker refused as too large: its key cut to
    ``SMALLEST_KEY_BYTES``, an empty value (a missing one stays missing), none of the original's
    headers, and the ``dm-dlq-`` headers (reason, detail, source, what was cut, the original's
    sizes). Its :func:`encoded_size` is at most about 1.5 KB (a 249-character topic name, a
    512-byte detail). ``smallest(record) == record`` when there is nothing left to cut."""
    copied, added = _split(record)
    sizes = original_sizes(record)
    cut = set(added[3][1].decode("ascii").split(",")) if len(added) == 5 else set()
    key, value = record.key, record.value
    if copied:
        cut.add("headers")
    if value:
        value = b""
        cut.add("value")
    if key is not None and len(key) > SMALLEST_KEY_BYTES:
        key = key[:SMALLEST_KEY_BYTES]
        cut.add("key")
    if not cut:
        return record
    headers = added[:3] + [(H_DLQ_TRUNCATED, ",".join(p for p in DLQ_CUT_PARTS if p in cut).encode("ascii")),
                           (H_DLQ_ORIGINAL_BYTES, sizes.encode())]
    return OutgoingRecord(record.topic, key, value, headers, record.partition)
