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

The commit point also never splits a pair: a pair whose halves sit at offsets ``a < b`` registers
the *span* ``a..b`` (:meth:`OffsetTracker.span`), and the commit point stops either at or before
``a`` or after ``b``, never between them. Otherwise a restart would read ``b`` without ``a`` and
declare a correctly decided pair ``unpaired``. Duplicates and late halves of a pair extend its span
the same way while its first half is still uncommitted.

Pairs that were finished after a held half are decided a second time after a restart; the
re-emitted verdict is identical in its decision fields (outcome, score rounded to 6 decimals,
threshold, model, predicted digits) as long as the same model version serves it. (The score is
rounded so that float round-off from a different batch composition does not show; a score lying
exactly on a rounding boundary can still differ in its 6th decimal.) Consumers of
``matches.out`` should treat verdicts as upserts keyed by pair ID. One case stays outside this
guarantee: a duplicate or late half that arrives after its pair's first half was already
committed is, if it is read again after a crash, taken for the first half of a new pair (the
matcher's memory of decided pairs does not survive the crash) and ends as ``unpaired``.

Records are tracked in the order the consumer returns them (increasing offsets per partition);
completions may arrive in any order.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Hashable, Iterable


class _PartitionOffsets:
    __slots__ = ("open", "finished", "spans", "next_offset", "committed")

    def __init__(self) -> None:
        self.open: deque[int] = deque()  # tracked offsets, ascending, not yet passed by the commit point
        self.finished: set[int] = set()  # finished offsets still in ``open``
        self.spans: dict[int, int] = {}  # offset in ``open`` -> last offset the commit point must pass with it
        self.next_offset: int | None = None  # one past the last tracked offset
        self.committed: int | None = None  # last commit point handed out by ``mark_committed``

    def commit_point(self) -> int | None:
        open_, finished, spans = self.open, self.finished, self.spans
        while open_:
            front = open_[0]
            if front not in finished:
                return front
            # ``front`` may be passed only together with everything up to the end of its span
            # (and of the spans that start inside it), all of which must be finished.
            need, count = spans.get(front, front), 1
            if need > front:
                for offset in itertools.islice(open_, 1, None):
                    if offset > need:
                        break
                    if offset not in finished:
                        return front
                    need = max(need, spans.get(offset, offset))
                    count += 1
                if need >= self.next_offset:
                    return front  # a span reaching past what was read (cannot happen for a pair)
            for _ in range(count):
                offset = open_.popleft()
                finished.discard(offset)
                spans.pop(offset, None)
        return self.next_offset


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[Hashable, _PartitionOffsets] = {}

    def assign(self, partitions: Iterable[Hashable]) -> None:
        """Start tracking ``partitions`` afresh (the consumer reads them from their committed offset)."""
        for p in partitions:
            self._parts[p] = _PartitionOffsets()

    def revoke(self, partitions: Iterable[Hashable]) -> None:
        for p in partitions:
            self._parts.pop(p, None)

    def partitions(self) -> list[Hashable]:
        return list(self._parts)

    def track(self, partition: Hashable, offset: int) -> None:
        """A record was read. Offsets of one partition must be tracked in increasing order."""
        state = self._parts.get(partition)
        if state is None:
            state = self._parts[partition] = _PartitionOffsets()
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
