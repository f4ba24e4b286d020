"""Which offsets are safe to commit.

Delivery guarantee: **at least once**. A record is *finished* when nothing more needs to happen
for it:

* its pair's verdict was acknowledged by the broker (both halves finish together), or
* it was dead-lettered and the dead letter was acknowledged, or
* it was an idempotent duplicate of a half already held or decided.

The committed offset of a partition is the lowest offset not yet finished (or one past the last
record read when all are finished). A half waiting for its partner is not finished, so it holds
the commit point: after a crash or a rebalance the partition is read again from there, which
rebuilds the join state, and no pair is lost.

A pair whose halves sit at offsets ``a < b`` registers its *span* ``a..b``
(:meth:`OffsetTracker.span`). Committing a point ``c`` with ``a < c <= b`` *splits* the pair: a
restart reads ``b`` again without ``a``. The matcher handles that by reading the ``lookback``
records before the commit point again when it gets a partition (they rebuild its memory of decided
pairs, see :meth:`digitmatch.consumer.join.JoinTable.restore`), so the commit point may split a
decided pair as long as ``a >= c - lookback``; a pair spread wider than that holds the commit point
at most ``lookback`` past ``a`` until the commit point can pass both halves at once. With ``lookback=0`` the
commit point never splits a pair, which in a stream where every pair overlaps the next (both
halves sent apart) means it hardly ever moves. Duplicates and late halves of a pair extend its
span the same way while its first half is still uncommitted.

Pairs that were finished after a held half, and pairs split by the commit point, are decided a
second time after a restart; the re-emitted verdict is identical in its decision fields (outcome,
score rounded to 6 decimals, threshold, model, predicted digits) as long as the same model version
serves it. (The score is rounded so that float round-off from a different batch composition does
not show; a score lying exactly on a rounding boundary can still differ in its 6th decimal.)
Consumers of ``matches.out`` should treat verdicts as upserts keyed by pair ID. One case stays
outside this guarantee: a duplicate or late half whose pair's first half lies more than
``lookback`` records before the commit point is, if it is read again after a crash, taken for the
first half of a new pair and ends as ``unpaired``.

Records are tracked in the order the consumer returns them (increasing offsets per partition);
completions may arrive in any order.
"""

from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable


class _PartitionOffsets:
    __slots__ = ("open", "finished", "spans", "passed", "next_offset", "committed", "lookback")

    def __init__(self, lookback: int) -> None:
        self.open: deque[int] = deque()  # tracked offsets, ascending, not yet passed by the commit point
        self.finished: set[int] = set()  # finished offsets still in ``open``
        self.spans: dict[int, int] = {}  # offset in ``open`` -> last offset of the pair starting there
        # (first, last) spans whose first offset the commit point passed and whose last it may not
        # have, ascending by first
        self.passed: list[tuple[int, int]] = []
        self.next_offset: int | None = None  # one past the last tracked offset
        self.committed: int | None = None  # last commit point handed out by ``mark_committed``
        self.lookback = lookback

    def commit_point(self) -> int | None:
        open_, finished, spans = self.open, self.finished, self.spans
        if not open_ or open_[0] not in finished:
            return open_[0] if open_ else self.next_offset
        # Walk the finished run at the front. After ``count`` records the candidate commit point is
        # the next tracked offset; it is allowed when the oldest span straddling it (first below
        # it, last at or past it) starts at most ``lookback`` before it. Spans are kept in order of
        # their first offset, so the oldest one still straddling is the leftmost one not yet over.
        passed, new = self.passed, []
        i = j = count = best = 0
        best_i = best_j = best_new = 0
        offsets = iter(open_)
        offset = next(offsets)
        while True:
            last = spans.get(offset, offset)
            if last > offset:
                new.append((offset, last))
            count += 1
            nxt = next(offsets, None)
            point = self.next_offset if nxt is None else nxt
            while i < len(passed) and passed[i][1] < point:
                i += 1
            while j < len(new) and new[j][1] < point:
                j += 1
            oldest = passed[i][0] if i < len(passed) else new[j][0] if j < len(new) else None
            if oldest is None or oldest >= point - self.lookback:
                best, best_i, best_j, best_new = count, i, j, len(new)
            if nxt is None or nxt not in finished:
                break
            offset = nxt
        if best:
            for _ in range(best):
                done = open_.popleft()
                finished.discard(done)
                spans.pop(done, None)
            self.passed = passed[best_i:] + new[best_j:best_new]
        return open_[0] if open_ else self.next_offset


class OffsetTracker:
    """Commit points of the partitions a matcher owns. ``lookback``: how far (in offsets) below the
    commit point a decided pair it splits may start (see the module docstring)."""

    def __init__(self, lookback: int = 0) -> None:
        if lookback < 0:
            raise ValueError("lookback must be >= 0")
        self.lookback = lookback
        self._parts: dict[Hashable, _PartitionOffsets] = {}

    def assign(self, partitions: Iterable[Hashable]) -> None:
        """Start tracking ``partitions`` afresh (the consumer reads them from their committed offset)."""
        for p in partitions:
            self._parts[p] = _PartitionOffsets(self.lookback)

    def revoke(self, partitions: Iterable[Hashable]) -> None:
        for p in partitions:
            self._parts.pop(p, None)

    def partitions(self) -> list[Hashable]:
        return list(self._parts)

    def track(self, partition: Hashable, offset: int) -> None:
        """A record was read. Offsets of one partition must be tracked in increasing order."""
        state = self._parts.get(partition)
        if state is None:
            state = self._parts[partition] = _PartitionOffsets(self.lookback)
        if state.next_offset is not None and offset < state.next_offset:
            raise ValueError(f"offset {offset} of {partition} tracked after {state.next_offset - 1}")
        state.open.append(offset)
        state.next_offset = offset + 1

    def finish(self, partition: Hashable, offset: int) -> bool:
        """Mark a record finished. Returns False for a partition no longer tracked (revoked)."""
        state = self._parts.get(partition)
        if state is None:
            return False
        if not state.open or offset < state.open[0] or offset >= state.next_offset:
            return False  # never tracked, or already passed by the commit point
        state.finished.add(offset)
        return True

    def span(self, partition: Hashable, first: int, last: int) -> bool:
        """Records ``first < last`` belong together: the commit point must not stop between them.
        Returns False when ``first`` was already committed past (nothing to hold any more)."""
        state = self._parts.get(partition)
        if state is None or not state.open or first < state.open[0] or last >= state.next_offset:
            return False
        if last > first:
            state.spans[first] = max(state.spans.get(first, first), last)
        return True

    def commit_point(self, partition: Hashable) -> int | None:
        state = self._parts.get(partition)
        return None if state is None else state.commit_point()

    def progress(self, partition: Hashable) -> tuple[int, int, list[int]] | None:
        """``(commit point, one past the last offset tracked, the unfinished offsets from the commit
        point on, ascending)``; None before anything was tracked (consumer/commit_metadata.py)."""
        state = self._parts.get(partition)
        if state is None:
            return None
        point = state.commit_point()
        if point is None:
            return None
        finished = state.finished
        return point, state.next_offset, [o for o in state.open if o not in finished]

    def unfinished(self, partition: Hashable) -> int:
        state = self._parts.get(partition)
        if state is None:
            return 0
        state.commit_point()
        return len(state.open) - len(state.finished)

    def to_commit(self) -> dict[Hashable, int]:
        """Commit points that moved since the last :meth:`mark_committed`."""
        out = {}
        for p, state in self._parts.items():
            point = state.commit_point()
            if point is not None and point != state.committed:
                out[p] = point
        return out

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        for p, point in offsets.items():
            state = self._parts.get(p)
            if state is not None:
                state.committed = point
