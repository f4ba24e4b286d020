"""Checkpointing: the offsets the matcher has finished, their commits, and where a partition's
reading starts when the matcher gets it.

Rules:

* Which offsets may be committed is :class:`~digitmatch.consumer.offsets.OffsetTracker`'s (at least
  once; the commit point may split a decided pair that starts at most ``lookback`` records below
  it). :meth:`Checkpoint.commit` commits, synchronously, the commit points of the partitions still
  assigned; a failed commit is counted and tried again at the next one.
* A partition kept across a rebalance (revoked, then assigned again) is sought back to its commit
  point: its pending halves were forgotten on revocation, so they must be read again, as a new
  owner would.
* A newly assigned partition starts at its committed offset, which the first record the consumer
  returns for it shows.
* Either way, with ``lookback`` > 0 reading starts that many records earlier: those records, up to
  the commit point, only restore the join's memory of decided pairs (:meth:`Checkpoint.read_back`).

What a poll returned for a partition sought elsewhere is dropped (it is read again).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.offsets import OffsetTracker
from digitmatch.kafka.client import ClientError, Consumer, Partition, Record

log = logging.getLogger(__name__)

Records = dict[Partition, list[Record]]


class Checkpoint:
    def __init__(self, consumer: Consumer, lookback: int, metrics: MatcherMetrics):
        self.consumer = consumer
        self.lookback = lookback
        self.metrics = metrics
        self.offsets = OffsetTracker(lookback)
        self.assigned: set[Partition] = set()
        self._rewind_points: dict[Partition, int] = {}  # revoked: where to read again if they come back
        self._rewinds: dict[Partition, int] = {}  # assigned again: to be sought back there
        self._unplaced: set[Partition] = set()  # newly assigned, committed offset not seen yet
        self._read_back_end: dict[Partition, int] = {}  # reading back up to this commit point

    # ------------------------------------------------------------------ offsets

    def track(self, tp: Partition, offset: int) -> None:
        self.offsets.track(tp, offset)

    def finish(self, offsets: Iterable[tuple[Partition, int]]) -> None:
        for tp, offset in offsets:
            self.offsets.finish(tp, offset)

    def span(self, tp: Partition, first: int, last: int) -> None:
        self.offsets.span(tp, first, last)

    def commit(self) -> None:
        points = {tp: off for tp, off in self.offsets.to_commit().items() if tp in self.assigned}
        if not points:
            return
        try:
            self.consumer.commit(points)
        except ClientError as exc:
            self.metrics.commits.labels(result="error").inc()
            self.metrics.kafka_errors.labels(stage="commit").inc()
            log.warning("offset commit failed (retried at the next interval): %s", exc)
            return
        self.offsets.mark_committed(points)
        self.metrics.commits.labels(result="ok").inc()

    # ------------------------------------------------------------------ assignment

    def assign(self, partitions: set[Partition]) -> None:
        self._rewinds.update({tp: p for tp, p in self._rewind_points.items() if tp in partitions})
        self._rewind_points.clear()
        self._unplaced |= partitions - set(self._rewinds)
        self.offsets.assign(partitions)
        self.assigned |= partitions

    def revoke(self, partitions: set[Partition], lost: bool) -> None:
        """Forget ``partitions``; unless they were lost (the client forgets their positions and
        reads them again from the committed offsets), remember where to read them again from."""
        for tp in () if lost else partitions:
            point = self.offsets.commit_point(tp)
            if point is None:  # revoked while reading back: nothing tracked yet
                point = self._read_back_end.get(tp)
            if point is not None:
                self._rewind_points[tp] = point
        self._unplaced -= partitions
        for tp in partitions:
            self._read_back_end.pop(tp, None)
        self.offsets.revoke(partitions)
        self.assigned -= partitions

    def place(self, records: Records) -> Records:
        """Seek the partitions whose reading must start elsewhere (see the rules); returns what of
        ``records`` stays to be handled."""
        if not (self._rewinds or self._unplaced):
            return records
        starts, kept = dict(self._rewinds), set(self._rewinds)
        self._rewinds.clear()
        for tp in list(self._unplaced):
            batch = records.get(tp)
            if tp in starts or tp not in self.assigned:
                self._unplaced.discard(tp)
            elif batch:
                starts[tp] = batch[0].offset
                self._unplaced.discard(tp)
        sought = {}
        for tp, point in starts.items():
            begin = max(0, point - self.lookback)
            if begin < point:
                self._read_back_end[tp] = point
            if begin < point or tp in kept:
                self.consumer.seek(tp, begin)
                sought[tp] = (begin, point)
        if sought:
            log.info("reading partitions again from (read-back start, commit point): %s",
                     {tp.partition: where for tp, where in sorted(sought.items())})
        return {tp: batch for tp, batch in records.items() if tp not in sought}

    def read_back(self, tp: Partition, batch: list[Record], remember: Callable[[Record], None]) -> list[Record]:
        """The records of ``batch`` before ``tp``'s commit point (finished already: not tracked,
        they decide nothing) go to ``remember``; returns the rest."""
        end = self._read_back_end.get(tp)
        if end is None:
            return batch
        for i, record in enumerate(batch):
            if record.offset >= end:
                del self._read_back_end[tp]
                log.info("partition %d: read back up to the commit point %d", tp.partition, end)
                return batch[i:]
            remember(record)
        return []
