"""The checkpoint: which input records are finished, what is committed, and where a partition's
reading starts.

Rules:

* Every record handled is tracked (:meth:`Checkpoint.track`) and finished when nothing more needs
  to happen for it (:meth:`Checkpoint.finish`). The committed offset is
  :class:`~digitmatch.consumer.offsets.OffsetTracker`'s commit point (every record below it is
  finished; it may split a decided pair that starts at most ``lookback`` records below it); the
  commit's metadata (consumer/commit_metadata.py) adds how far the partition was read and which
  records from the commit point on are still unfinished.
* :meth:`to_commit` gives the positions that changed since the last commit. At least once, a
  metadata string that would not fit its budget is cut (:func:`~digitmatch.consumer.commit_metadata.truncated`:
  what it leaves out is decided again after a restart); exactly once it must fit whole
  (:meth:`overflowing` names the partitions whose pending halves must be evicted first:
  consumer/transactions.py). :meth:`commit` commits at least once, synchronously, for the partitions
  still assigned; a failed commit is counted and tried again at the next one.
* On every assignment, and on a rewind after an aborted transaction (:meth:`rewind`), the
  partition's committed position is read (:meth:`place`, at the next poll; retried at each poll
  while the broker does not answer, the partition's records dropped meanwhile) and reading starts
  ``lookback`` records before the committed offset (at the log's start when nothing is
  committed). While reading back (:meth:`read_back`):

  - records below the committed offset were finished: they only restore the join's memory of
    decided pairs (``remember``);
  - records from the committed offset up to the recorded end are finished unless the metadata
    lists them: the finished ones are remembered and tracked as finished (so that the next commit
    still says so), the listed ones handled;
  - without usable metadata (nothing recorded, or a broker that drops it: Tansu) every record
    from the committed offset on is handled, and the remembered halves may be joined again with a
    partner read again (``rejoin``: the at-least-once read-back of a split pair).

  A commit made while a partition is still read back keeps its recorded end, and the unfinished
  records not read again yet.

What a poll returned for a partition sought elsewhere is dropped (it is read again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from digitmatch.consumer import commit_metadata
from digitmatch.consumer.commit_metadata import Progress
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.offsets import OffsetTracker
from digitmatch.kafka.client import ClientError, Committed, Consumer, Partition, Record

log = logging.getLogger(__name__)

Records = dict[Partition, list[Record]]
# How long reading a committed position may take (a read_committed consumer waits for the
# transactions that still hold offsets of the partition: up to their timeout).
COMMITTED_TIMEOUT_S = 30.0


@dataclass(slots=True)
class _ReadBack:
    """A partition being read back from ``start``: its committed offset and recorded progress."""

    committed: int
    progress: Progress | None
    next: int  # the next offset expected

    @property
    def end(self) -> int:
        return self.progress.end if self.progress is not None else self.committed


class Checkpoint:
    def __init__(self, consumer: Consumer, lookback: int, metrics: MatcherMetrics, *, exact: bool = False,
                 budget: int | None = None, committed_timeout_s: float = COMMITTED_TIMEOUT_S):
        self.consumer = consumer
        self.lookback = lookback
        self.metrics = metrics
        self.exact = exact
        self.budget = commit_metadata.BUDGET if budget is None else budget
        self.committed_timeout_s = committed_timeout_s
        self.offsets = OffsetTracker(lookback)
        self.assigned: set[Partition] = set()
        self._unplaced: set[Partition] = set()  # committed position not read yet
        self._reading_back: dict[Partition, _ReadBack] = {}
        self._last: dict[Partition, Committed] = {}  # last position committed (or read)

    # ------------------------------------------------------------------ offsets

    def track(self, tp: Partition, offset: int) -> None:
        self.offsets.track(tp, offset)

    def finish(self, offsets: Iterable[tuple[Partition, int]]) -> None:
        for tp, offset in offsets:
            self.offsets.finish(tp, offset)

    def span(self, tp: Partition, first: int, last: int) -> None:
        self.offsets.span(tp, first, last)

    def progress(self, tp: Partition) -> tuple[int, int, list[int]] | None:
        """``(commit point, end, unfinished)`` to commit for ``tp`` now; None when nothing is known
        beyond what is committed."""
        if tp in self._unplaced:
            return None
        tracked = self.offsets.progress(tp)
        reading = self._reading_back.get(tp)
        if reading is None or reading.progress is None:
            return tracked
        # Still reading back: what the last commit said of the records not read again stands.
        later = sorted(o for o in reading.progress.unfinished if o >= reading.next)
        if tracked is None:
            point = reading.committed
            return (min(point, later[0]) if later else point), reading.end, later
        point, end, unfinished = tracked
        if later:
            point = min(point, later[0])
        return point, max(end, reading.end), unfinished + later

    def overflowing(self) -> dict[Partition, tuple[int, int, list[int]]]:
        """The assigned partitions whose unfinished records do not fit the metadata budget."""
        out = {}
        for tp in self.assigned:
            found = self.progress(tp)
            if found is not None and not commit_metadata.fits(*found, budget=self.budget):
                out[tp] = found
        return out

    def to_commit(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, Committed]:
        """Positions of the assigned partitions that changed since the last :meth:`mark_committed`."""
        out = {}
        for tp in self.assigned if partitions is None else partitions:
            found = self.progress(tp)
            if found is None:
                continue
            point, end, unfinished = found
            if not commit_metadata.fits(point, end, unfinished, budget=self.budget):
                if self.exact:
                    raise ValueError(f"{tp}: {len(unfinished)} unfinished records do not fit the commit metadata")
                end, unfinished = commit_metadata.truncated(point, end, unfinished, budget=self.budget)
            position = Committed(point, commit_metadata.encode(point, end, unfinished))
            if self._last.get(tp) != position:
                out[tp] = position
        return out

    def mark_committed(self, positions: dict[Partition, Committed]) -> None:
        self._last.update(positions)

    def commit(self) -> None:
        """At least once: commit what changed, synchronously."""
        points = self.to_commit()
        if not points:
            return
        try:
            self.consumer.commit(points)
        except ClientError as exc:
            self.metrics.commits.labels(result="error").inc()
            self.metrics.kafka_errors.labels(stage="commit").inc()
            log.warning("offset commit failed (retried at the next interval): %s", exc)
            return
        self.mark_committed(points)
        self.metrics.commits.labels(result="ok").inc()

    # ------------------------------------------------------------------ assignment

    def assign(self, partitions: set[Partition]) -> None:
        self.rewind(partitions)
        self.assigned |= partitions

    def rewind(self, partitions: Iterable[Partition]) -> None:
        """Forget what was read of ``partitions``: they are read again from their committed
        positions (a new assignment; an aborted transaction)."""
        partitions = set(partitions)
        self.offsets.revoke(partitions)
        self.offsets.assign(partitions)
        for tp in partitions:
            self._reading_back.pop(tp, None)
            self._last.pop(tp, None)
        self._unplaced |= partitions

    def revoke(self, partitions: set[Partition], lost: bool = False) -> None:
        """Forget ``partitions`` (revoked or lost alike: whoever reads them next, this matcher
        included, starts from their committed positions)."""
        self._unplaced -= partitions
        for tp in partitions:
            self._reading_back.pop(tp, None)
            self._last.pop(tp, None)
        self.offsets.revoke(partitions)
        self.assigned -= partitions

    def place(self, records: Records) -> Records:
        """Seek the partitions whose committed positions are to be read (see the rules); returns
        what of ``records`` stays to be handled."""
        if not self._unplaced:
            return records
        unplaced = self._unplaced & self.assigned
        self._unplaced &= self.assigned
        if not unplaced:
            return records
        try:
            found = self.consumer.committed(sorted(unplaced), self.committed_timeout_s)
        except ClientError as exc:
            log.warning("reading the committed offsets failed (tried again at the next poll): %s", exc)
            return {tp: batch for tp, batch in records.items() if tp not in unplaced}
        sought = {}
        for tp in sorted(unplaced):
            position = found.get(tp)
            if position is None:
                begin = 0
            else:
                progress = commit_metadata.decode(position.offset, position.metadata)
                begin = max(0, position.offset - self.lookback)
                self._reading_back[tp] = _ReadBack(position.offset, progress, begin)
                self._last[tp] = position
            self.consumer.seek(tp, begin)
            sought[tp] = (begin, position.offset if position else None,
                          None if position is None or tp not in self._reading_back
                          or self._reading_back[tp].progress is None else self._reading_back[tp].end)
        self._unplaced -= unplaced
        log.info("reading partitions from (start, committed offset, recorded end): %s",
                 {tp.partition: where for tp, where in sorted(sought.items())})
        return {tp: batch for tp, batch in records.items() if tp not in sought}

    def read_back(self, tp: Partition, batch: list[Record],
                  remember: Callable[[Record, bool], None]) -> Iterator[Record]:
        """The records of ``batch`` to handle, in order; those finished before (see the rules) go to
        ``remember(record, rejoin)`` instead."""
        reading = self._reading_back.get(tp)
        if reading is None:
            yield from batch
            return
        progress = reading.progress
        for i, record in enumerate(batch):
            offset = record.offset
            if offset >= reading.end:
                del self._reading_back[tp]
                log.info("partition %d: read back up to %d", tp.partition, reading.end)
                yield from batch[i:]
                return
            reading.next = offset + 1
            if offset < reading.committed:
                remember(record, progress is None)
            elif offset in progress.unfinished:
                yield record
            else:
                remember(record, False)
                self.offsets.track(tp, offset)
                self.offsets.finish(tp, offset)
