"""The wire schema: round trips, one crafted message per dead-letter reason, and fuzzing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitmatch import wire
from digitmatch.consumer.dead_letter import DeadLetterSizes, dead_letter_headers, dlq_detail
from digitmatch.wire import InvalidMessage, Reason

RNG = np.random.default_rng(0)
FRAMES = RNG.normal(size=(37, 13)).astype(np.float32)
IMAGE = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
PCM = RNG.integers(-2000, 2000, size=4321, dtype=np.int16)
# Raised by the matcher's join (tests/consumer), not by decoding one record.
JOIN_REASONS = {Reason.CONFLICTING_DUPLICATE, Reason.ALREADY_DECIDED}
# Given by the matcher to a record its Kafka client could not read (tests/reliability), not by decoding.
CLIENT_REASONS = {Reason.UNREADABLE}
# Given by the matcher's partition check (tests/consumer/test_routing.py), not by decoding.
ROUTING_REASONS = {Reason.MISROUTED}


def test_spoken_round_trip():
    key, value, headers = wire.encode_spoken("run-1", FRAMES, digit=7, produced_ms=123)
    half = wire.decode_half(key, value, headers)
    assert half.pair_id == "run-1" and half.half is wire.Half.SPOKEN
    assert half.digit == 7 and half.produced_ms == 123
    np.testing.assert_array_equal(half.array, FRAMES)
    assert half.array.dtype == np.float32


def test_pcm16_round_trip():
    key, value, headers = wire.encode_spoken_pcm16("run-1", PCM, 16000, digit=4, produced_ms=9)
    assert dict(headers) == {wire.H_SCHEMA: b"2", wire.H_HALF: b"spoken", wire.H_SHAPE: b"4321",
                             wire.H_DTYPE: b"<i2", wire.H_ENCODING: b"pcm16", wire.H_SAMPLE_RATE: b"16000",
                             wire.H_DIGIT: b"4", wire.H_PRODUCED_MS: b"9"}
    assert value == PCM.astype("<i2").tobytes()
    half = wire.decode_half(key, value, headers)
    assert half.half is wire.Half.SPOKEN and half.encoding is wire.Encoding.PCM16 and half.sample_rate == 16000
    assert half.array.dtype == np.int16 and half.array.shape == (4321,)
    np.testing.assert_array_equal(half.array, PCM)
    assert (half.digit, half.produced_ms) == (4, 9)


def test_mfcc_halves_stay_schema_1_and_schema_2_reads_them_alike():
    key, value, headers = wire.encode_spoken("p", FRAMES)
    assert dict(headers)[wire.H_SCHEMA] == b"1" and wire.H_ENCODING not in dict(headers)
    plain = wire.decode_half(key, value, headers)
    assert plain.encoding is wire.Encoding.MFCC and plain.sample_rate is None
    for extra in ([], [(wire.H_ENCODING, b"mfcc")]):
        v2 = [(n, b"2" if n == wire.H_SCHEMA else v) for n, v in headers] + extra
        half = wire.decode_half(key, value, v2)
        assert half.encoding is wire.Encoding.MFCC and np.array_equal(half.array, plain.array)
    written = [(n, b"2" if n == wire.H_SCHEMA else v) for n, v in wire.encode_written("p", IMAGE)[2]]
    assert wire.decode_half(b"p", IMAGE.tobytes(), written).encoding is None


def test_written_round_trip_without_optional_headers():
    key, value, headers = wire.encode_written("a.b:c-9", IMAGE)
    assert {name for name, _ in headers} == set(wire.REQUIRED_HEADERS)
    half = wire.decode_half(key, value, headers)
    assert half.half is wire.Half.WRITTEN and half.digit is None and half.produced_ms is None
    np.testing.assert_array_equal(half.array, IMAGE)


def test_foreign_headers_are_carried_not_interpreted():
    key, value, headers = wire.encode_written("p1", IMAGE)
    half = wire.decode_half(key, value, headers + [("traceparent", b"00-abc"), ("x", None)])
    assert half.pair_id == "p1"


def test_verdict_round_trip():
    verdict = wire.Verdict(
        pair_id="p1",
        outcome="match",
        score=0.912345,
        threshold=0.5,
        model=wire.ModelRef(name="digitmatch", version=3),
        truth=wire.Truth(spoken=4, written=4),
        correct=True,
        timestamps=wire.Timestamps(produced_ms=1, first_seen_ms=2, joined_ms=3, decided_ms=4),
        latency_ms=wire.Latencies(join_wait=1.0, end_to_end=3.0),
    )
    assert wire.Verdict.from_bytes(verdict.to_bytes()) == verdict


def _spoken(**changes):
    key, value, headers = wire.encode_spoken("p1", FRAMES, digit=3, produced_ms=1)
    return _edit(key, value, headers, changes)


def _pcm(**changes):
    key, value, headers = wire.encode_spoken_pcm16("p1", PCM, 8000, digit=3)
    return _edit(key, value, headers, changes)


def _written(**changes):
    key, value, headers = wire.encode_written("p1", IMAGE, digit=3)
    return _edit(key, value, headers, changes)


def _edit(key, value, headers, changes):
    headers = dict(headers)
    for name, raw in changes.pop("headers", {}).items():
        if raw is None:
            headers.pop(name)
        else:
            headers[name] = raw
    record = {"key": key, "value": value, "headers": list(headers.items())}
    record.update(changes)
    return record


def _nan_frames():
    frames = FRAMES.copy()
    frames[5, 2] = np.nan
    return frames.tobytes()


CRAFTED = [
    (Reason.MISSING_KEY, _written(key=None)),
    (Reason.BAD_PAIR_ID, _written(key=b"has space")),
    (Reason.BAD_PAIR_ID, _written(key=b"\xff\xfe")),
    (Reason.BAD_PAIR_ID, _written(key=b"x" * 129)),
    (Reason.MISSING_HEADER, _written(headers={wire.H_HALF: None})),
    (Reason.DUPLICATE_HEADER, {**_written(), "headers": _written()["headers"] + [(wire.H_DIGIT, b"3")]}),
    (Reason.UNKNOWN_HEADER, _written(headers={"dm-colour": b"blue"})),
    (Reason.UNKNOWN_HEADER, _spoken(headers={wire.H_ENCODING: b"mfcc"})),  # schema 1 has no dm-encoding
    (Reason.UNKNOWN_HEADER, _pcm(headers={wire.H_SCHEMA: b"1"})),
    (Reason.MISSING_HEADER, _pcm(headers={wire.H_SAMPLE_RATE: None})),
    (Reason.BAD_HEADER, _pcm(headers={wire.H_SAMPLE_RATE: b"12345"})),  # not a rate accepted
    (Reason.BAD_HEADER, _pcm(headers={wire.H_SAMPLE_RATE: b"08000"})),
    (Reason.BAD_HEADER, _pcm(headers={wire.H_ENCODING: b"pcm24"})),
    (Reason.BAD_HEADER, _pcm(headers={wire.H_ENCODING: b"PCM16"})),
    (Reason.BAD_HEADER, _pcm(headers={wire.H_ENCODING: b"mfcc"})),  # a rate without pcm16
    (Reason.BAD_HEADER, {**_written(headers={wire.H_SCHEMA: b"2"}),
                         "headers": _written(headers={wire.H_SCHEMA: b"2"})["headers"] + [(wire.H_ENCODING, b"mfcc")]}),
    (Reason.BAD_DTYPE, _pcm(headers={wire.H_DTYPE: b"<f4"})),
    (Reason.BAD_DTYPE, _pcm(headers={wire.H_DTYPE: b">i2"})),
    (Reason.BAD_SHAPE, _pcm(headers={wire.H_SHAPE: b"4321,1"})),
    (Reason.BAD_SHAPE, _pcm(headers={wire.H_SHAPE: b"0"}, value=b"")),
    (Reason.TOO_LARGE, _pcm(headers={wire.H_SHAPE: b"80001"}, value=bytes(160002))),  # 10 s at 8 kHz + 1
    (Reason.SIZE_MISMATCH, _pcm(value=PCM.tobytes()[:-1])),
    (Reason.SIZE_MISMATCH, _pcm(value=None)),
    (Reason.BAD_HEADER, _written(headers={wire.H_DIGIT: b"12"})),
    (Reason.BAD_HEADER, _written(headers={wire.H_HALF: b"sung"})),
    (Reason.BAD_HEADER, _written(headers={wire.H_PRODUCED_MS: b"-5"})),
    (Reason.BAD_HEADER, _written(headers={wire.H_DIGIT: "٣".encode()})),
    (Reason.BAD_HEADER, _written(headers={wire.H_DIGIT: b"1" * 65})),
    (Reason.UNSUPPORTED_SCHEMA, _written(headers={wire.H_SCHEMA: b"3"})),
    (Reason.UNSUPPORTED_SCHEMA, _written(headers={wire.H_SCHEMA: b"0"})),
    (Reason.BAD_SHAPE, _written(headers={wire.H_SHAPE: b"28,x"})),
    (Reason.BAD_SHAPE, _written(headers={wire.H_SHAPE: b"784"})),
    (Reason.BAD_SHAPE, _spoken(headers={wire.H_SHAPE: b"37,12"})),
    (Reason.BAD_SHAPE, _spoken(headers={wire.H_SHAPE: b"0,13"}, value=b"")),
    (Reason.BAD_DTYPE, _spoken(headers={wire.H_DTYPE: b"<f8"})),
    (Reason.BAD_DTYPE, _written(headers={wire.H_DTYPE: b"<f4"})),
    (Reason.TOO_LARGE, _spoken(headers={wire.H_SHAPE: b"1001,13"})),
    (Reason.TOO_LARGE, _spoken(value=b"\0" * (wire.MAX_VALUE_BYTES + 4))),
    (Reason.SIZE_MISMATCH, _spoken(value=FRAMES.tobytes()[:-4])),
    (Reason.SIZE_MISMATCH, _written(value=None)),
    (Reason.NON_FINITE, _spoken(value=_nan_frames())),
]


@pytest.mark.parametrize("reason, record", CRAFTED, ids=[f"{r.value}-{i}" for i, (r, _) in enumerate(CRAFTED)])
def test_crafted_record_is_rejected_with_its_reason(reason, record):
    with pytest.raises(InvalidMessage) as caught:
        wire.decode_half(record["key"], record["value"], record["headers"])
    assert caught.value.reason is reason
    headers = dead_letter_headers(record["headers"], caught.value.reason, caught.value.detail, "pairs.in:0:7")
    assert headers[: len(record["headers"])] == list(record["headers"])
    assert dict(headers[-3:]) == {
        wire.H_DLQ_REASON: reason.value.encode(),
        wire.H_DLQ_DETAIL: caught.value.detail.encode()[:512],
        wire.H_DLQ_SOURCE: b"pairs.in:0:7",
    }


# One spelling per value: each of these is how a lenient parser (int(), str.isdigit) would have
# read a valid value, and each is refused with the header's reason.
NOT_CANONICAL = [
    (wire.H_SCHEMA, b"01", Reason.BAD_HEADER),
    (wire.H_SCHEMA, b"+1", Reason.BAD_HEADER),
    (wire.H_SCHEMA, b" 1", Reason.BAD_HEADER),
    (wire.H_SCHEMA, b"1 ", Reason.BAD_HEADER),
    (wire.H_SCHEMA, b"1_0", Reason.BAD_HEADER),
    (wire.H_DIGIT, b"07", Reason.BAD_HEADER),
    (wire.H_DIGIT, b"+7", Reason.BAD_HEADER),
    (wire.H_DIGIT, "٧".encode(), Reason.BAD_HEADER),  # Arabic-Indic seven
    (wire.H_DIGIT, "７".encode(), Reason.BAD_HEADER),  # fullwidth seven
    (wire.H_PRODUCED_MS, b"1e3", Reason.BAD_HEADER),
    (wire.H_PRODUCED_MS, b"0123", Reason.BAD_HEADER),
    (wire.H_PRODUCED_MS, b"1.0", Reason.BAD_HEADER),
    (wire.H_SHAPE, b" 28,28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"28, 28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"28,28 ", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"028,28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"+28,28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"28,,28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"28,28,", Reason.BAD_SHAPE),
    (wire.H_SHAPE, b"2_8,28", Reason.BAD_SHAPE),
    (wire.H_SHAPE, "٢٨,28".encode(), Reason.BAD_HEADER),  # not ASCII: refused before parsing
]


@pytest.mark.parametrize("name, raw, reason", NOT_CANONICAL, ids=[f"{n}={r!r}" for n, r, _ in NOT_CANONICAL])
def test_header_values_have_one_spelling(name, raw, reason):
    record = _written(headers={name: raw})
    with pytest.raises(InvalidMessage) as caught:
        wire.decode_half(record["key"], record["value"], record["headers"])
    assert caught.value.reason is reason
    # ... also when a valid record with the same other headers was remembered first (wire._layout)
    valid = _written()
    wire.decode_half(valid["key"], valid["value"], valid["headers"])
    with pytest.raises(InvalidMessage) as again:
        wire.decode_half(record["key"], record["value"], record["headers"])
    assert again.value.reason is reason


def test_canonical_values_are_accepted():
    record = _written(headers={wire.H_DIGIT: b"0", wire.H_PRODUCED_MS: b"0"})
    half = wire.decode_half(record["key"], record["value"], record["headers"])
    assert (half.digit, half.produced_ms) == (0, 0)
    spoken = _pcm(headers={wire.H_SHAPE: b"1"}, value=b"\x01\x00")
    assert wire.decode_half(spoken["key"], spoken["value"], spoken["headers"]).array.tolist() == [1]


@pytest.mark.parametrize("rate", wire.PCM_SAMPLE_RATES)
def test_pcm16_limits_at_each_rate(rate):
    most = wire.MAX_PCM_SECONDS * rate
    key, value, headers = wire.encode_spoken_pcm16("p", np.zeros(most, np.int16), rate)
    assert wire.decode_half(key, value, headers).array.shape == (most,)
    assert len(value) <= wire.MAX_VALUE_BYTES
    with pytest.raises(InvalidMessage) as caught:
        wire.encode_spoken_pcm16("p", np.zeros(most + 1, np.int16), rate)
    assert caught.value.reason is Reason.TOO_LARGE


def test_every_decoding_reason_has_a_crafted_record():
    assert {reason for reason, _ in CRAFTED} == set(Reason) - JOIN_REASONS - CLIENT_REASONS - ROUTING_REASONS


def test_the_wire_format_page_lists_every_reason():
    page = (Path(__file__).resolve().parents[1] / "docs" / "wire-format.md").read_text()
    table = page.split("Reasons (`wire.Reason`", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert sorted(listed) == sorted(reason.value for reason in Reason)


@pytest.mark.parametrize(
    "encode, reason",
    [
        (lambda: wire.encode_spoken("p", np.zeros((0, 13))), Reason.BAD_SHAPE),
        (lambda: wire.encode_spoken("p", np.zeros((1001, 13))), Reason.TOO_LARGE),
        (lambda: wire.encode_spoken("p", np.full((3, 13), np.inf)), Reason.NON_FINITE),
        (lambda: wire.encode_written("p", IMAGE.astype(np.int16)), Reason.BAD_DTYPE),
        (lambda: wire.encode_written("p", IMAGE[:27]), Reason.BAD_SHAPE),
        (lambda: wire.encode_written("-starts-with-dash", IMAGE), Reason.BAD_PAIR_ID),
        (lambda: wire.encode_spoken_pcm16("p", PCM.astype(np.int32), 8000), Reason.BAD_DTYPE),
        (lambda: wire.encode_spoken_pcm16("p", PCM.reshape(-1, 1), 8000), Reason.BAD_SHAPE),
        (lambda: wire.encode_spoken_pcm16("p", PCM[:0], 8000), Reason.BAD_SHAPE),
        (lambda: wire.encode_spoken_pcm16("p", PCM, 12000), Reason.BAD_HEADER),
    ],
)
def test_encoders_refuse_what_the_matcher_would_reject(encode, reason):
    with pytest.raises(InvalidMessage) as caught:
        encode()
    assert caught.value.reason is reason


header_names = st.sampled_from(sorted(wire.KNOWN_HEADERS) + ["dm-x", "other"]) | st.text(max_size=12)
header_values = st.none() | st.binary(max_size=80) | st.sampled_from([b"1", b"2", b"spoken", b"written", b"28,28",
                                                                      b"5,13", b"<f4", b"|u1", b"7", b"pcm16",
                                                                      b"mfcc", b"<i2", b"8000", b"600"])


@settings(max_examples=400, deadline=None)
@given(
    key=st.none() | st.binary(max_size=140),
    value=st.none() | st.binary(max_size=1200),
    headers=st.lists(st.tuples(header_names, header_values), max_size=8),
)
def test_random_records_raise_nothing_but_invalid_message(key, value, headers):
    try:
        half = wire.decode_half(key, value, headers)
    except InvalidMessage as exc:
        assert isinstance(exc.reason, Reason)
    else:
        assert half.array.nbytes == len(value)


@settings(max_examples=150, deadline=None)
@given(
    frames=st.integers(1, 60),
    digit=st.none() | st.integers(0, 9),
    produced=st.none() | st.integers(0, 2**53),
    drop=st.sampled_from([None, *wire.REQUIRED_HEADERS]),
    corrupt=st.binary(max_size=8),
)
def test_mutated_valid_records_raise_nothing_but_invalid_message(frames, digit, produced, drop, corrupt):
    key, value, headers = wire.encode_spoken("p", np.ones((frames, 13), np.float32), digit, produced)
    headers = [(n, v) for n, v in headers if n != drop]
    for mutated in (value, value + corrupt, value[: len(corrupt)]):
        try:
            wire.decode_half(key, mutated, headers)
        except InvalidMessage:
            pass


def _outcome(read, headers):
    try:
        return read(headers)
    except InvalidMessage as exc:
        return exc.reason, str(exc)


produced_values = (st.none() | st.integers(0, 2**53).map(lambda n: str(n).encode()) | st.binary(max_size=70)
                   | st.integers(60, 70).map(lambda n: b"7" * n))  # around the length limit


@settings(max_examples=300, deadline=None)
@given(
    half=st.sampled_from(["spoken", "written", "pcm16"]),
    frames=st.integers(1, 60),
    digit=st.none() | st.integers(0, 9),
    produced=st.lists(produced_values, max_size=3),
    extra=st.lists(st.tuples(header_names, header_values), max_size=3),
    where=st.integers(0, 8),
)
def test_remembered_layouts_answer_like_the_header_by_header_check(half, frames, digit, produced, extra, where):
    """decode_half remembers checked header sets (without dm-produced-ms): the answer, reason and
    message must be those of checking every header, on the first record and on later ones."""
    if half == "spoken":
        _, _, headers = wire.encode_spoken("p", np.ones((frames, 13), np.float32), digit)
    elif half == "pcm16":
        _, _, headers = wire.encode_spoken_pcm16("p", np.ones(frames * 80, np.int16), 8000, digit)
    else:
        _, _, headers = wire.encode_written("p", IMAGE, digit)
    headers = headers + [(wire.H_PRODUCED_MS, value) for value in produced]
    headers[where:where] = extra
    expected = _outcome(wire._checked_layout, headers)
    assert _outcome(wire._layout, headers) == expected
    assert _outcome(wire._layout, list(headers)) == expected  # remembered by now, if it passed


def _one_by_one(record):
    try:
        return wire.decode_half(record.key, record.value, record.headers)
    except InvalidMessage as exc:
        return exc


def _same_answer(got, expected):
    if isinstance(expected, InvalidMessage):
        return isinstance(got, InvalidMessage) and (got.reason, str(got)) == (expected.reason, str(expected))
    return (not isinstance(got, InvalidMessage) and got._replace(array=None) == expected._replace(array=None)
            and got.array.dtype == expected.array.dtype and np.array_equal(got.array, expected.array, equal_nan=True))


class _Record:
    def __init__(self, record):
        self.key, self.value, self.headers = record["key"], record["value"], record["headers"]


VALID = [_spoken(), _written(), _pcm(), _spoken(headers={wire.H_PRODUCED_MS: b"17"}),
         _spoken(headers={wire.H_SHAPE: b"2,13"}, value=FRAMES[:2].tobytes())]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(VALID + [record for _, record in CRAFTED]), max_size=12))
def test_a_poll_decoded_at_once_answers_as_each_record_alone(records):
    records = [_Record(record) for record in records]
    decoded = wire.decode_halves(records)
    assert len(decoded) == len(records)
    for record, got in zip(records, decoded):
        assert _same_answer(got, _one_by_one(record))
        if isinstance(got, InvalidMessage):
            assert got.__traceback__ is None  # a stored exception keeps no frames alive


def test_non_finite_frames_fail_only_their_own_record():
    bad = _Record(_spoken(value=_nan_frames()))
    inf = FRAMES.copy()
    inf[-1, -1] = np.inf
    worse = _Record(_spoken(value=inf.tobytes()))
    good = [_Record(_spoken()), _Record(_written()), _Record(_pcm())]
    decoded = wire.decode_halves([good[0], bad, good[1], worse, good[2]])
    assert [d.reason if isinstance(d, InvalidMessage) else d.half.value for d in decoded] == [
        "spoken", Reason.NON_FINITE, "written", Reason.NON_FINITE, "spoken"]
    assert wire.decode_halves([]) == []


# --------------------------------------------------------------------------- dead-letter headers


@settings(max_examples=300, deadline=None)
@given(detail=st.text(max_size=700) | st.integers(0, 400).map(lambda n: "é" * n + "€" * n + "😀" * n))
def test_dead_letter_detail_is_cut_at_a_character_boundary(detail):
    raw = dlq_detail(detail)
    assert len(raw) <= wire.MAX_DLQ_DETAIL_BYTES
    text = raw.decode("utf-8")  # a whole number of characters
    assert detail.startswith(text)
    full = detail.encode("utf-8")
    if len(full) <= wire.MAX_DLQ_DETAIL_BYTES:
        assert raw == full
    else:
        assert len(raw) > wire.MAX_DLQ_DETAIL_BYTES - 4  # at most one character less than the cap


def test_dead_letter_detail_with_a_lone_surrogate_is_still_utf8():
    assert dlq_detail("a\udc80b") == b"a?b"


@settings(max_examples=200, deadline=None)
@given(
    key=st.none() | st.binary(max_size=20),
    value=st.none() | st.binary(max_size=20),
    headers=st.none() | st.lists(st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=10)), max_size=5),
    unreadable=st.booleans(),
)
def test_dead_letter_sizes_round_trip(key, value, headers, unreadable):
    sizes = DeadLetterSizes.of(key, value, headers, headers_unreadable=unreadable)
    assert sizes.key == len(key or b"") and sizes.value == len(value or b"")
    if unreadable:
        assert sizes.headers is None and sizes.encode().endswith(b",headers=unreadable")
    else:
        assert sizes.header_count == len(headers or ())
        assert sizes.headers == sum(len(n.encode()) + len(v or b"") for n, v in headers or ())
    assert DeadLetterSizes.decode(sizes.encode()) == sizes
    sizes.encode().decode("ascii")


def test_truncated_dead_letter_headers_come_last_in_a_fixed_order():
    sizes = DeadLetterSizes(3, 1_000_000, 40, 2)
    headers = dead_letter_headers([("dm-schema", b"1")], Reason.TOO_LARGE, "big", "pairs.in:1:2",
                                       truncated={"value", "headers"}, original=sizes)
    assert headers == [
        ("dm-schema", b"1"),
        (wire.H_DLQ_REASON, b"too_large"),
        (wire.H_DLQ_DETAIL, b"big"),
        (wire.H_DLQ_SOURCE, b"pairs.in:1:2"),
        (wire.H_DLQ_TRUNCATED, b"headers,value"),
        (wire.H_DLQ_ORIGINAL_BYTES, b"key=3,value=1000000,headers=40,header_count=2"),
    ]
    with pytest.raises(ValueError):
        dead_letter_headers((), Reason.TOO_LARGE, "big", "s", truncated={"value"})
    with pytest.raises(ValueError):
        dead_letter_headers((), Reason.TOO_LARGE, "big", "s", truncated={"everything"}, original=sizes)
