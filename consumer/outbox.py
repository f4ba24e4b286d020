"""The outbox: every record the matcher publishes (verdicts, dead letters) until the broker has it.

Rules:

* :meth:`Outbox.send` and :meth:`Outbox.send_all` may be called from any thread (the verdicts
  thread sends a scored batch's verdicts in one ``send_all``). The records of one call go to the
  producer in one ``produce_many`` and come back as one report, once the producer has reported each
  of them (on its own thread); :meth:`Outbox.collect`, on the poll thread, takes the reports: each
  acknowledged record *finishes* the input offsets it carries (``on_finished``, once per report:
  only then may they be committed), and its outcome or reason is counted; each failed one is
  handled on its own, by the rules below.
* A failed delivery is sent again after ``retry_delay_s``, for as long as one of its input
  partitions is still this matcher's (``still_ours``); otherwise it is let go: its input is
  uncommitted and the partition's next owner decides it again.
* A dead letter refused as too large (a topic whose own limit is below ``--max-dead-letter-bytes``)
  is sent at once in its smallest form (``consumer/dead_letter.py``).
* After ``reset_after_failures`` failed deliveries in a row the producer is replaced (at most every
  ``reset_interval_s``): after the broker lost its state (a restart without data, a new cluster
  behind the same address) an idempotent producer stays in a fatal state, since the broker no
  longer knows its producer ID. The replacement is made on the poll thread (:meth:`collect`);
  deliveries still pending on the old producer fail and are sent again on the new one.
* Failures are logged once per ``log_interval_s`` at most (an outage fails hundreds a second);
  ``digitmatch_kafka_errors_total{stage="produce"}`` counts every one.

Exactly once (``transactional``, consumer/transactions.py), records go into the producer's open
transaction, and:

* a failed delivery is not sent again: the transaction is *doomed* (:attr:`Outbox.doomed`) and
  must be aborted, after which the input is read again from the committed positions and decided
  again. A dead letter refused as too large is then sent in its smallest form at once;
* :attr:`Outbox.gate` is held by the commit of a transaction: a record sent meanwhile (the
  verdicts thread) waits for the next transaction, so that everything in a committed transaction
  was acknowledged, and finished its input, before the offsets were computed;
* after an abort, :meth:`restart` forgets what was in flight: reports for records of the aborted
  transaction (delivered or not) finish nothing;
* the producer is never replaced (a producer that cannot go on ends the matcher: consumer/transactions.py).

The clock is passed in (``clock``), so the retry and replacement rules are tested without waiting.
"""

from __future__ import annotations

import logging
import contextlib
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Literal

from digitmatch.consumer.dead_letter import is_truncated, smallest
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.kafka.client import ClientError, OutgoingRecord, Partition, Producer
from digitmatch.wire import H_DLQ_SOURCE

log = logging.getLogger(__name__)

Offsets = list[tuple[Partition, int]]


@dataclass(slots=True)
class Outgoing:
    """A record on its way to the broker, and the input records it finishes once acknowledged."""

    record: OutgoingRecord
    offsets: Offsets
    kind: Literal["verdict", "dead_letter"]
    label: str  # verdict outcome or dead-letter reason
    correct: bool | None = None
    attempts: int = 0
    epoch: int = 0  # the outbox's epoch when sent (exactly once: the transaction's)


class Outbox:
    def __init__(self, new_producer: Callable[[], Producer], metrics: MatcherMetrics, *,
                 on_finished: Callable[[Offsets], None], still_ours: Callable[[Partition], bool],
                 retry_delay_s: float = 1.0, reset_after_failures: int = 3, reset_interval_s: float = 5.0,
                 log_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 transactional: bool = False):
        self.transactional = transactional
        self.gate = threading.Lock() if transactional else contextlib.nullcontext()
        self.doomed: ClientError | None = None  # exactly once: a delivery of this transaction failed
        self.produced = 0  # records sent since the last commit_marked()
        self._epoch = 0
        self._shrink: set[tuple[Partition, int]] = set()  # dead letters to send in their smallest form
        self._new_producer = new_producer
        self.producer = new_producer()
        self.metrics = metrics
        self._on_finished = on_finished
        self._still_ours = still_ours
        self.retry_delay_s = retry_delay_s
        self.reset_after_failures = reset_after_failures
        self.reset_interval_s = reset_interval_s
        self.log_interval_s = log_interval_s
        self._clock = clock
        self._reports: queue.SimpleQueue[_Sent] = queue.SimpleQueue()
        self._retries: deque[tuple[float, Outgoing]] = deque()
        self._failures = 0  # failed deliveries since the last acknowledged one
        self._next_reset = 0.0
        self._next_log = 0.0
        self._not_logged = 0

    @property
    def retrying(self) -> bool:
        return bool(self._retries)

    def send(self, outgoing: Outgoing) -> None:
        """Any thread. The acknowledgement (or failure) is taken by :meth:`collect`."""
        self.send_all([outgoing])

    def send_all(self, items: list[Outgoing]) -> None:
        """Any thread: ``items`` in one call of the producer, reported together (module docstring)."""
        if not items:
            return
        with self.gate:
            if self._shrink:
                for outgoing in items:
                    if outgoing.kind == "dead_letter" and self._shrink.intersection(outgoing.offsets):
                        self._shrink.difference_update(outgoing.offsets)
                        self._shrink_record(outgoing)
            epoch = self._epoch
            for outgoing in items:
                outgoing.epoch = epoch
            self.produced += len(items)
            sent = _Sent(items, epoch, self._reports.put)
            try:
                self.producer.produce_many([outgoing.record for outgoing in items], sent.reported)
            except ClientError as exc:  # not the interface's way (each record is reported), but kept safe
                for index in range(len(items)):
                    sent.reported(index, exc, None)

    def restart(self) -> None:
        """Exactly once, after an abort: nothing sent so far finishes anything any more."""
        self._epoch += 1
        self._retries.clear()
        self.doomed = None
        self.produced = 0
        self._failures = 0
        self.collect()  # takes (and ignores) what came back already

    def collect(self) -> None:
        """Poll thread: take the delivery reports, finish what was acknowledged, send again what
        failed and is due, replace a producer that keeps failing."""
        verdicts: Counter[str] = Counter()
        checked: Counter[bool] = Counter()
        dead: Counter[str] = Counter()
        while True:
            try:
                sent = self._reports.get_nowait()
            except queue.Empty:
                break
            if sent.epoch != self._epoch:
                continue  # of an aborted transaction: its input is read again
            finished: Offsets = []
            errors = sent.errors
            for index, outgoing in enumerate(sent.items):
                error = errors.get(index) if errors else None
                if error is None:
                    self._failures = 0
                    finished.extend(outgoing.offsets)
                    if outgoing.kind == "verdict":
                        verdicts[outgoing.label] += 1
                        if outgoing.correct is not None:
                            checked[outgoing.correct] += 1
                    else:
                        dead[outgoing.label] += 1
                else:
                    self._failed(outgoing, error)
            if finished:
                self._on_finished(finished)
        # Counted per label, then added once per call: a labelled increment per delivery was a
        # tenth of the poll loop's time.
        m = self.metrics
        for outcome, count in verdicts.items():
            m.verdicts.labels(outcome=outcome).inc(count)
        for correct, count in checked.items():
            m.verdicts_checked.labels(correct="true" if correct else "false").inc(count)
        for reason, count in dead.items():
            m.dead_letters.labels(reason=reason).inc(count)
        now = self._clock()
        while self._retries and self._retries[0][0] <= now:
            self.send(self._retries.popleft()[1])
        if not self.transactional and self._failures >= self.reset_after_failures and now >= self._next_reset:
            self._reset_producer(now)

    def drain(self, deadline: float) -> None:
        """Deliver what is queued and retried, until ``deadline`` (monotonic) at the latest."""
        self._flush(deadline)
        while self._retries and self._clock() < deadline:
            time.sleep(self.retry_delay_s / 4)
            self._flush(deadline)

    def close(self, timeout_s: float) -> None:
        self.producer.close(max(0.0, timeout_s))

    def _flush(self, deadline: float) -> None:
        try:
            self.producer.flush(max(0.0, deadline - self._clock()))
        except ClientError as exc:
            log.warning("not every record was acknowledged in time: %s", exc)
        self.collect()

    def flush(self, timeout_s: float) -> bool:
        """Exactly once, before a commit: wait until everything sent is acknowledged (or failed),
        and take the reports. False if some are still out after ``timeout_s``."""
        try:
            self.producer.flush(timeout_s)
        except ClientError as exc:
            log.warning("not every record of the transaction was acknowledged in time: %s", exc)
            return False
        finally:
            self.collect()
        return True

    def _failed(self, outgoing: Outgoing, error: ClientError) -> None:
        self.metrics.kafka_errors.labels(stage="produce").inc()
        outgoing.attempts += 1
        if self.transactional:
            if outgoing.kind == "dead_letter" and error.too_large and smallest(outgoing.record) != outgoing.record:
                self._shrink.update(outgoing.offsets)  # once the input is read again
            if self.doomed is None:
                log.warning("publishing a %s to %s failed inside the transaction: aborting it: %s",
                            outgoing.kind, outgoing.record.topic, error)
                self.doomed = error
            return
        if outgoing.kind == "dead_letter" and error.too_large and self._shrink_record(outgoing):
            self.send(outgoing)  # at once: the broker answered, it is not unreachable
            return
        self._failures += 1
        if not any(self._still_ours(tp) for tp, _ in outgoing.offsets):
            log.warning("giving up on a %s for revoked partitions (its input is read again): %s", outgoing.kind, error)
            return
        self._log_failure(outgoing, error)
        self._retries.append((self._clock() + self.retry_delay_s, outgoing))

    def _shrink_record(self, outgoing: Outgoing) -> bool:
        """Make a dead letter refused as too large its smallest form; False if it is that already."""
        small = smallest(outgoing.record)
        if small == outgoing.record:
            return False
        source = next((v.decode("ascii", "replace") for n, v in outgoing.record.headers if n == H_DLQ_SOURCE), "?")
        log.warning("a dead letter of %s was refused as too large: sending it without its value and headers", source)
        if not is_truncated(outgoing.record):
            self.metrics.dead_letters_truncated.inc()
        outgoing.record = small
        return True

    def _log_failure(self, outgoing: Outgoing, error: ClientError) -> None:
        now = self._clock()
        if now < self._next_log:
            self._not_logged += 1
            return
        more = f" ({self._not_logged} more failed deliveries not logged)" if self._not_logged else ""
        log.warning("publishing a %s to %s failed (attempt %d), retrying: %s%s",
                    outgoing.kind, outgoing.record.topic, outgoing.attempts, error, more)
        self._next_log = now + self.log_interval_s
        self._not_logged = 0

    def _reset_producer(self, now: float) -> None:
        self._next_reset = now + self.reset_interval_s
        log.warning("%d deliveries failed in a row: recreating the producer (broker restarted or lost its state?)",
                    self._failures)
        try:
            fresh = self._new_producer()
        except ClientError as exc:
            log.warning("could not recreate the producer (%s); trying again later", exc)
            return
        old, self.producer = self.producer, fresh
        self._failures = 0
        # Closing flushes, which waits for the old producer to fail what it still holds: not here.
        threading.Thread(target=_close_quietly, args=(old,), name="producer-close", daemon=True).start()


class _Sent:
    """The records of one :meth:`Outbox.send_all`, put on the outbox's queue once the producer has
    reported each of them (reports may come on two threads: the producer's, and one that flushes).
    A second report of the same record is ignored."""

    __slots__ = ("items", "epoch", "errors", "_left", "_lock", "_done")

    def __init__(self, items: list[Outgoing], epoch: int, done: Callable[["_Sent"], None]):
        self.items = items
        self.epoch = epoch
        self.errors: dict[int, ClientError] | None = None  # by index, the records that failed
        self._left = set(range(len(items)))
        self._lock = threading.Lock()
        self._done = done

    def reported(self, index: int, error: ClientError | None, _offset: int | None) -> None:
        with self._lock:
            if index not in self._left:
                return
            self._left.discard(index)
            if error is not None:
                if self.errors is None:
                    self.errors = {}
                self.errors[index] = error
            complete = not self._left
        if complete:
            self._done(self)


def _close_quietly(producer: Producer, timeout_s: float = 10.0) -> None:
    try:
        producer.close(timeout_s)
    except Exception as exc:  # a producer in a fatal state may not flush: nothing more to do with it
        log.warning("the replaced producer did not close cleanly: %s", exc)
