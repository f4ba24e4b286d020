"""The wire format: the one module the producer and the matcher both import.

See docs/wire-format.md for the prose version. In short:

* ``pairs.in`` carries both halves of a pair. **Key** = pair ID (UTF-8). **Value** = raw
  little-endian array bytes (no JSON, no pickle): for the spoken half ``float32`` MFCC frames
  (encoding ``mfcc``, the default) or the recording itself, mono ``int16`` samples (encoding
  ``pcm16``, schema 2, with ``dm-sample-rate``), whose features the matcher computes with the served
  model's own parameters; ``uint8`` pixels for the written half. **Headers** (all ``dm-`` prefixed,
  values ASCII) say which half it is, the schema version, the array's shape and dtype, and
  optionally the ground truth digit and the produce time.
* Header values have one spelling each: numbers are canonical decimals (``0`` or a digit 1-9 then
  digits: no sign, no leading zero, no space, no exponent), a shape is such numbers joined by
  ``,`` alone. Anything else is rejected, never read leniently.
* Schema versions: a half written as version 1 (MFCC and written halves: what the encoders write
  for them, so version-1 matchers still read them) or 2 (version 1 plus ``dm-encoding`` and
  ``dm-sample-rate``; ``pcm16`` needs it). The matcher reads both; a header of a later version in
  an earlier version's half is ``unknown_header``. Verdicts stay version 1.
* ``matches.out`` carries one JSON :class:`Verdict` per pair, keyed by pair ID.
* ``pairs.dlq`` carries every message that failed validation, byte for byte, with the reason
  added as headers (:func:`dead_letter_headers`); one too large for the dead-letter topic is cut,
  with headers saying what was cut and the original's sizes (``consumer/dead_letter.py``).

Validation order is chosen so that nothing large is touched before its size is checked:
key, headers, declared shape and dtype, value length, and only then the array itself.
"""

from __future__ import annotations

import functools
import math
import re
import time
from enum import Enum
from typing import Literal, NamedTuple, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1  # verdicts, and the halves that need nothing later (MFCC, written)
PCM_SCHEMA_VERSION = 2  # introduced dm-encoding and dm-sample-rate: pcm16 spoken halves
SCHEMA_VERSIONS = (SCHEMA_VERSION, PCM_SCHEMA_VERSION)  # the half versions this matcher reads

TOPIC_PAIRS = "pairs.in"
TOPIC_MATCHES = "matches.out"
TOPIC_DLQ = "pairs.dlq"

# Header names.
H_SCHEMA = "dm-schema"
H_HALF = "dm-half"
H_SHAPE = "dm-shape"
H_DTYPE = "dm-dtype"
H_DIGIT = "dm-digit"
H_PRODUCED_MS = "dm-produced-ms"
H_ENCODING = "dm-encoding"  # schema 2: spoken half only, "mfcc" (the default) or "pcm16"
H_SAMPLE_RATE = "dm-sample-rate"  # schema 2: required with pcm16, and only there
REQUIRED_HEADERS = (H_SCHEMA, H_HALF, H_SHAPE, H_DTYPE)
HEADERS_BY_SCHEMA = {
    SCHEMA_VERSION: frozenset(REQUIRED_HEADERS + (H_DIGIT, H_PRODUCED_MS)),
    PCM_SCHEMA_VERSION: frozenset(REQUIRED_HEADERS + (H_DIGIT, H_PRODUCED_MS, H_ENCODING, H_SAMPLE_RATE)),
}
KNOWN_HEADERS = frozenset().union(*HEADERS_BY_SCHEMA.values())  # of any version read
# Headers added to a dead-lettered record.
H_DLQ_REASON = "dm-dlq-reason"
H_DLQ_DETAIL = "dm-dlq-detail"
H_DLQ_SOURCE = "dm-dlq-source"
# Added after those only when the dead letter is not the whole original (consumer/dead_letter.py):
H_DLQ_TRUNCATED = "dm-dlq-truncated"  # what was cut, of DLQ_CUT_PARTS, comma-separated
H_DLQ_ORIGINAL_BYTES = "dm-dlq-original-bytes"  # DeadLetterSizes.encode()
DLQ_CUT_PARTS = ("headers", "value", "key")  # the order in which they are cut, and listed
MAX_DLQ_DETAIL_BYTES = 512

# Limits, enforced before any array is built.
MAX_PAIR_ID_LENGTH = 128
PAIR_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
MAX_FRAMES = 1000  # 10 s of audio at a 10 ms hop; the model's own budget is smaller
MFCC_COEFFICIENTS = 13
IMAGE_SHAPE = (28, 28)
MAX_HEADER_BYTES = 64  # any single dm- header value
# pcm16 spoken halves: the rates accepted (those recorders use; soxr resamples each to the model's),
# and at most MAX_PCM_SECONDS of samples, as MAX_FRAMES is 10 s of MFCC frames.
PCM_SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
MAX_PCM_SECONDS = 10
MAX_MFCC_BYTES = MAX_FRAMES * MFCC_COEFFICIENTS * 4  # 52,000
MAX_PCM_BYTES = MAX_PCM_SECONDS * max(PCM_SAMPLE_RATES) * 2  # 960,000
MAX_VALUE_BYTES = max(MAX_MFCC_BYTES, MAX_PCM_BYTES)  # any value, checked before anything else
# Canonical decimals: one spelling per number (no sign, leading zero, space, exponent or "_").
CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")
CANONICAL_INT_BYTES = re.compile(rb"0|[1-9][0-9]*")
CANONICAL_SHAPE = re.compile(r"(?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*")
# Distinct sets of dm- headers (without dm-produced-ms) whose checked layout decode_half keeps:
# a stream repeats a few thousand (two halves x ten digits x the spoken frame counts). A pcm16
# half's dm-shape is its sample count, far more varied: many of those take the one-by-one check.
LAYOUTS_CACHED = 8192
NON_FINITE_DETAIL = "MFCC frames contain NaN or infinity"


class Half(str, Enum):
    SPOKEN = "spoken"
    WRITTEN = "written"

    @property
    def other(self) -> "Half":
        return Half.WRITTEN if self is Half.SPOKEN else Half.SPOKEN


class Encoding(str, Enum):
    """What a spoken half's value holds (``dm-encoding``; schema 2)."""

    MFCC = "mfcc"  # float32 (frames, 13) from features.mfcc: the default, and all of schema 1
    PCM16 = "pcm16"  # the recording: mono int16 samples at dm-sample-rate


DTYPES = {Half.SPOKEN: "<f4", Half.WRITTEN: "|u1"}
PCM_DTYPE = "<i2"


class Reason(str, Enum):
    """Why a message was dead-lettered. The value is the ``dm-dlq-reason`` header."""

    MISSING_KEY = "missing_key"
    BAD_PAIR_ID = "bad_pair_id"
    MISSING_HEADER = "missing_header"
    DUPLICATE_HEADER = "duplicate_header"
    UNKNOWN_HEADER = "unknown_header"
    BAD_HEADER = "bad_header"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    BAD_SHAPE = "bad_shape"
    BAD_DTYPE = "bad_dtype"
    TOO_LARGE = "too_large"
    SIZE_MISMATCH = "size_mismatch"
    NON_FINITE = "non_finite"
    # The Kafka client could not read the record (a compressed batch it cannot inflate):
    UNREADABLE = "unreadable"
    # Raised by the matcher's join, not by decoding:
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    ALREADY_DECIDED = "already_decided"
    # Raised by the matcher's routing check: read from another partition than its key hashes to.
    MISROUTED = "misrouted"


class InvalidMessage(ValueError):
    """A message that cannot be accepted; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


Headers = Sequence[tuple[str, bytes]]


class DecodedHalf(NamedTuple):
    """One validated half, its array a zero-copy view of the message value."""

    pair_id: str
    half: Half
    # (frames, 13) float32 for an MFCC spoken half, (samples,) int16 for pcm16, (28, 28) uint8 written
    array: np.ndarray
    digit: int | None
    produced_ms: int | None
    sample_rate: int | None = None  # pcm16 only: the samples' rate in Hz

    @property
    def encoding(self) -> Encoding | None:
        """The spoken half's encoding (None for a written half)."""
        if self.half is Half.WRITTEN:
            return None
        return Encoding.MFCC if self.sample_rate is None else Encoding.PCM16


# --------------------------------------------------------------------------- encoding


def now_ms() -> int:
    """Wall clock in Unix epoch milliseconds, the unit of ``dm-produced-ms`` and of verdict timestamps."""
    return time.time_ns() // 1_000_000


def _headers(half: Half, shape: tuple[int, ...], digit: int | None, produced_ms: int | None,
             sample_rate: int | None = None):
    headers = [
        (H_SCHEMA, str(SCHEMA_VERSION if sample_rate is None else PCM_SCHEMA_VERSION).encode()),
        (H_HALF, half.value.encode()),
        (H_SHAPE, ",".join(str(d) for d in shape).encode()),
        (H_DTYPE, (DTYPES[half] if sample_rate is None else PCM_DTYPE).encode()),
    ]
    if sample_rate is not None:
        headers += [(H_ENCODING, Encoding.PCM16.value.encode()), (H_SAMPLE_RATE, str(int(sample_rate)).encode())]
    if digit is not None:
        headers.append((H_DIGIT, str(int(digit)).encode()))
    if produced_ms is not None:
        headers.append((H_PRODUCED_MS, str(int(produced_ms)).encode()))
    return headers


def encode_pair_id(pair_id: str) -> bytes:
    _check_pair_id(pair_id)
    return pair_id.encode("ascii")


def encode_spoken(
    pair_id: str, frames: np.ndarray, digit: int | None = None, produced_ms: int | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for a spoken half. ``frames``: (n, 13) MFCC from features.mfcc."""
    frames = np.ascontiguousarray(frames, dtype="<f4")
    _check_spoken_array(frames)
    return (
        encode_pair_id(pair_id),
        frames.tobytes(),
        _headers(Half.SPOKEN, frames.shape, digit, produced_ms),
    )


def encode_spoken_pcm16(
    pair_id: str, samples: np.ndarray, sample_rate: int, digit: int | None = None, produced_ms: int | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for a spoken half carrying the recording: ``samples`` mono int16 at
    ``sample_rate`` (one of :data:`PCM_SAMPLE_RATES`); the matcher computes its features."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise InvalidMessage(Reason.BAD_DTYPE, f"pcm16 samples must be int16, got {samples.dtype}")
    if samples.ndim != 1 or samples.size < 1:
        raise InvalidMessage(Reason.BAD_SHAPE, f"pcm16 samples must be mono (samples,), got {samples.shape}")
    _check_pcm(samples.shape[0], int(sample_rate))
    samples = np.ascontiguousarray(samples, dtype=PCM_DTYPE)
    return (
        encode_pair_id(pair_id),
        samples.tobytes(),
        _headers(Half.SPOKEN, samples.shape, digit, produced_ms, sample_rate=int(sample_rate)),
    )


def _check_pcm(samples: int, sample_rate: int) -> None:
    if sample_rate not in PCM_SAMPLE_RATES:
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_SAMPLE_RATE!r} must be one of "
                             f"{', '.join(map(str, PCM_SAMPLE_RATES))} Hz, got {sample_rate}")
    if samples > MAX_PCM_SECONDS * sample_rate:
        raise InvalidMessage(Reason.TOO_LARGE, f"{samples} samples at {sample_rate} Hz, limit {MAX_PCM_SECONDS} s "
                             f"({MAX_PCM_SECONDS * sample_rate} samples)")


def encode_written(
    pair_id: str, image: np.ndarray, digit: int | None = None, produced_ms: int | None = None
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for a written half. ``image``: (28, 28) uint8, 0 = background."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidMessage(Reason.BAD_DTYPE, f"image dtype must be uint8, got {image.dtype}")
    if image.shape != IMAGE_SHAPE:
        raise InvalidMessage(Reason.BAD_SHAPE, f"image shape must be {IMAGE_SHAPE}, got {image.shape}")
    image = np.ascontiguousarray(image)
    return encode_pair_id(pair_id), image.tobytes(), _headers(Half.WRITTEN, IMAGE_SHAPE, digit, produced_ms)


# --------------------------------------------------------------------------- decoding


def _check_pair_id(pair_id: str) -> None:
    if not pair_id or len(pair_id) > MAX_PAIR_ID_LENGTH or not PAIR_ID_PATTERN.fullmatch(pair_id):
        raise InvalidMessage(
            Reason.BAD_PAIR_ID,
            f"pair ID must be 1-{MAX_PAIR_ID_LENGTH} chars of [A-Za-z0-9._:-] starting with a "
            f"letter or digit, got {pair_id[:40]!r}{'...' if len(pair_id) > 40 else ''}",
        )


def decode_pair_id(key: bytes | None) -> str:
    if key is None:
        raise InvalidMessage(Reason.MISSING_KEY, "record has no key; the key must be the pair ID")
    if len(key) > MAX_PAIR_ID_LENGTH:
        raise InvalidMessage(Reason.BAD_PAIR_ID, f"pair ID is {len(key)} bytes, limit {MAX_PAIR_ID_LENGTH}")
    try:
        pair_id = key.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidMessage(Reason.BAD_PAIR_ID, "pair ID is not ASCII/UTF-8 of [A-Za-z0-9._:-]") from None
    _check_pair_id(pair_id)
    return pair_id


def _header_map(headers: Headers | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, raw in headers or ():
        if not name.startswith("dm-"):
            continue  # tracing and other foreign headers are carried along, not interpreted
        if name not in KNOWN_HEADERS:
            raise InvalidMessage(Reason.UNKNOWN_HEADER, f"unknown header {name[:40]!r} in schema "
                                 f"{'/'.join(map(str, SCHEMA_VERSIONS))}")
        if name in found:
            raise InvalidMessage(Reason.DUPLICATE_HEADER, f"header {name!r} appears more than once")
        if raw is None or len(raw) > MAX_HEADER_BYTES:
            raise InvalidMessage(Reason.BAD_HEADER, f"header {name!r} is missing a value or longer than {MAX_HEADER_BYTES} bytes")
        try:
            found[name] = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidMessage(Reason.BAD_HEADER, f"header {name!r} is not ASCII") from None
    for name in REQUIRED_HEADERS:
        if name not in found:
            raise InvalidMessage(Reason.MISSING_HEADER, f"required header {name!r} is missing")
    return found


def _int_header(found: dict[str, str], name: str) -> int | None:
    text = found.get(name)
    if text is None:
        return None
    if not CANONICAL_INT.fullmatch(text):
        raise InvalidMessage(Reason.BAD_HEADER, f"header {name!r} must be a canonical decimal integer (0 or "
                             f"1-9 then digits: no sign, leading zero or space), got {text!r}")
    return int(text)


class _Meta(NamedTuple):
    """The checked headers, as :func:`decode_half` uses them (a plain tuple: cheaper than a model)."""

    half: Half
    shape: tuple[int, ...]
    dtype: str
    digit: int | None
    produced_ms: int | None
    sample_rate: int | None  # pcm16 only


def _parse_headers(headers: Headers | None) -> _Meta:
    found = _header_map(headers)
    schema = _int_header(found, H_SCHEMA)
    if schema not in SCHEMA_VERSIONS:
        raise InvalidMessage(Reason.UNSUPPORTED_SCHEMA, f"schema version {found[H_SCHEMA]!r}, this matcher reads "
                             f"{' and '.join(map(str, SCHEMA_VERSIONS))}")
    for name in found:
        if name not in HEADERS_BY_SCHEMA[schema]:
            later = min(v for v, names in HEADERS_BY_SCHEMA.items() if name in names)
            raise InvalidMessage(Reason.UNKNOWN_HEADER, f"header {name!r} is not in schema {schema} "
                                 f"(it came in schema {later}: send dm-schema {later})")
    if not CANONICAL_SHAPE.fullmatch(found[H_SHAPE]):
        raise InvalidMessage(Reason.BAD_SHAPE, f"header {H_SHAPE!r} must be canonical decimal integers joined by "
                             f"',' alone (e.g. '61,13'), got {found[H_SHAPE]!r}")
    shape = tuple(int(d) for d in found[H_SHAPE].split(","))
    # Checked by hand into a tuple: pydantic validation of a model per record was a measurable
    # share of the matcher's poll loop (docs/benchmarks.md); decode_half now also remembers the
    # result per header set (_layout).
    try:
        half = Half(found[H_HALF])
    except ValueError:
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_HALF!r} must be 'spoken' or 'written', got {found[H_HALF]!r}") from None
    digit = _int_header(found, H_DIGIT)
    if digit is not None and digit > 9:
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_DIGIT!r} must be a digit 0-9, got {digit}")
    encoding, sample_rate = found.get(H_ENCODING), _int_header(found, H_SAMPLE_RATE)
    if encoding is not None and half is Half.WRITTEN:
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_ENCODING!r} is for the spoken half only")
    if encoding not in (None, Encoding.MFCC.value, Encoding.PCM16.value):
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_ENCODING!r} must be 'mfcc' or 'pcm16', got {encoding!r}")
    if encoding == Encoding.PCM16.value:
        if sample_rate is None:
            raise InvalidMessage(Reason.MISSING_HEADER, f"header {H_SAMPLE_RATE!r} is required with {H_ENCODING} pcm16")
        if sample_rate not in PCM_SAMPLE_RATES:
            raise InvalidMessage(Reason.BAD_HEADER, f"header {H_SAMPLE_RATE!r} must be one of "
                                 f"{', '.join(map(str, PCM_SAMPLE_RATES))} Hz, got {sample_rate}")
    elif sample_rate is not None:
        raise InvalidMessage(Reason.BAD_HEADER, f"header {H_SAMPLE_RATE!r} is only for {H_ENCODING} pcm16")
    return _Meta(half, shape, found[H_DTYPE], digit, _int_header(found, H_PRODUCED_MS), sample_rate)


def _check_spoken_array(frames: np.ndarray) -> None:
    if frames.ndim != 2 or frames.shape[1] != MFCC_COEFFICIENTS or not 1 <= frames.shape[0]:
        raise InvalidMessage(Reason.BAD_SHAPE, f"spoken half must be (frames, {MFCC_COEFFICIENTS}), got {frames.shape}")
    if frames.shape[0] > MAX_FRAMES:
        raise InvalidMessage(Reason.TOO_LARGE, f"{frames.shape[0]} frames, limit {MAX_FRAMES}")
    if not np.isfinite(frames).all():
        raise InvalidMessage(Reason.NON_FINITE, NON_FINITE_DETAIL)


class _Layout(NamedTuple):
    """What the headers fix about a value once checked: its half, shape, dtype and size."""

    half: Half
    shape: tuple[int, ...]
    dtype: str
    digit: int | None
    nbytes: int
    sample_rate: int | None  # pcm16 only


def _checked_layout(headers: Headers | None) -> tuple[_Layout, int | None]:
    """The headers checked one by one (the reference for every reason), with ``dm-produced-ms``."""
    meta = _parse_headers(headers)
    if meta.sample_rate is not None:
        return _pcm_layout(meta), meta.produced_ms
    expected_dtype = DTYPES[meta.half]
    if meta.dtype != expected_dtype:
        raise InvalidMessage(Reason.BAD_DTYPE, f"{meta.half.value} half must be {expected_dtype}, got {meta.dtype!r}")
    if meta.half is Half.SPOKEN:
        if len(meta.shape) != 2 or meta.shape[1] != MFCC_COEFFICIENTS or meta.shape[0] < 1:
            raise InvalidMessage(Reason.BAD_SHAPE, f"spoken half must be (frames, {MFCC_COEFFICIENTS}), got {meta.shape}")
        if meta.shape[0] > MAX_FRAMES:
            raise InvalidMessage(Reason.TOO_LARGE, f"{meta.shape[0]} frames, limit {MAX_FRAMES}")
    elif meta.shape != IMAGE_SHAPE:
        raise InvalidMessage(Reason.BAD_SHAPE, f"written half must be {IMAGE_SHAPE}, got {meta.shape}")
    itemsize = 4 if meta.half is Half.SPOKEN else 1
    layout = _Layout(meta.half, meta.shape, meta.dtype, meta.digit, math.prod(meta.shape) * itemsize, None)
    return layout, meta.produced_ms


def _pcm_layout(meta: _Meta) -> _Layout:
    """A pcm16 spoken half's layout: ``<i2`` samples, shape ``(samples,)`` with at least one and at
    most ``MAX_PCM_SECONDS`` at a rate of :data:`PCM_SAMPLE_RATES` (checked in _parse_headers)."""
    if meta.dtype != PCM_DTYPE:
        raise InvalidMessage(Reason.BAD_DTYPE, f"a pcm16 spoken half must be {PCM_DTYPE}, got {meta.dtype!r}")
    if len(meta.shape) != 1 or meta.shape[0] < 1:
        raise InvalidMessage(Reason.BAD_SHAPE, f"a pcm16 spoken half must be (samples,) with samples >= 1, got {meta.shape}")
    _check_pcm(meta.shape[0], meta.sample_rate)
    return _Layout(meta.half, meta.shape, meta.dtype, meta.digit, meta.shape[0] * 2, meta.sample_rate)


_cached_layout = functools.lru_cache(maxsize=LAYOUTS_CACHED)(_checked_layout)
# The header sets that passed whole and in the usual form (``dm-`` headers only, one
# ``dm-produced-ms``, last): their headers before ``dm-produced-ms`` -> the layout. Cleared when full.
_passed_prefixes: dict[tuple, _Layout] = {}


def _layout(headers: Headers | None) -> tuple[_Layout, int | None]:
    """:func:`_checked_layout`, remembered per set of ``dm-`` headers other than
    ``dm-produced-ms``, which is the only one that changes from record to record of a stream.

    Checking the headers one by one was a third of the matcher's per-record work in its poll loop
    (docs/benchmarks.md). A header set in the usual form whose other headers passed before is
    answered from :data:`_passed_prefixes` without looking at each header; anything unusual (a
    second ``dm-produced-ms``, a value that is not a canonical decimal, a header set that fails)
    takes the one-by-one path, so every reason and message is the same as without the cache."""
    if headers and headers[-1][0] == H_PRODUCED_MS:
        produced = headers[-1][1]
        try:
            layout = _passed_prefixes.get(tuple(headers[:-1]))
        except TypeError:  # a header value that cannot be a key
            layout = None
        if (layout is not None and isinstance(produced, bytes) and len(produced) <= MAX_HEADER_BYTES
                and CANONICAL_INT_BYTES.fullmatch(produced)):
            return layout, int(produced)
    produced = None
    seen_produced = False
    dm_headers = []
    for item in headers or ():
        name = item[0]
        if name == H_PRODUCED_MS and not seen_produced:
            seen_produced, produced = True, item[1]
        elif name.startswith("dm-"):
            dm_headers.append(item)
    if not seen_produced or (isinstance(produced, bytes) and len(produced) <= MAX_HEADER_BYTES
                             and CANONICAL_INT_BYTES.fullmatch(produced)):
        key = tuple(dm_headers)
        try:
            layout, duplicate_produced = _cached_layout(key)
        except (InvalidMessage, TypeError):  # TypeError: a header value that cannot be a key
            pass
        else:
            if duplicate_produced is None:
                if seen_produced and len(dm_headers) == len(headers) - 1 and headers[-1][0] == H_PRODUCED_MS:
                    if len(_passed_prefixes) >= LAYOUTS_CACHED:
                        _passed_prefixes.clear()
                    _passed_prefixes[key] = layout
                return layout, int(produced) if seen_produced else None
    return _checked_layout(headers)


def _decode_unchecked(key: bytes | None, value: bytes | None, headers: Headers | None) -> DecodedHalf:
    """:func:`decode_half` but for the finiteness of MFCC frames."""
    if value is not None and len(value) > MAX_VALUE_BYTES:
        raise InvalidMessage(Reason.TOO_LARGE, f"value is {len(value)} bytes, limit {MAX_VALUE_BYTES}")
    pair_id = decode_pair_id(key)
    layout, produced_ms = _layout(headers)
    if value is None or len(value) != layout.nbytes:
        got = 0 if value is None else len(value)
        raise InvalidMessage(Reason.SIZE_MISMATCH, f"shape {layout.shape} needs {layout.nbytes} bytes, value has {got}")
    array = np.frombuffer(value, dtype=layout.dtype).reshape(layout.shape)
    return DecodedHalf(pair_id, layout.half, array, layout.digit, produced_ms, layout.sample_rate)


def _is_mfcc(half: DecodedHalf) -> bool:
    return half.sample_rate is None and half.half is Half.SPOKEN


def decode_half(key: bytes | None, value: bytes | None, headers: Headers | None) -> DecodedHalf:
    """Validate one ``pairs.in`` record. Raises :class:`InvalidMessage` with a precise reason."""
    half = _decode_unchecked(key, value, headers)
    if _is_mfcc(half) and not np.isfinite(half.array).all():  # int16 samples: any value is a sample
        raise InvalidMessage(Reason.NON_FINITE, NON_FINITE_DETAIL)
    return half


class _Readable(Protocol):
    key: bytes | None
    value: bytes | None
    headers: Headers | None


def decode_halves(records: Sequence[_Readable]) -> list[DecodedHalf | InvalidMessage]:
    """:func:`decode_half` of each record (anything with ``key``, ``value`` and ``headers``), in
    order; a record that fails has its :class:`InvalidMessage` in its place (without a traceback).

    The same answers as one by one, in less time: the MFCC frames of all the spoken halves are
    checked for finiteness at once (a NumPy call per record was a measurable share of the matcher's
    poll loop: docs/benchmarks.md), and one by one only when some are not finite."""
    results: list[DecodedHalf | InvalidMessage] = []
    mfcc = []  # positions of the MFCC spoken halves
    for record in records:
        try:
            half = _decode_unchecked(record.key, record.value, record.headers)
        except InvalidMessage as exc:
            results.append(exc.with_traceback(None))
            continue
        if _is_mfcc(half):
            mfcc.append(len(results))
        results.append(half)
    if mfcc and not np.isfinite(np.concatenate([results[i].array for i in mfcc], axis=None)).all():
        for i in mfcc:
            if not np.isfinite(results[i].array).all():
                results[i] = InvalidMessage(Reason.NON_FINITE, NON_FINITE_DETAIL)
    return results


# --------------------------------------------------------------------------- verdicts

Outcome = Literal["match", "no_match", "unpaired"]


class ModelRef(BaseModel):
    name: str
    version: int


class Timestamps(BaseModel):
    """Unix epoch milliseconds."""

    produced_ms: int | None = Field(None, description="earliest dm-produced-ms of the two halves")
    first_seen_ms: int = Field(description="matcher read the first half")
    joined_ms: int | None = Field(None, description="matcher read the second half")
    decided_ms: int = Field(description="verdict handed to the producer")


class Latencies(BaseModel):
    """Milliseconds; None where a stage did not happen (e.g. no inference for unpaired)."""

    join_wait: float | None = None
    queue_wait: float | None = None
    inference: float | None = None
    end_to_end: float | None = None


class Truth(BaseModel):
    spoken: int | None = None
    written: int | None = None


class Verdict(BaseModel):
    """One decision, JSON on ``matches.out``. Decision fields (outcome, score, threshold, model,
    predicted digits) are identical if a pair is decided again after a crash; timing fields are
    those of the run that decided it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    pair_id: str
    outcome: Outcome
    score: float | None = Field(None, description="sigmoid 'same digit' score, 6 decimals")
    threshold: float
    model: ModelRef
    missing_half: Half | None = None
    predicted: Truth | None = Field(None, description="per-branch digit predictions, if the model has them")
    truth: Truth | None = None
    correct: bool | None = Field(None, description="outcome vs ground truth, when both digits were sent")
    timestamps: Timestamps
    latency_ms: Latencies

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> "Verdict":
        return cls.model_validate_json(value)


def verdict_key(pair_id: str) -> bytes:
    return pair_id.encode("ascii")

