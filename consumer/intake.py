"""Records in: each record read is decoded, stamped with its partition's stream time, checked for
its partition, joined with its partner and batched; what is bad is dead-lettered, and a half whose
partner will not come gets an ``unpaired`` verdict.

Rules (the wire format's are in docs/wire-format.md, the join's in consumer/join.py, the
partition check's in consumer/routing.py):

* Every record read is tracked by the checkpoint first; it is finished when its pair's verdict,
  its dead letter, or nothing (an identical duplicate) has been taken care of.
* A joined pair's span (its two offsets) and a duplicate's or late half's tie to its pair are
  registered with the checkpoint, which keeps the commit point from splitting them unsafely.
* A poll's records of a partition are decoded together (:func:`digitmatch.wire.decode_halves`:
  the same answers as one by one) and checked for their partition together
  (:meth:`Intake.handle_batch`), then handled one by one in offset order; a valid half in another
  partition than its key hashes to is dead-lettered ``misrouted`` instead of joined. A record the
  client could not read whole (no headers: a header name that is not UTF-8, or a batch it could not
  inflate) is dead-lettered as such, whatever its value holds.
* A record read back that was finished before (below the commit point, or listed as finished by
  the commit's metadata: consumer/checkpointing.py) decides nothing and is not checked
  (:meth:`Intake.remember`): its valid half only restores the join's memory of decided pairs.
* No ``unpaired`` verdict is published for a partition the matcher no longer owns: its next owner
  reads the half again and decides it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from digitmatch.consumer import verdicts
from digitmatch.consumer.batcher import Batcher
from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.config import MatcherConfig
from digitmatch.consumer.dead_letter import is_truncated
from digitmatch.consumer.models import ModelManager
from digitmatch.consumer.join import HalfRecord, JoinedPair, JoinOutcome, JoinTable, digest
from digitmatch.consumer.metrics import MatcherMetrics, observe_all
from digitmatch.consumer.outbox import Outbox
from digitmatch.consumer.pausing import BackPressure
from digitmatch.consumer.routing import Routing
from digitmatch.consumer.stream_time import StreamClock
from digitmatch.kafka.client import Partition, Record
from digitmatch.wire import DecodedHalf, InvalidMessage, Reason, decode_halves

log = logging.getLogger(__name__)

# The checkpoint's choice of a partition's records to handle (Checkpoint.read_back): (partition,
# records, remember(record, rejoin)) -> the records to handle, in order.
ReadBack = Callable[[Partition, list[Record], Callable[[Record, bool], None]], Iterable[Record]]

# The detail of a record whose headers the Kafka client could not read.
UNREADABLE_HEADERS = "a header name is not valid UTF-8: the record's headers cannot be read"


class Intake:
    def __init__(self, config: MatcherConfig, *, join: JoinTable, clock: StreamClock, batcher: Batcher[JoinedPair],
                 checkpoint: Checkpoint, pressure: BackPressure, outbox: Outbox, models: ModelManager,
                 metrics: MatcherMetrics, routing: Routing, mirror: bool):
        self.config = config
        self.join = join
        self.clock = clock
        self.routing = routing
        self.batcher = batcher
        self.checkpoint = checkpoint
        self.pressure = pressure
        self.outbox = outbox
        self.models = models
        self.metrics = metrics
        self.mirror = mirror  # verdicts to their input partition number (consumer/verdicts.py)
        # Records read per half, added to digitmatch_messages_consumed_total once per poll (a
        # labelled counter increment per record was a measurable share of the poll loop), and the
        # join waits of the pairs joined, observed once per poll too (metrics.observe_all).
        self.consumed = {"spoken": 0, "written": 0, "invalid": 0}
        self.join_waits: list[float] = []

    def count_consumed(self) -> None:
        """The poll's counts and join waits into the metrics (the matcher calls it once per poll)."""
        for half, count in self.consumed.items():
            if count:
                self.metrics.messages_consumed.labels(half=half).inc(count)
                self.consumed[half] = 0
        if self.join_waits:
            observe_all(self.metrics.join_wait, self.join_waits)
            self.join_waits.clear()

    def handle_batch(self, tp: Partition, polled: list[Record], now: float, now_ms: int,
                     read_back: ReadBack | None = None) -> None:
        """A poll's records of ``tp``: decoded and their partition checked at once, then each
        handled, in order. ``read_back`` (the checkpoint's) picks the records to handle and hands
        those finished before to :meth:`remember` (default: all are handled)."""
        decoded = {record.offset: half if record.headers is not None else _unreadable(record)
                   for record, half in zip(polled, decode_halves(polled))}
        misrouted = self.routing.misrouted(tp, polled)
        handled = polled if read_back is None else read_back(
            tp, polled, lambda record, rejoin: self.remember(tp, record, decoded[record.offset], now, now_ms, rejoin))
        for record in handled:
            self.handle(tp, record, decoded[record.offset], now, now_ms, misrouted.get(record.offset))

    def handle(self, tp: Partition, record: Record, half: DecodedHalf | InvalidMessage, now: float, now_ms: int,
               misrouted: str | None = None) -> None:
        """Join and batch the record's decoded ``half``; dead-letter what is bad (docs/wire-format.md:
        an :class:`InvalidMessage`, as :meth:`handle_batch` decodes it), and a valid half
        ``misrouted`` (the detail) to another partition than its key's."""
        self.checkpoint.track(tp, record.offset)
        stream_ms = self.clock.observe(tp, record.timestamp, now_ms)
        if isinstance(half, InvalidMessage):
            self.consumed["invalid"] += 1
            self.dead_letter(tp, record, half.reason, half.detail)
            return
        self.consumed[half.half.value] += 1
        if misrouted is not None:
            self.dead_letter(tp, record, Reason.MISROUTED, misrouted)
            return
        result = self.join.add(HalfRecord(tp, record.offset, half.pair_id, half.half, half.array, digest(record.value),
                                          now, now_ms, half.digit, half.produced_ms, stream_ms, half.sample_rate))
        for old in result.evicted:
            self.unpaired(old)
        if result.related_offset is not None:  # a duplicate, conflict or late half: keep it with its pair
            self.checkpoint.span(tp, result.related_offset, record.offset)
        if result.outcome is JoinOutcome.JOINED:
            pair = result.pair
            self.checkpoint.span(tp, min(pair.spoken.offset, pair.written.offset),
                                 max(pair.spoken.offset, pair.written.offset))
            self.join_waits.append(abs(pair.written.seen - pair.spoken.seen))
            full = self.batcher.add(pair, now)
            if full is not None:
                self.pressure.submit(full, self.checkpoint.assigned)
        elif result.outcome is JoinOutcome.DUPLICATE:
            self.checkpoint.finish([(tp, record.offset)])
        elif result.outcome is JoinOutcome.CONFLICT:
            self.dead_letter(tp, record, Reason.CONFLICTING_DUPLICATE, result.detail)
        elif result.outcome is JoinOutcome.ALREADY_DECIDED:
            self.dead_letter(tp, record, Reason.ALREADY_DECIDED, result.detail)

    def remember(self, tp: Partition, record: Record, half: DecodedHalf | InvalidMessage, now: float, now_ms: int,
                 rejoin: bool = True) -> None:
        """A record read back that was finished before: its valid (decoded) ``half`` only restores
        the join's memory of decided pairs (it was decided, or dead-lettered, before; ``rejoin``:
        :meth:`JoinTable.restore`)."""
        stream_ms = self.clock.observe(tp, record.timestamp, now_ms)
        if isinstance(half, InvalidMessage):
            return
        self.join.restore(HalfRecord(tp, record.offset, half.pair_id, half.half, half.array, digest(record.value),
                                     now, now_ms, half.digit, half.produced_ms, stream_ms, half.sample_rate), rejoin)

    def dead_letter(self, tp: Partition, record: Record, reason: Reason, detail: str) -> None:
        log.info("dead letter %s:%d:%d: %s: %s", tp.topic, tp.partition, record.offset, reason.value, detail)
        out = verdicts.rejected(self.config.dlq_topic, tp, record, reason, detail, self.config.max_dead_letter_bytes)
        if is_truncated(out.record):
            self.metrics.dead_letters_truncated.inc()
        self.outbox.send(out)

    def unpaired(self, half: HalfRecord) -> None:
        # Not observed in digitmatch_end_to_end_seconds: an unpaired verdict waits the join TTL by
        # design, and would make the latency quantiles (and their alert) about lone halves.
        if half.partition not in self.checkpoint.assigned:
            return  # no longer ours: its next owner reads the half again and decides it
        verdict = verdicts.unpaired_verdict(half, self.models.current)
        self.outbox.send(verdicts.unpaired(self.config.output_topic, half, verdict, self.mirror))


def _unreadable(record: Record) -> InvalidMessage:
    """Why a record the client could not read whole is dead-lettered: the client's reason when it
    could not read the record at all, else its headers (a header name that is not valid UTF-8)."""
    if record.unreadable:
        return InvalidMessage(Reason.UNREADABLE, record.unreadable)
    return InvalidMessage(Reason.BAD_HEADER, UNREADABLE_HEADERS)
