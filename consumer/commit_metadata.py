"""What a commit says besides its offset: how far the partition was read, and which records read
before that are not finished.

The committed offset ``c`` is the at-least-once commit point (consumer/offsets.py: every record
below it is finished). The commit's metadata string adds ``end``, one past the last record read,
and the records in ``c .. end - 1`` that are *not* finished (a half waiting for its partner, a pair
in the batcher or the inference queue): every other record of that range is finished, and whoever
reads the partition next only remembers it instead of deciding it again
(consumer/checkpointing.py). That is what makes exactly-once possible (the outputs of the
finished records were committed in the same transaction as this metadata) and what spares
at-least-once the re-decisions of everything finished above the oldest pending half.

Rules:

* Format: ``"v1:"`` + URL-safe base64 (no padding) of unsigned LEB128 varints: ``end - c``, then
  the unfinished offsets as gaps (the first from ``c``, each next one from the one before, minus 1).
* It stays within :data:`BUDGET` characters: Kafka refuses metadata longer than the broker's
  ``offset.metadata.max.bytes`` (4,096 by default), and the margin is for brokers configured a
  little lower. :data:`BUDGET` holds 2,247 varint bytes: at least 448 unfinished offsets however far
  apart they are (5 bytes each: gaps below 2^35), about 2,240 when each lies within 128 of the one
  before.
* A metadata string that is empty, of another version or inconsistent (an unfinished offset at or
  past ``end``) is no metadata (:func:`decode` returns None): a broker that drops it (Tansu), a
  commit made by another program. Then only the committed offset is known, and everything from it
  on is read and decided again (at-least-once, as without metadata).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Sequence

PREFIX = "v1:"
BUDGET = 3000  # characters


@dataclass(frozen=True, slots=True)
class Progress:
    """A partition's progress beyond its committed offset."""

    end: int  # one past the last record read
    unfinished: frozenset[int]  # offsets in [committed, end) that are not finished


def _varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def gaps(commit: int, unfinished: Sequence[int]) -> list[int]:
    """The varint values after ``end - c`` for ascending ``unfinished`` offsets (all >= ``commit``)."""
    out, previous = [], commit - 1
    for offset in unfinished:
        out.append(offset - previous - 1)
        previous = offset
    return out


def encoded_size(raw_bytes: int) -> int:
    """Characters of the metadata string of ``raw_bytes`` varint bytes."""
    return len(PREFIX) + (4 * raw_bytes + 2) // 3


def raw_budget(budget: int = BUDGET) -> int:
    """The most varint bytes whose metadata string fits ``budget`` characters."""
    return (budget - len(PREFIX)) * 3 // 4


def encode(commit: int, end: int, unfinished: Sequence[int]) -> str:
    """The metadata of a commit at ``commit`` having read up to ``end``; ``unfinished`` ascending,
    within ``[commit, end)``. The caller keeps it within the budget (:func:`fits`)."""
    raw = bytearray()
    _varint(end - commit, raw)
    for gap in gaps(commit, unfinished):
        _varint(gap, raw)
    return PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode("ascii").rstrip("=")


def fits(commit: int, end: int, unfinished: Sequence[int], budget: int = BUDGET) -> bool:
    size = varint_size(end - commit) + sum(map(varint_size, gaps(commit, unfinished)))
    return encoded_size(size) <= budget


def truncated(commit: int, end: int, unfinished: Sequence[int], budget: int = BUDGET) -> tuple[int, list[int]]:
    """``(end, unfinished)`` cut to the budget: the longest prefix of ``unfinished`` that fits, and
    ``end`` moved back to the first offset left out (records from there on are read and decided
    again). For at-least-once, where deciding again is allowed."""
    room = raw_budget(budget) - varint_size(end - commit)
    kept = 0
    for gap in gaps(commit, unfinished):
        room -= varint_size(gap)
        if room < 0:
            break
        kept += 1
    if kept == len(unfinished):
        return end, list(unfinished)
    return unfinished[kept], list(unfinished[:kept])


def decode(commit: int, metadata: str | None) -> Progress | None:
    """The progress a commit at ``commit`` recorded; None when the metadata says nothing usable."""
    if not metadata or not metadata.startswith(PREFIX):
        return None
    body = metadata[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    values, value, shift = [], 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            values.append(value)
            value, shift = 0, 0
    if shift or not values:
        return None
    end = commit + values[0]
    unfinished, previous = [], commit - 1
    for gap in values[1:]:
        previous += gap + 1
        unfinished.append(previous)
    if unfinished and unfinished[-1] >= end:
        return None
    return Progress(end, frozenset(unfinished))
