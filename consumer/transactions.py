"""Exactly once (``--processing-guarantee exactly-once``): verdicts, dead letters and the consumed
offsets committed together, in one Kafka transaction per commit interval.

The cycle (:meth:`Transactions.commit`, every ``--commit-interval-ms``, before a revocation and at
shutdown):

1. Everything is published into the open transaction as soon as it is decided (no added latency).
2. With the outbox's gate held (nothing new enters the transaction), the producer is flushed: every
   record of the transaction is acknowledged, and has finished its input records.
3. The checkpoint's positions (consumer/checkpointing.py) go into the transaction
   (``send_offsets_to_transaction``) with the consumer's group metadata: the commit point, and in
   its metadata how far each partition was read and which records before that are unfinished
   (consumer/commit_metadata.py). Then ``commit_transaction``, and a new transaction begins.
   Whoever reads a partition next decides only what is unfinished (or read after): nothing twice,
   nothing pending lost.
4. A partition whose unfinished records would not fit its metadata (:data:`commit_metadata.BUDGET`)
   first has its oldest pending halves expired early, with ``unpaired`` verdicts (``evict``), until
   they fit; if in-flight pairs alone do not fit, they are scored and published first (``drain``).
   Each round strictly shrinks the list, so the cycle ends (at most :data:`ROUNDS` rounds).

Errors:

* **Abortable** (a delivery failed inside the transaction, an offset commit refused because the
  group moved on, a commit that cannot complete): the transaction is aborted and counted
  (``digitmatch_transactions_total{result="aborted"}``), then *rewound*: in-flight pairs are scored
  and published into the doomed transaction (so that none is left in the pipeline), the outbox
  forgets what it held, and every assigned partition drops its join state and is read again from
  its committed position, as after a revocation. Then the loop goes on.
* **Fatal** (the producer was fenced by a newer one of the same transactional ID, or failed for
  good): :class:`TransactionFatal` ends the matcher with one log line and a non-zero status. A
  fenced producer cannot be used again, and recreating every client in-process would amount to a
  restart with none of its guarantees tested; the orchestrator restarts it, and the restart
  recovers from the committed positions exactly as after a SIGKILL (docs/reliability.md).

Zombie fencing is KIP-447's: the offsets are sent with the consumer group's metadata (generation and
member ID), so the group coordinator refuses the offsets, and the transaction aborts, of a matcher
that was thrown out of the group while it stalled; and a read_committed consumer's reading of the
committed offsets waits for transactions still holding offsets of its partitions. So the
transactional ID needs no tie to partitions: one per matcher process is enough
(``<group>-<host>-<pid>-<random>``). What such an ID does not do is fence a crashed predecessor at
start: its open transaction is aborted by the coordinator after ``--transaction-timeout-ms``, and
until then the new owner of its partitions waits for their committed offsets and read_committed
readers of the outputs wait at its first open record; hence a short default.

Revocations commit the transaction (the revoked partitions' positions included) before letting the
partitions go; a loss aborts it (the group moved on: its offsets would be refused anyway).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Callable

from digitmatch.consumer import commit_metadata
from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.outbox import Outbox
from digitmatch.kafka.client import ClientError, Consumer, Partition, TransactionalProducer

log = logging.getLogger(__name__)

ROUNDS = 4  # rounds of evicting and draining before a commit fits (see rule 4; 3 always suffice)
CALL_TIMEOUT_S = 30.0  # flush, send_offsets, commit and abort: each at most this long


class TransactionFatal(Exception):
    """The transactional producer cannot go on: the matcher ends (the orchestrator restarts it)."""


def transactional_id(group_id: str) -> str:
    """One per matcher process (see the module's docstring)."""
    return f"{group_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Transactions:
    def __init__(self, consumer: Consumer, outbox: Outbox, checkpoint: Checkpoint, metrics: MatcherMetrics, *,
                 pending_offsets: Callable[[Partition], list[int]], evict: Callable[[Partition, int], None],
                 drain: Callable[[], None], forget: Callable[[set[Partition]], None],
                 timeout_s: float = CALL_TIMEOUT_S):
        self.consumer = consumer
        self.outbox = outbox
        self.checkpoint = checkpoint
        self.metrics = metrics
        self._pending_offsets = pending_offsets
        self._evict = evict
        self._drain = drain
        self._forget = forget
        self.timeout_s = timeout_s
        self.broken = False  # after a fatal error: nothing more is tried

    @property
    def producer(self) -> TransactionalProducer:
        return self.outbox.producer  # type: ignore[return-value]

    def begin(self) -> None:
        self._call(self.producer.begin)

    # ------------------------------------------------------------------ the cycle

    def commit(self) -> None:
        """Commit the open transaction with the positions it reached, and begin the next (see the
        module's docstring); aborts and rewinds instead if it cannot be committed."""
        if self.broken:
            return
        for _ in range(ROUNDS):
            if self.outbox.doomed is not None:
                self.abort(f"a delivery failed: {self.outbox.doomed}")
                return
            with self.outbox.gate:
                if not self.outbox.flush(self.timeout_s):
                    return  # tried again at the next interval
                if self.outbox.doomed is not None:
                    continue  # aborted above
                if not self.checkpoint.overflowing():
                    self._commit_now()
                    return
            self._fit()
        log.error("the commit metadata still does not fit after %d rounds: aborting", ROUNDS)
        self.abort("commit metadata over its budget")

    def _commit_now(self) -> None:
        positions = self.checkpoint.to_commit()
        if not positions and not self.outbox.produced:
            return  # nothing in this transaction
        try:
            if positions:
                self.producer.send_offsets(positions, self.consumer.group_metadata(), self.timeout_s)
            self._retrying(lambda: self.producer.commit(self.timeout_s))
        except ClientError as exc:
            self._failed(exc, "committing the transaction")
            return
        self.checkpoint.mark_committed(positions)
        self.outbox.produced = 0
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.commits.labels(result="ok").inc()
        self.begin()

    def _fit(self) -> None:
        """Rule 4: evict the oldest pending halves of the partitions over the budget; drain the
        in-flight pairs when that cannot be enough."""
        drain = False
        for tp, (point, end, unfinished) in self.checkpoint.overflowing().items():
            pending = self._pending_offsets(tp)
            needed = evictions_needed(point, end, unfinished, pending, self.checkpoint.budget)
            if needed is None:
                drain = True
                needed = len(pending)
            if needed:
                log.warning("partition %d: %d unfinished records do not fit the commit metadata: declaring the "
                            "%d oldest pending halves unpaired early", tp.partition, len(unfinished), needed)
                self._evict(tp, needed)
        if drain:
            self._drain()

    # ------------------------------------------------------------------ errors

    def abort(self, reason: str) -> None:
        """Abort the open transaction and rewind every assigned partition (see the module's docstring)."""
        if self.broken:
            return
        log.warning("aborting the transaction (%s): reading every partition again from its committed position",
                    reason)
        self._drain()
        try:
            self._retrying(lambda: self.producer.abort(self.timeout_s))
        except ClientError as exc:
            self._fatal(exc, "aborting the transaction")
        self.metrics.transactions.labels(result="aborted").inc()
        self.outbox.restart()
        partitions = set(self.checkpoint.assigned)
        self._forget(partitions)
        self.checkpoint.rewind(partitions)
        self.begin()

    def _failed(self, exc: ClientError, doing: str) -> None:
        self.metrics.kafka_errors.labels(stage="commit").inc()
        self.metrics.commits.labels(result="error").inc()
        if exc.fatal:
            self._fatal(exc, doing)
        self.abort(f"{doing}: {exc}")

    def _fatal(self, exc: ClientError, doing: str) -> None:
        self.broken = True
        raise TransactionFatal(f"exactly-once: the transactional producer cannot go on ({doing}: {exc}); "
                               "exiting so that the matcher is restarted") from None

    def _call(self, call: Callable[[], None]) -> None:
        try:
            call()
        except ClientError as exc:
            self._fatal(exc, getattr(call, "__name__", "a transaction call"))

    def _retrying(self, call: Callable[[], None], attempts: int = 3) -> None:
        """librdkafka: a retriable error of commit/abort may be retried with the same call."""
        for attempt in range(attempts):
            try:
                call()
                return
            except ClientError as exc:
                if not exc.retriable or exc.abortable or exc.fatal or attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))


def evictions_needed(point: int, end: int, unfinished: list[int], pending: list[int], budget: int) -> int | None:
    """How many of the oldest ``pending`` offsets must leave ``unfinished`` for the metadata to fit
    ``budget``; None when all of them are not enough (the rest is in flight). Taking an offset out
    never makes the metadata longer (two gaps become one, no longer than both), so the count is
    found by bisection."""

    def fits_without(count: int) -> bool:
        gone = set(pending[:count])
        return commit_metadata.fits(point, end, [o for o in unfinished if o not in gone], budget)

    if not fits_without(len(pending)):
        return None
    low, high = 0, len(pending)
    while low < high:
        middle = (low + high) // 2
        if fits_without(middle):
            high = middle
        else:
            low = middle + 1
    return low
