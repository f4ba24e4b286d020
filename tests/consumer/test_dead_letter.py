"""Dead letters: the copy of a rejected record, and the cut one when the copy would be too large
for the producer or the broker (property tests against kafka-python's encoder, and a real broker)."""

import random
import threading
import time

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from digitmatch import wire
from digitmatch.consumer.dead_letter import (
    DeadLetterSizes,
    KEPT_HEADER_BYTES,
    MIN_DEAD_LETTER_BYTES,
    SMALLEST_KEY_BYTES,
    dead_letter_headers,
    dlq_detail,
    OutgoingRecord,
    dead_letter,
    encoded_size,
    is_truncated,
    original_sizes,
    smallest,
    source_of,
)
from digitmatch.kafka.client import ClientError
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer


def test_dead_letter_keeps_the_record_and_adds_the_reason():
    key, value, headers = wire.encode_written("p-1", np.zeros((28, 28), np.uint8), digit=4)
    headers = headers + [("traceparent", b"00-abc")]
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=2, offset=17, key=key, value=value[:10],
                      headers=headers, reason=wire.Reason.SIZE_MISMATCH, detail="too short")
    assert out.topic == "pairs.dlq" and out.key == key and out.value == value[:10]
    got = dict(out.headers)
    assert out.headers[: len(headers)] == headers
    assert got[wire.H_DLQ_REASON] == b"size_mismatch"
    assert got[wire.H_DLQ_DETAIL] == b"too short"
    assert got[wire.H_DLQ_SOURCE] == b"pairs.in:2:17"


def test_record_without_key_or_headers():
    out = dead_letter("d", topic="t", partition=0, offset=0, key=None, value=None, headers=None,
                      reason=wire.Reason.MISSING_KEY, detail="no key")
    assert out.key is None and out.value is None
    assert [name for name, _ in out.headers] == [wire.H_DLQ_REASON, wire.H_DLQ_DETAIL, wire.H_DLQ_SOURCE]


def test_source_format():
    assert source_of("pairs.in", 3, 99) == "pairs.in:3:99"


# --------------------------------------------------------------------------- records too large to copy

MB = 1_000_000
BUF = random.Random(0).randbytes(8 * MB)  # keys, values and header values are slices of it
SMALLEST_BOUND = 1500  # what smallest() promises, for topic names of up to 249 characters
WORST_CUT = len(b"headers,value,key")


def kafka_size(record) -> int:
    """The bytes of a record batch holding only ``record``, as kafka-python encodes it."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=2**31 - 1)
    assert builder.append(0, int(time.time() * 1000), record.key, record.value, record.headers) is not None
    return len(builder.build())


def size(record) -> int:
    return encoded_size(record.key, record.value, record.headers)


def slices(largest: int):
    """None or a slice of BUF: small sizes, sizes up to ``largest``, and some around 1 MB."""
    n = st.integers(0, 300) | st.integers(0, largest) | st.integers(MB - 2000, MB + 2000)
    return st.none() | st.tuples(n, st.integers(0, len(BUF) - largest)).map(lambda t: BUF[t[1]: t[1] + t[0]])


header_names = (st.sampled_from(sorted(wire.KNOWN_HEADERS) + ["traceparent", wire.H_DLQ_TRUNCATED, wire.H_DLQ_SOURCE])
                | st.text(max_size=80) | st.integers(0, 400_000).map(lambda n: "n" * n))
header_values = st.none() | st.binary(max_size=70) | slices(2 * MB)
topics = st.text("abcxyz.-_019", min_size=1, max_size=249)


def check_dead_letter(original, out, max_bytes, unreadable, reason, detail, source):
    """Everything a dead letter must be; ``original``: (key, value, headers)."""
    key, value, headers = original
    headers = list(headers or ())
    assert size(out) <= max_bytes
    assert kafka_size(out) <= size(out)  # the estimate is an upper bound of the real encoding
    names = [name for name, _ in out.headers]
    whole = dead_letter_headers(headers, reason, detail, source)
    if not unreadable and encoded_size(key, value, whole) <= max_bytes:
        assert not is_truncated(out)  # a copy that fits is sent as it is
        assert (out.key, out.value, out.headers[: len(headers)]) == (key, value, headers)
        assert names[len(headers):] == [wire.H_DLQ_REASON, wire.H_DLQ_DETAIL, wire.H_DLQ_SOURCE]
        return
    assert is_truncated(out)
    assert names[-5:] == [wire.H_DLQ_REASON, wire.H_DLQ_DETAIL, wire.H_DLQ_SOURCE, wire.H_DLQ_TRUNCATED,
                          wire.H_DLQ_ORIGINAL_BYTES]
    kept = out.headers[:-5]
    sizes = DeadLetterSizes.decode(out.headers[-1][1])
    assert sizes == DeadLetterSizes.of(key, value, headers, headers_unreadable=unreadable) == original_sizes(out)
    cut = out.headers[-2][1].decode("ascii").split(",")
    assert cut == [part for part in wire.DLQ_CUT_PARTS if part in cut]
    # What is kept is a prefix (key, value) or a subsequence of small ones (headers) of the original.
    assert (out.value is None) == (value is None) and value is None or value.startswith(out.value)
    assert (out.key is None) == (key is None) and key is None or key.startswith(out.key)
    rest = iter(headers)
    assert all(any(item == other for other in rest) for item in kept)
    assert all(len(n.encode()) <= KEPT_HEADER_BYTES and len(v or b"") <= KEPT_HEADER_BYTES for n, v in kept)
    assert ("headers" in cut) == (unreadable or kept != headers)
    assert ("value" in cut) == (out.value != value)
    assert ("key" in cut) == (out.key != key)
    if "key" in cut:
        assert not out.value and not kept
    if "key" in cut or "value" in cut and out.value:  # cut only as far as needed
        assert max_bytes - size(out) <= WORST_CUT


@settings(max_examples=300, deadline=None)
@given(
    key=slices(3 * MB),
    value=slices(4 * MB),
    headers=st.none() | st.lists(st.tuples(header_names, header_values), max_size=24),
    max_bytes=st.sampled_from([MIN_DEAD_LETTER_BYTES, MB]) | st.integers(MIN_DEAD_LETTER_BYTES, 5 * MB),
    topic=topics,
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**63 - 1),
    reason=st.sampled_from(wire.Reason),
    detail=st.text(max_size=600) | st.integers(0, 2000).map(lambda n: "é" * n),
    unreadable=st.sampled_from([False, False, False, True]),
)
def test_any_dead_letter_fits(key, value, headers, max_bytes, topic, partition, offset, reason, detail, unreadable):
    out = dead_letter("pairs.dlq", topic=topic, partition=partition, offset=offset, key=key, value=value,
                      headers=None if unreadable else headers, reason=reason, detail=detail,
                      max_bytes=max_bytes, headers_unreadable=unreadable)
    original = (key, value, None if unreadable else headers)
    check_dead_letter(original, out, max_bytes, unreadable, reason, detail, source_of(topic, partition, offset))
    event("cut: " + (out.headers[-2][1].decode() if is_truncated(out) else "nothing"))
    event(f"original: {encoded_size(key, value, headers or ()) // MB} MB")
    got = dict(out.headers[-5:] if is_truncated(out) else out.headers[-3:])
    assert got[wire.H_DLQ_REASON] == reason.value.encode()
    assert got[wire.H_DLQ_DETAIL] == dlq_detail(detail)
    assert got[wire.H_DLQ_SOURCE] == source_of(topic, partition, offset).encode()
    # The last resort: small whatever the original, and the same facts about it.
    least = smallest(out)
    assert size(least) <= SMALLEST_BOUND and kafka_size(least) <= size(least)
    assert smallest(least) == least
    assert least.headers[:3] == [(n, v) for n, v in out.headers if n in (wire.H_DLQ_REASON, wire.H_DLQ_DETAIL,
                                                                          wire.H_DLQ_SOURCE)][-3:]
    assert original_sizes(least) == original_sizes(out)
    assert least.key is None or len(least.key) <= SMALLEST_KEY_BYTES and (key or b"").startswith(least.key)
    assert least.value in (None, b"") and (least.value is None) == (value is None)
    if least != out:
        assert is_truncated(least) and len(least.headers) == 5


@settings(max_examples=100, deadline=None)
@given(
    key=st.none() | st.binary(max_size=200),
    value=st.none() | st.binary(max_size=6000),
    headers=st.none() | st.lists(st.tuples(st.text(max_size=30), st.none() | st.binary(max_size=300)), max_size=20),
    max_bytes=st.integers(MIN_DEAD_LETTER_BYTES, 12_000),
)
def test_small_records_near_the_limit(key, value, headers, max_bytes):
    """Exhaustive around max_bytes: the cut or not-cut decision at each byte of the boundary."""
    out = dead_letter("d", topic="pairs.in", partition=1, offset=2, key=key, value=value, headers=headers,
                      reason=wire.Reason.SIZE_MISMATCH, detail="x", max_bytes=max_bytes)
    check_dead_letter((key, value, headers), out, max_bytes, False, wire.Reason.SIZE_MISMATCH, "x", "pairs.in:1:2")


@settings(max_examples=100, deadline=None)
@given(
    frames=st.integers(1, 1000),
    extra=st.integers(-3000, 3000),
    max_bytes=st.sampled_from([MIN_DEAD_LETTER_BYTES, MB]) | st.integers(MIN_DEAD_LETTER_BYTES, 2 * MB),
    trace=st.booleans(),
)
def test_a_value_around_the_limit_is_cut_and_its_headers_kept(frames, extra, max_bytes, trace):
    """The attack as it comes: valid headers, a value of about max_bytes."""
    key, _, headers = wire.encode_spoken("p-1", np.ones((frames, 13), np.float32), digit=4, produced_ms=1)
    headers = headers + [("traceparent", b"00-" + b"a" * 52)] * trace
    value = BUF[: max(0, max_bytes + extra)]
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=3, offset=10**9, key=key, value=value, headers=headers,
                      reason=wire.Reason.TOO_LARGE, detail="value too large", max_bytes=max_bytes)
    check_dead_letter((key, value, headers), out, max_bytes, False, wire.Reason.TOO_LARGE, "value too large",
                      "pairs.in:3:1000000000")
    assert out.key == key and out.headers[: len(headers)] == headers
    if is_truncated(out):
        assert out.headers[-2] == (wire.H_DLQ_TRUNCATED, b"value")


def test_a_megabyte_value_is_cut_and_keeps_its_headers():
    key, _, headers = wire.encode_spoken("p-1", np.ones((3, 13), np.float32), digit=4)
    headers = headers + [("traceparent", b"00-" + b"a" * 50)]
    value = BUF[:MB]
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=0, offset=9, key=key, value=value, headers=headers,
                      reason=wire.Reason.TOO_LARGE, detail="value is 1000000 bytes")
    assert is_truncated(out) and size(out) <= MB
    assert out.key == key and out.headers[: len(headers)] == headers and value.startswith(out.value)
    assert dict(out.headers)[wire.H_DLQ_TRUNCATED] == b"value"
    assert original_sizes(out) == DeadLetterSizes(len(key), MB, sum(len(n) + len(v) for n, v in headers),
                                                       len(headers))


def test_huge_headers_are_dropped_and_small_ones_kept():
    key, value, headers = wire.encode_written("p-2", np.zeros((28, 28), np.uint8))
    headers = headers[:2] + [("dm-padding", b"p" * 999_000)] + headers[2:] + [("x-" + "n" * 100, b"1")]
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=0, offset=9, key=key, value=value, headers=headers,
                      reason=wire.Reason.UNKNOWN_HEADER, detail="unknown header 'dm-padding'")
    assert is_truncated(out) and (out.key, out.value) == (key, value)
    assert out.headers[:-5] == [h for h in headers if h[0].startswith("dm-") and h[0] != "dm-padding"]
    assert dict(out.headers)[wire.H_DLQ_TRUNCATED] == b"headers"


def test_unreadable_headers_are_said_so():
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=3, offset=4, key=b"k", value=b"v", headers=None,
                      reason=wire.Reason.BAD_HEADER, detail="a header name is not UTF-8",
                      headers_unreadable=True)
    assert (out.key, out.value) == (b"k", b"v") and is_truncated(out)
    assert out.headers[-2:] == [(wire.H_DLQ_TRUNCATED, b"headers"),
                                (wire.H_DLQ_ORIGINAL_BYTES, b"key=1,value=1,headers=unreadable")]


def test_forged_dead_letter_headers_in_the_original_change_nothing():
    headers = [(wire.H_DLQ_TRUNCATED, b"value"), (wire.H_DLQ_ORIGINAL_BYTES, b"key=1,value=1,headers=0,header_count=0")]
    out = dead_letter("d", topic="t", partition=0, offset=0, key=b"k", value=b"v", headers=headers,
                      reason=wire.Reason.UNKNOWN_HEADER, detail="x")
    assert not is_truncated(out) and out.headers[:2] == headers
    sizes = DeadLetterSizes.of(b"k", b"v", headers).encode()
    assert smallest(out).headers[-2:] == [(wire.H_DLQ_TRUNCATED, b"headers,value"), (wire.H_DLQ_ORIGINAL_BYTES, sizes)]


def test_limits_of_the_options():
    with pytest.raises(ValueError):
        dead_letter("d", topic="t", partition=0, offset=0, key=None, value=None, headers=None,
                    reason=wire.Reason.MISSING_KEY, detail="", max_bytes=MIN_DEAD_LETTER_BYTES - 1)
    with pytest.raises(ValueError):
        smallest(OutgoingRecord("d", b"k", b"v", [("h", b"")]))


# --------------------------------------------------------------------------- a real broker and producer
#
# Measured: the embedded broker (Tansu) has no record size limit of its own (it took 100 MB records,
# and ignores a topic's max.message.bytes); the limit that bites is librdkafka's message.max.bytes,
# 1,000,000 by default, checked when a record is queued, over key + value + headers + 36 bytes of
# record overhead + 2 per header (without the 61-byte batch header): a 1-byte key and a 999,963-byte
# value are the largest it takes. A larger one is refused at once with MSG_SIZE_TOO_LARGE.

def deliver(producer, record, timeout_s: float = 20.0):
    """("ok", offset) or ("error", message) for one record."""
    done, result = threading.Event(), []
    try:
        producer.produce(record, lambda error, offset: (
            result.append(("ok", offset) if error is None else ("error", str(error))), done.set()))
    except ClientError as exc:
        return "error", str(exc)
    assert done.wait(timeout_s), "no delivery report"
    return result[0]


def read_back(broker, offset: int):
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "dlq-size-test",
                                         "enable.auto.commit": False, "fetch.message.max.bytes": 8 * MB})
    try:
        consumer.assign([confluent_kafka.TopicPartition(wire.TOPIC_DLQ, 0, offset)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return message.key(), message.value(), message.headers() or []
        raise AssertionError(f"offset {offset} of {wire.TOPIC_DLQ} not read back")
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def producer(broker):
    producer = LibrdkafkaProducer(broker.connection)  # message.max.bytes: librdkafka's default, 1,000,000
    yield producer
    producer.close(5)


def room(key, value, headers, more_headers=0) -> int:
    """What is left under librdkafka's default message.max.bytes (measured above), with a margin."""
    return MB - 40 - len(key) - len(value) - sum(len(n) + len(v) + 3 for n, v in headers) - 12 * more_headers


ATTACKS = {  # the attacker's records: as large as the producer takes, so pairs.in has them
    "1 MB value": lambda key, headers: (key, BUF[: room(key, b"", headers)], headers),
    "900 KB of headers": lambda key, headers: (key, BUF[:784], headers + [
        (f"x-pad-{i}", BUF[: room(key, BUF[:784], headers, 10) // 10]) for i in range(10)]),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_producer_takes_the_dead_letter_of_a_record_near_its_limit(broker, producer, attack):
    key, _, headers = wire.encode_written("p-3", np.zeros((28, 28), np.uint8))
    key, value, headers = ATTACKS[attack](key, headers)
    source = OutgoingRecord(wire.TOPIC_PAIRS, key, value, headers)
    status, offset = deliver(producer, source)
    assert status == "ok", offset  # the attacker's record is one the broker holds
    args = dict(topic=wire.TOPIC_PAIRS, partition=0, offset=offset, key=key, value=value, headers=headers,
                reason=wire.Reason.TOO_LARGE, detail="x" * 5000)
    whole = dead_letter(wire.TOPIC_DLQ, **args, max_bytes=100 * MB)
    assert not is_truncated(whole)
    status, error = deliver(producer, whole)
    assert status == "error" and "MSG_SIZE_TOO_LARGE" in error  # what the matcher retried forever
    out = dead_letter(wire.TOPIC_DLQ, **args, max_bytes=MB)
    assert is_truncated(out)
    status, offset = deliver(producer, out)
    assert status == "ok", offset
    assert read_back(broker, offset) == (out.key, out.value, out.headers)


def test_the_smallest_form_passes_a_limit_below_max_bytes(broker):
    """The last resort: a producer (or topic) limit below --max-dead-letter-bytes."""
    tight = LibrdkafkaProducer(broker.connection, **{"message.max.bytes": 2000})
    try:
        out = dead_letter(wire.TOPIC_DLQ, topic=wire.TOPIC_PAIRS, partition=0, offset=1, key=b"k" * 5000,
                          value=BUF[:MB], headers=[("traceparent", b"00-abc")], reason=wire.Reason.BAD_PAIR_ID,
                          detail="é" * 1000, max_bytes=MIN_DEAD_LETTER_BYTES)
        status, error = deliver(tight, out)
        assert status == "error" and "MSG_SIZE_TOO_LARGE" in error
        least = smallest(out)
        status, offset = deliver(tight, least)
        assert status == "ok", offset
        assert read_back(broker, offset) == (least.key, least.value, least.headers)
    finally:
        tight.close(5)


def test_the_embedded_broker_itself_takes_records_beyond_a_megabyte(broker):
    """So the limit these tests meet is the producer's, as with a Kafka broker's default
    message.max.bytes (1 MiB + 12), which is above librdkafka's default 1,000,000."""
    large = LibrdkafkaProducer(broker.connection, **{"message.max.bytes": 8 * MB})
    try:
        status, offset = deliver(large, OutgoingRecord(wire.TOPIC_DLQ, b"k", BUF[: 5 * MB], []))
        assert status == "ok", offset
    finally:
        large.close(5)
