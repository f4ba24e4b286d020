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

Expiry: a half whose partner does not come within ``ttl_s`` *of stream time* is expired
(:meth:`expire`) and gets an ``unpaired`` verdict: each half carries the stream time of its
partition when it was read (``stream_ms``), and expires once that partition's stream time is
``ttl_s`` past it (``consumer/stream_time.py`` says how stream time moves, also in a quiet
partition). Within a partition, halves expire oldest first.

Bounds: the pending halves are bounded in number (``max_pending``) and in bytes (``max_bytes``: the
bytes of their arrays, which are views of the record values they keep alive, plus
``HALF_OVERHEAD_BYTES`` each for the record, key and bookkeeping). When a new half would exceed
either, the pending halves read *first* (lowest monotonic ``seen``, whatever their partition) are
expired early until it fits (returned in ``evicted``); they too get an ``unpaired`` verdict. On a rebalance, :meth:`revoke` drops the pending halves (and the
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
from typing import TYPE_CHECKING, Hashable, Iterable

import numpy as np

from digitmatch.wire import Half

if TYPE_CHECKING:
    from digitmatch.consumer.stream_time import StreamClock

# Memory of a pending half besides its array: the HalfRecord, pair ID, digest, array object and
# the table's entry: about 510 bytes measured with tracemalloc for a one-frame spoken half.
HALF_OVERHEAD_BYTES = 1024


def digest(value: bytes) -> bytes:
    """Content fingerprint of a half's value, used to tell duplicates from conflicts: SHA-256, cut
    to 16 bytes. (CPUs with SHA instructions hash a 4.8 kB spoken half in about half the time
    BLAKE2b takes there: 5.6 against 12.9 µs on the benchmark machine, docs/benchmarks.md. It is
    held in memory only, never written anywhere.)"""
    return hashlib.sha256(value).digest()[:16]


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
    stream_ms: float = 0.0  # the partition's stream time when it was read (consumer/stream_time.py)
    sample_rate: int | None = None  # a pcm16 spoken half: array is its int16 samples at this rate

    @property
    def size(self) -> int:
        """What holding it costs, as counted against ``max_bytes``."""
        return self.array.nbytes + HALF_OVERHEAD_BYTES


@dataclass(slots=True)
class JoinedPair:
    spoken: HalfRecord
    written: HalfRecord

    @property
    def pair_id(self) -> str:
        return self.spoken.pair_id

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
    """Pending halves per partition, keyed by pair ID, in the order they were read."""

    def __init__(self, ttl_s: float, max_pending: int, decided_memory: int = 20_000,
                 max_bytes: int | None = None):
        if ttl_s <= 0 or max_pending < 1 or decided_memory < 0 or (max_bytes is not None and max_bytes < 1):
            raise ValueError("ttl_s must be > 0, max_pending >= 1, decided_memory >= 0, max_bytes >= 1")
        self.ttl_ms = ttl_s * 1000
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.decided_memory = decided_memory
        self._pending: dict[Hashable, OrderedDict[str, HalfRecord]] = {}
        self._count = 0
        self._bytes = 0
        # partition -> pair_id -> what is remembered of the halves that made the decision
        self._decided: dict[Hashable, OrderedDict[str, Decided]] = {}

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the pending halves, as counted against ``max_bytes``."""
        return self._bytes

    def add(self, half: HalfRecord) -> JoinResult:
        waiting = self._pending.get(half.partition)
        held = waiting.get(half.pair_id) if waiting is not None else None
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
            self._take(waiting, half.pair_id)
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
        size = half.size
        while self._count and (self._count >= self.max_pending
                               or (self.max_bytes is not None and self._bytes + size > self.max_bytes)):
            evicted.append(self._pop_oldest())
        waiting = self._pending.get(half.partition)
        if waiting is None:
            waiting = self._pending[half.partition] = OrderedDict()
        waiting[half.pair_id] = half
        self._count += 1
        self._bytes += size
        return JoinResult(JoinOutcome.PENDING, evicted=evicted)

    def restore(self, half: HalfRecord, rejoin: bool = True) -> None:
        """Remember a half read before the commit point (already finished: decided, or a copy of
        a decided half) without deciding anything. See "Restored memory" above. ``rejoin=False``:
        its partner, if it comes, is not joined with it again (the commit's metadata said that the
        records after it are finished too: nothing of its pair is decided again)."""
        memory = self._decided.get(half.partition)
        entry = memory.get(half.pair_id) if memory is not None else None
        if entry is None:
            self._remember(half.partition, half.pair_id, _decided(half.offset, half, restored=half if rejoin else None))
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

    def expire(self, clock: "StreamClock") -> list[HalfRecord]:
        """Remove and return the halves whose partition's stream time (``clock``) is ``ttl_s`` or
        more past their own, oldest first within each partition."""
        out = []
        for partition, waiting in list(self._pending.items()):
            now = clock.now(partition)
            if now is None:
                continue
            deadline = now - self.ttl_ms
            while waiting:
                oldest = next(iter(waiting.values()))
                if oldest.stream_ms > deadline:
                    break
                out.append(self._expire(waiting, oldest))
        return out

    def revoke(self, partitions: Iterable[Hashable]) -> list[HalfRecord]:
        """Forget everything about ``partitions``; returns the pending halves dropped."""
        dropped = []
        for p in set(partitions):
            waiting = self._pending.pop(p, None)
            if waiting:
                dropped.extend(waiting.values())
            self._decided.pop(p, None)
        self._count -= len(dropped)
        self._bytes -= sum(h.size for h in dropped)
        return dropped

    def evict(self, partition: Hashable, count: int) -> list[HalfRecord]:
        """Expire the ``count`` oldest pending halves of ``partition`` early (they get ``unpaired``
        verdicts, as beyond ``max_pending``): exactly once, when the partition's unfinished records
        would not fit its commit metadata (consumer/transactions.py)."""
        waiting = self._pending.get(partition)
        out = []
        while waiting and len(out) < count:
            out.append(self._expire(waiting, next(iter(waiting.values()))))
            waiting = self._pending.get(partition)
        return out

    def pending_offsets(self, partition: Hashable) -> list[int]:
        """Offsets of ``partition``'s pending halves, oldest first."""
        return [h.offset for h in self._pending.get(partition, {}).values()]

    def pending(self) -> list[HalfRecord]:
        return [h for waiting in self._pending.values() for h in waiting.values()]

    def _take(self, waiting: OrderedDict, pair_id: str) -> HalfRecord:
        half = waiting.pop(pair_id)
        if not waiting:
            del self._pending[half.partition]
        self._count -= 1
        self._bytes -= half.size
        return half

    def _expire(self, waiting: OrderedDict, half: HalfRecord) -> HalfRecord:
        self._take(waiting, half.pair_id)
        self._remember(half.partition, half.pair_id, _decided(half.offset, half))
        return half

    def _pop_oldest(self) -> HalfRecord:
        """The pending half read first, whatever its partition (the oldest of each partition's)."""
        waiting = min(self._pending.values(), key=lambda w: next(iter(w.values())).seen)
        return self._expire(waiting, next(iter(waiting.values())))

    def _remember(self, partition: Hashable, pair_id: str, decided: Decided) -> None:
        if self.decided_memory == 0:
            return
        memory = self._decided.setdefault(partition, OrderedDict())
        memory[pair_id] = decided
        memory.move_to_end(pair_id)
        while len(memory) > self.decided_memory:
            memory.popitem(last=False)
