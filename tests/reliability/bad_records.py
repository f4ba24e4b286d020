"""Hypothesis strategies for ``pairs.in`` records the matcher must dead-letter, each with the
``dm-dlq-reason`` it must get.

Every family but one starts from a valid half (``wire.encode_*``) and breaks exactly one thing, so
the expected reason follows from docs/wire-format.md ("Validation order") without asking the
decoder. The ``random_bytes`` family is arbitrary key, value and headers: there the expected reason
is the one ``wire.decode_half`` gives (checked against its own unit tests in tests/test_wire.py);
the end-to-end check is that the matcher dead-letters it with that reason and keeps serving.
"""

from __future__ import annotations

import string
from typing import NamedTuple

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from digitmatch import wire
from digitmatch.wire import Reason


class BadRecord(NamedTuple):
    family: str
    reason: Reason
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


PAIR_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,30}", fullmatch=True)
ASCII_TEXT = st.text(alphabet=string.ascii_letters + string.digits + ",.-_ ", max_size=20)


@st.composite
def valid_half(draw) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(half, key, value, headers) of a valid record."""
    pair_id = draw(PAIR_IDS)
    digit = draw(st.none() | st.integers(0, 9))
    if draw(st.booleans()):
        frames = draw(st.integers(1, 93))
        mfcc = _rng(draw).normal(size=(frames, 13)).astype(np.float32)
        return ("spoken", *wire.encode_spoken(pair_id, mfcc, digit, draw(st.none() | st.integers(0, 2**45))))
    image = _rng(draw).integers(0, 256, size=(28, 28), dtype=np.uint8)
    return ("written", *wire.encode_written(pair_id, image, digit))


def _rng(draw) -> np.random.Generator:
    """Bulk content (pixels, frames) from a drawn seed: drawing it byte by byte is slow, and its
    values do not matter to validation."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _set(headers, name: str, value: bytes | None):
    return [(n, value if n == name else v) for n, v in headers]


def _drop(headers, name: str):
    return [(n, v) for n, v in headers if n != name]


@st.composite
def truncated(draw):
    half, key, value, headers = draw(valid_half())
    cut = draw(st.integers(0, len(value) - 1))
    return BadRecord("truncated payload", Reason.SIZE_MISMATCH, key, value[:cut], headers)


@st.composite
def padded(draw):
    half, key, value, headers = draw(valid_half())
    return BadRecord("payload longer than its shape", Reason.SIZE_MISMATCH, key,
                     value + draw(st.binary(min_size=1, max_size=64)), headers)


@st.composite
def no_value(draw):
    half, key, value, headers = draw(valid_half())
    return BadRecord("no value", Reason.SIZE_MISMATCH, key, None, headers)


@st.composite
def wrong_dtype(draw):
    half, key, value, headers = draw(valid_half())
    expected = wire.DTYPES[wire.Half(half)]
    dtype = draw(st.sampled_from(["<f8", ">f4", "<i4", "<f2", "|u1", "<f4", "|i1", "float32", "uint8"]) | ASCII_TEXT)
    assume(dtype != expected)
    return BadRecord("wrong dtype", Reason.BAD_DTYPE, key, value, _set(headers, wire.H_DTYPE, dtype.encode()))


@st.composite
def wrong_shape(draw):
    half, key, value, headers = draw(valid_half())
    if half == "spoken":
        shape = draw(st.one_of(
            st.tuples(st.integers(1, 1000), st.integers(0, 200).filter(lambda c: c != 13)),
            st.tuples(st.integers(-1000, 0), st.just(13)),
            st.tuples(st.integers(1, 50), st.just(13), st.integers(1, 4)),
            st.tuples(st.integers(1, 800)),
        ))
    else:
        shape = draw(st.lists(st.integers(-5, 100), min_size=1, max_size=4).map(tuple))
        assume(shape != (28, 28))
    text = ",".join(str(d) for d in shape)
    return BadRecord("wrong shape", Reason.BAD_SHAPE, key, value, _set(headers, wire.H_SHAPE, text.encode()))


@st.composite
def unparsable_shape(draw):
    half, key, value, headers = draw(valid_half())
    text = draw(st.sampled_from(["", "28x28", "28;28", "a,b", "28,", ",13", "1.5,13", "nan,13"]))
    return BadRecord("unparsable shape", Reason.BAD_SHAPE, key, value, _set(headers, wire.H_SHAPE, text.encode()))


@st.composite
def wrong_image_size(draw):
    _, key, _, headers = draw(valid_half().filter(lambda h: h[0] == "written"))
    rows, cols = draw(st.tuples(st.integers(1, 56), st.integers(1, 56)).filter(lambda s: s[0] * s[1] != 784))
    value = _rng(draw).bytes(rows * cols)
    shape = f"{rows},{cols}".encode() if draw(st.booleans()) else b"28,28"
    reason = Reason.BAD_SHAPE if shape != b"28,28" else Reason.SIZE_MISMATCH
    return BadRecord("image of the wrong size", reason, key, value, _set(headers, wire.H_SHAPE, shape))


@st.composite
def non_finite(draw):
    _, key, value, headers = draw(valid_half().filter(lambda h: h[0] == "spoken"))
    frames = np.frombuffer(value, "<f4").copy()
    positions = draw(st.lists(st.integers(0, frames.size - 1), min_size=1, max_size=5))
    frames[positions] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return BadRecord("NaN/Inf in the MFCC frames", Reason.NON_FINITE, key, frames.tobytes(), headers)


@st.composite
def zero_length_audio(draw):
    _, key, _, headers = draw(valid_half().filter(lambda h: h[0] == "spoken"))
    return BadRecord("zero-length audio", Reason.BAD_SHAPE, key, b"", _set(headers, wire.H_SHAPE, b"0,13"))


@st.composite
def enormous_audio(draw):
    _, key, _, headers = draw(valid_half().filter(lambda h: h[0] == "spoken"))
    if draw(st.booleans()):  # declared only: a small value that claims too many frames
        frames = draw(st.integers(wire.MAX_FRAMES + 1, 10**12))
        return BadRecord("enormous audio (declared)", Reason.TOO_LARGE, key, b"\0" * 52,
                         _set(headers, wire.H_SHAPE, f"{frames},13".encode()))
    # (Below the absolute value limit, which pcm16 halves raised to 960,000 bytes: the declared
    # frames are what is too large. test_security.py checks the absolute limit before the key.)
    frames = draw(st.integers(wire.MAX_FRAMES + 1, wire.MAX_FRAMES + 300))
    return BadRecord("enormous audio", Reason.TOO_LARGE, key, bytes(frames * 52),
                     _set(headers, wire.H_SHAPE, f"{frames},13".encode()))


@st.composite
def bad_pcm16(draw):
    """A pcm16 spoken half (the recording itself, schema 2) with one thing wrong."""
    rate = draw(st.sampled_from(wire.PCM_SAMPLE_RATES))
    samples = _rng(draw).integers(-32768, 32768, size=draw(st.integers(1, 4000)), dtype=np.int16)
    key, value, headers = wire.encode_spoken_pcm16(draw(PAIR_IDS), samples, rate, draw(st.none() | st.integers(0, 9)))
    fault = draw(st.sampled_from(["rate", "declared length", "dtype", "shape", "size", "schema 1", "no rate",
                                  "encoding", "rate on mfcc"]))
    if fault == "rate":
        bad = draw(st.integers(1, 200_000).filter(lambda r: r not in wire.PCM_SAMPLE_RATES))
        return BadRecord("pcm16: rate not accepted", Reason.BAD_HEADER, key, value,
                         _set(headers, wire.H_SAMPLE_RATE, str(bad).encode()))
    if fault == "declared length":
        n = draw(st.integers(wire.MAX_PCM_SECONDS * rate + 1, 10**12))
        return BadRecord("pcm16: longer than 10 s", Reason.TOO_LARGE, key, value,
                         _set(headers, wire.H_SHAPE, str(n).encode()))
    if fault == "dtype":
        dtype = draw(st.sampled_from([">i2", "<f4", "<i4", "|u1", "int16", "<u2"]))
        return BadRecord("pcm16: wrong dtype", Reason.BAD_DTYPE, key, value, _set(headers, wire.H_DTYPE, dtype.encode()))
    if fault == "shape":
        shape = f"{samples.size},1" if draw(st.booleans()) else "0"
        return BadRecord("pcm16: wrong shape", Reason.BAD_SHAPE, key, value, _set(headers, wire.H_SHAPE, shape.encode()))
    if fault == "size":
        cut = draw(st.integers(0, len(value) - 1))
        return BadRecord("pcm16: value not its shape's size", Reason.SIZE_MISMATCH, key, value[:cut], headers)
    if fault == "schema 1":
        return BadRecord("pcm16: schema 1", Reason.UNKNOWN_HEADER, key, value, _set(headers, wire.H_SCHEMA, b"1"))
    if fault == "no rate":
        return BadRecord("pcm16: no sample rate", Reason.MISSING_HEADER, key, value, _drop(headers, wire.H_SAMPLE_RATE))
    if fault == "encoding":
        encoding = draw(st.sampled_from([b"PCM16", b"pcm", b"pcm24", b"wav", b" pcm16", b""]))
        return BadRecord("pcm16: unknown encoding", Reason.BAD_HEADER, key, value, _set(headers, wire.H_ENCODING, encoding))
    return BadRecord("pcm16: sample rate on an mfcc half", Reason.BAD_HEADER, key, value,
                     _set(headers, wire.H_ENCODING, b"mfcc"))


@st.composite
def missing_header(draw):
    half, key, value, headers = draw(valid_half())
    name = draw(st.sampled_from(wire.REQUIRED_HEADERS))
    return BadRecord("missing header", Reason.MISSING_HEADER, key, value, _drop(headers, name))


@st.composite
def unknown_header(draw):
    half, key, value, headers = draw(valid_half())
    name = "dm-" + draw(st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=20))
    assume(name not in wire.KNOWN_HEADERS)
    at = draw(st.integers(0, len(headers)))
    return BadRecord("unknown header", Reason.UNKNOWN_HEADER, key, value,
                     headers[:at] + [(name, draw(st.binary(max_size=10)))] + headers[at:])


@st.composite
def duplicated_header(draw):
    half, key, value, headers = draw(valid_half())
    name, raw = draw(st.sampled_from(headers))
    raw = draw(st.just(raw) | st.binary(max_size=10))
    return BadRecord("duplicated header", Reason.DUPLICATE_HEADER, key, value, headers + [(name, raw)])


@st.composite
def unknown_schema(draw):
    half, key, value, headers = draw(valid_half())
    version = draw(st.integers(0, 10**6).filter(lambda v: v not in wire.SCHEMA_VERSIONS))
    return BadRecord("unknown schema version", Reason.UNSUPPORTED_SCHEMA, key, value,
                     _set(headers, wire.H_SCHEMA, str(version).encode()))


@st.composite
def bad_header_value(draw):
    half, key, value, headers = draw(valid_half())
    name, raw = draw(st.sampled_from([
        (wire.H_SCHEMA, st.sampled_from([b"v1", b"1.0", b"-1", b"", b"one", b"01", b"+1", b" 1", b"1 "])),
        (wire.H_HALF, st.binary(max_size=12).filter(lambda b: b not in (b"spoken", b"written"))),
        (wire.H_DIGIT, st.integers(10, 10**6).map(lambda d: str(d).encode())
         | st.sampled_from([b"-1", b"x", b"", b"07", b"+7", "\u0667".encode()])),
        (wire.H_PRODUCED_MS, st.sampled_from([b"-5", b"1e3", b"soon", b"12:00", b"0123", b"1_000"])),
        (wire.H_DTYPE, st.binary(min_size=65, max_size=200)),
        (wire.H_SHAPE, st.binary(min_size=1, max_size=20).map(lambda b: b + "\u00e9".encode())),
    ]))
    raw = draw(raw)
    if name not in dict(headers):
        headers = headers + [(name, raw)]
    else:
        headers = _set(headers, name, raw)
    return BadRecord("bad header value", Reason.BAD_HEADER, key, value, headers)


@st.composite
def bad_pair_id(draw):
    half, _, value, headers = draw(valid_half())
    key = draw(st.one_of(
        st.just(b""),
        st.integers(wire.MAX_PAIR_ID_LENGTH + 1, 5000).map(lambda n: b"p" * n),
        st.binary(min_size=1, max_size=40).filter(_not_utf8),
        st.text(min_size=1, max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
        .filter(lambda b: not _valid_pair_id(b)),
        st.sampled_from([b"-lead", b".lead", b"has space", b"slash/id", "\u00e9t\u00e9".encode()]),
    ))
    return BadRecord("bad pair ID", Reason.BAD_PAIR_ID, key, value, headers)


@st.composite
def missing_key(draw):
    half, _, value, headers = draw(valid_half())
    return BadRecord("no key", Reason.MISSING_KEY, None, value, headers)


HEADER_NAMES = st.sampled_from(sorted(wire.KNOWN_HEADERS) + ["dm-x", "traceparent"]) | st.text(max_size=12)
# kafka-python refuses null header values, so none are generated (the decoder's unit tests cover them).
HEADER_VALUES = st.binary(max_size=80) | st.sampled_from(
    [b"1", b"spoken", b"written", b"28,28", b"5,13", b"<f4", b"|u1", b"7"])


@st.composite
def random_bytes(draw):
    key = draw(st.none() | st.binary(max_size=140))
    value = draw(st.none() | st.binary(max_size=64) | st.integers(0, 8).map(lambda n: bytes(range(256)) * n))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    try:
        wire.decode_half(key, value, headers)
    except wire.InvalidMessage as exc:
        return BadRecord("random bytes", exc.reason, key, value, headers)
    assume(False)  # valid by chance: not a bad record


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _valid_pair_id(raw: bytes) -> bool:
    try:
        return wire.decode_pair_id(raw) is not None
    except wire.InvalidMessage:
        return False


FAMILIES = [
    random_bytes(), truncated(), padded(), no_value(), wrong_dtype(), wrong_shape(), unparsable_shape(),
    wrong_image_size(), non_finite(), zero_length_audio(), missing_header(), unknown_header(),
    duplicated_header(), unknown_schema(), bad_header_value(), bad_pair_id(), missing_key(), bad_pcm16(),
]


def bad_records() -> st.SearchStrategy[BadRecord]:
    # A record with neither key nor value cannot be produced with kafka-python either.
    return st.one_of(*FAMILIES, enormous_audio()).filter(lambda r: r.key is not None or r.value is not None)
