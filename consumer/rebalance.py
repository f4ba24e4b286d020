"""Rebalances: what the matcher does when the group gives it partitions or takes them away.

Rules (the client calls these on the poll thread, inside ``poll``: see digitmatch.kafka.client):

* **Assigned**: the partitions are tracked from where their reading starts
  (:class:`~digitmatch.consumer.checkpointing.Checkpoint`), and paused at once if the input is
  paused for back-pressure; the input topic's partition count is read again before the next
  partition check (:class:`~digitmatch.consumer.routing.Routing`: the assignment changes when
  partitions are added).
* **Revoked**: everything joined so far is scored and published and its acknowledgements collected
  (``drain``), the positions are committed (``commit``: exactly once, the transaction, the revoked
  partitions' positions included), and the pending halves of the revoked partitions are forgotten
  without a verdict: they are unfinished, so their next owner reads them again.
* **Lost** (the group moved on without this member): logged as a warning and counted in
  ``digitmatch_kafka_errors_total{stage="consume"}``; then the same, except that nothing is committed
  (it would be refused): exactly once, the transaction is aborted (``abort``, which reads the
  partitions kept again from their committed positions). Whoever gets the partitions next, this
  matcher included, reads them from their committed positions.
"""

from __future__ import annotations

import logging
from typing import Callable

from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.join import JoinTable
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.pausing import BackPressure
from digitmatch.consumer.routing import Routing
from digitmatch.consumer.stream_time import StreamClock
from digitmatch.kafka.client import Partition

log = logging.getLogger(__name__)


class Rebalance:
    def __init__(self, checkpoint: Checkpoint, pressure: BackPressure, join: JoinTable, clock: StreamClock,
                 routing: Routing, metrics: MatcherMetrics, *, drain: Callable[[], None], commit: Callable[[], None],
                 abort: Callable[[str], None] | None = None, changed: Callable[[], None]):
        self.checkpoint = checkpoint
        self.metrics = metrics
        self._commit = commit
        self._abort = abort
        self.pressure = pressure
        self.join = join
        self.clock = clock
        self.routing = routing
        self._drain = drain
        self._changed = changed

    def on_assigned(self, partitions: set[Partition]) -> None:
        self.checkpoint.assign(partitions)
        self.pressure.assigned(partitions)
        self.routing.assigned()
        log.info("partitions assigned: %s", sorted(tp.partition for tp in self.checkpoint.assigned))
        self._changed()

    def on_revoked(self, partitions: set[Partition]) -> None:
        self._take_away(partitions, lost=False)

    def on_lost(self, partitions: set[Partition]) -> None:
        self._take_away(partitions, lost=True)

    def _take_away(self, partitions: set[Partition], lost: bool) -> None:
        if not partitions:
            return
        numbers = sorted(tp.partition for tp in partitions)
        if lost:  # the consumer's failure: counted, and said louder than a rebalance
            self.metrics.kafka_errors.labels(stage="consume").inc()
            log.warning("partitions lost: %s (the group moved on without this member: no heartbeat reached the "
                        "coordinator within the session timeout); draining in-flight pairs", numbers)
        else:
            log.info("partitions revoked: %s; draining in-flight pairs and committing", numbers)
        self._drain()
        if not lost:
            self._commit()
        elif self._abort is not None:
            self._abort("partitions lost")
        self.checkpoint.revoke(partitions, lost)
        dropped = self.join.revoke(partitions)
        self.clock.forget(partitions)
        self._changed()
        if dropped:
            log.info("dropped %d pending halves of revoked partitions (the next owner reads them again)", len(dropped))
