"""Joining the two halves of a pair by pair ID, per partition, in any arrival order.

Both halves of a pair carry the same key, so Kafka puts them on the same partition; the join state
is therefore partition-local and keyed by ``(partition, pair_id)``.

Rules (what :meth:`JoinTable.add` answers for an arriving half):

* **pending**: first half of a pair; it waits for its partner.
* **joined**: the partner was waiting; the pair goes on to inference.
* **duplicate**: the same half with the same bytes as one already held, or as one of a pair
  decided recently. Idempotent: nothing to do, the record is finished at once.
* **conflict** (``conflicting_duplicate``): the same half of a *pending* pair with different bytes.
  The first one read wins; the newcomer is dead-lettered.
* **already_decided**: a half with different bytes for a pair decided recently (joined, or
  expired as unpaired). Typical cause: the late partner of a pair that was declared unpaired, or a
  reused pair ID. Dead-lettered. "Recently" = the last ``decided_memory`` pair IDs of that
  partition; older IDs are forgotten and a half for one starts a new pair.

Expiry: a half whose partner does not come within ``ttl_s`` is expired (:meth:`expire`) and gets
an ``unpaired`` verdict. The number of pending halves is bounded by ``max_pending``: when a new
half would exceed it, the *oldest* pending half is expired early (returned in ``evicted``) and
also gets an ``unpaired`` verdict. On a rebalance, :meth:`revoke` drops the pending halves (and the
decided memory) of the revoked partitions without a verdict: they were never committed, so the
partition's next owner reads them again.

Restored memory: the commit point may split a decided pair (``consumer/offsets.py``), so whoever
reads a partition from its commit point may meet the second half of a pair whose first half lies
before it. The matcher reads a window of records before the commit point first and hands each
valid half to :meth:`restore`, which only rebuilds the decided memory. A half whose partner is not
in that window is kept with it: when the partner comes, the pair is **joined** again and decided a
second time (an identical verdict, as after any replay). Identical copies are duplicates and other
bytes are ``already_decided``, as for any decided pair.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Hashable, Iterable

import numpy as np

from digitmatch.wire import Half


def digest(value: bytes) -> bytes:
    """Content fingerprint of a half's value, used to tell duplicates from conflicts."""
    return hashlib.blake2b(value, digest_size=16).digest()


# What the join remembers of a decided pair: (lowest offset, spoken digest, written digest, restored
# half waiting for its partner), None where absent. A plain tuple of ints, bytes and None, which
# CPython's garbage collector stops tracking (it does not do that for tuple subclasses such as a
# NamedTuple, nor for lists): the memory holds up to --decided-memory of them per partition, which
# every full collection would otherwise walk (docs/benchmarks.md).
Decided = tuple[int, "bytes | None", "bytes | None", "HalfRecord | None"]


def _decided(first_offset: int, half: "HalfRecord", restored: "HalfRecord | None" = None) -> Decided:
    """The memory of a pair decided with one half (unpaired, or restored while reading back)."""
    spoken = half.half is Half.SPOKEN
    return (first_offset, half.digest if spoken else None, None if spoken else half.digest, restored)


@dataclass(slots=True)
class HalfRecord:
    """One decoded half plus where and when it was read."""

    partition: Hashable
    offset: int
    pair_id: str
    half: Half
    array: np.ndarray
    digest: bytes
    seen: float  # monotonic seconds, for TTLs and latencies
    seen_ms: int  # wall clock, epoch milliseconds, for the verdict's timestamps
    digit: int | None = None
    produced_ms: int | None = None


@dataclass(slots=True)
class JoinedPair:
    spoken: HalfRecord
    written: HalfRecord

    @property
    def pair_id(self) -> str:
        return self.spoken.pair_id

    @property
    def partition(self) -> Hashable:
        return self.spoken.partition

    @property
    def first(self) -> HalfRecord:
        return self.spoken if self.spoken.seen <= self.written.seen else self.written

    @property
    def second(self) -> HalfRecord:
        return self.written if self.spoken.seen <= self.written.seen else self.spoken

    @property
    def joined(self) -> float:
        """Monotonic time the pair became complete."""
        return self.second.seen

    @property
    def offsets(self) -> list[tuple[Hashable, int]]:
        return [(self.spoken.partition, self.spoken.offset), (self.written.partition, self.written.offset)]


class JoinOutcome(str, Enum):
    PENDING = "pending"
    JOINED = "joined"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    ALREADY_DECIDED = "already_decided"


@dataclass(slots=True)
class JoinResult:
    outcome: JoinOutcome
    pair: JoinedPair | None = None
    detail: str = ""
    evicted: list[HalfRecord] = field(default_factory=list)
    # duplicate / conflict / already_decided: the lowest offset of the pair this half belongs to
    related_offset: int | None = None


class JoinTable:
    """Pending halves keyed by ``(partition, pair_id)``, oldest first."""

    def __init__(self, ttl_s: float, max_pending: int, decided_memory: int = 20_000):
        if ttl_s <= 0 or max_pending < 1 or decided_memory < 0:
            raise ValueError("ttl_s must be > 0, max_pending >= 1, decided_memory >= 0")
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.decided_memory = decided_memory
        self._pending: OrderedDict[tuple[Hashable, str], HalfRecord] = OrderedDict()
        # partition -> pair_id -> what is remembered of the halves that made the decision
        self._decided: dict[Hashable, OrderedDict[str, Decided]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, half: HalfRecord) -> JoinResult:
        key = (half.partition, half.pair_id)
        held = self._pending.get(key)
        if held is not None:
            if held.half is half.half:
                if held.digest == half.digest:
                    return JoinResult(JoinOutcome.DUPLICATE, related_offset=held.offset)
                return JoinResult(
                    JoinOutcome.CONFLICT,
                    detail=f"{half.half.value} half of pair {half.pair_id!r} already held with different "
                    f"content (offset {held.offset})",
                    related_offset=held.offset,
                )
            del self._pending[key]
            return self._join(held, half)

        decided = self._decided.get(half.partition, {}).get(half.pair_id)
        if decided is not None:
            first_offset, spoken_digest, written_digest, restored = decided
            if (spoken_digest if half.half is Half.SPOKEN else written_digest) == half.digest:
                return JoinResult(JoinOutcome.DUPLICATE, related_offset=first_offset)
            if restored is not None and restored.half is not half.half:
                return self._join(restored, half)
            return JoinResult(
                JoinOutcome.ALREADY_DECIDED,
                detail=f"pair {half.pair_id!r} was already decided; this {half.half.value} half arrived after",
                related_offset=first_offset,
            )

        evicted = []
        while len(self._pending) >= self.max_pending:
            evicted.append(self._pop_oldest())
        self._pending[key] = half
        return JoinResult(JoinOutcome.PENDING, evicted=evicted)

    def restore(self, half: HalfRecord) -> None:
        """Remember a half read before the commit point (already finished: decided, or a copy of
        a decided half) without deciding anything. See "Restored memory" above."""
        memory = self._decided.get(half.partition)
        entry = memory.get(half.pair_id) if memory is not None else None
        if entry is None:
            self._remember(half.partition, half.pair_id, _decided(half.offset, half, restored=half))
            return
        first_offset, spoken_digest, written_digest, restored = entry
        if restored is not None and restored.half is not half.half:
            restored = None  # both halves were before the commit point: nothing to decide again
        # The first copy read of each half is the one that counted. (The entry keeps its place.)
        if half.half is Half.SPOKEN and spoken_digest is None:
            spoken_digest = half.digest
        elif half.half is Half.WRITTEN and written_digest is None:
            written_digest = half.digest
        memory[half.pair_id] = (first_offset, spoken_digest, written_digest, restored)

    def _join(self, first: HalfRecord, second: HalfRecord) -> JoinResult:
        spoken, written = (first, second) if first.half is Half.SPOKEN else (second, first)
        self._remember(second.partition, second.pair_id,
                       (min(spoken.offset, written.offset), spoken.digest, written.digest, None))
        return JoinResult(JoinOutcome.JOINED, pair=JoinedPair(spoken, written))

    def next_expiry(self) -> float | None:
        """Monotonic time at which the oldest pending half expires (None if nothing is pending)."""
        for oldest in self._pending.values():
            return oldest.seen + self.ttl_s
        return None

    def expire(self, now: float) -> list[HalfRecord]:
        """Remove and return the halves that waited ``ttl_s`` or longer, oldest first."""
        out = []
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.seen < self.ttl_s:
                break
            out.append(self._pop_oldest())
        return out

    def revoke(self, partitions: Iterable[Hashable]) -> list[HalfRecord]:
        """Forget everything about ``partitions``; returns the pending halves dropped."""
        gone = set(partitions)
        dropped = [h for key, h in self._pending.items() if key[0] in gone]
        for h in dropped:
            del self._pending[(h.partition, h.pair_id)]
        for p in gone:
            self._decided.pop(p, None)
        return dropped

    def pending(self) -> list[HalfRecord]:
        return list(self._pending.values())

    def _pop_oldest(self) -> HalfRecord:
        _, half = self._pending.popitem(last=False)
        self._remember(half.partition, half.pair_id, _decided(half.offset, half))
        return half

    def _remember(self, partition: Hashable, pair_id: str, decided: Decided) -> None:
        if self.decided_memory == 0:
            return
        memory = self._decided.setdefault(partition, OrderedDict())
        memory[pair_id] = decided
        memory.move_to_end(pair_id)
        while len(memory) > self.decided_memory:
            memory.popitem(last=False)
