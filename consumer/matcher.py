"""The matcher (``digitmatch serve``): the poll loop that ties join, batcher, inference, offsets,
dead letters, metrics and health together.

Threads:

* **poll loop** (the caller of :meth:`Matcher.run`): polls ``pairs.in``, decodes, joins, cuts
  batches, expires unpaired halves, commits offsets, handles rebalances. It never waits for the
  model, so heartbeats and rebalances stay healthy.
* **inference** (:class:`~digitmatch.consumer.inference.InferenceWorker`): scores batches from a
  bounded queue (``--max-queued-batches``) and hands the verdicts to the producer. When the queue
  is full, the poll loop pauses its partitions and resumes them when there is room.
* **producer I/O** (the Kafka client's): delivery acknowledgements are passed back to the poll
  loop through a thread-safe queue; only then are the records finished (see
  :mod:`digitmatch.consumer.offsets` for the delivery guarantee).
* **model watcher** and **HTTP endpoints**.

The Kafka client library is librdkafka (:mod:`digitmatch.kafka.clients` says why not kafka-python).

:class:`Matcher` runs in-process too: ``Matcher(config).start()`` runs the loop on a thread,
``stop()`` shuts it down gracefully (the same path as SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Literal

import confluent_kafka
from kafka import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from digitmatch.consumer.batcher import Batch, Batcher
from digitmatch.consumer.config import MatcherConfig, add_matcher_options
from digitmatch.consumer.dead_letter import OutgoingRecord, dead_letter, is_truncated, smallest
from digitmatch.consumer.health import HealthServer
from digitmatch.consumer.inference import InferenceWorker, ModelManager, unpaired_verdict
from digitmatch.consumer.join import HalfRecord, JoinedPair, JoinOutcome, JoinTable, digest
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.offsets import OffsetTracker
from digitmatch.consumer.stream_time import StreamClock
from digitmatch.kafka.clients import CLIENT_ERRORS, new_consumer, new_producer
from digitmatch.model.serving import ModelError, set_cpu_threads
from digitmatch.wire import H_DLQ_SOURCE, InvalidMessage, Reason, Verdict, decode_half, verdict_key
from digitmatch.wire import now_ms as wall_ms

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
RETRY_LOG_INTERVAL_S = 5.0
# A producer whose deliveries keep failing is replaced (at most this often): after the broker lost
# its state (a restart without data, a new cluster behind the same address) an idempotent producer
# stays in a fatal state, since the broker no longer knows its producer ID.
PRODUCER_RESET_AFTER_FAILURES = 3
PRODUCER_RESET_INTERVAL_S = 5.0
# Exit status of `digitmatch serve` when a graceful shutdown outlasted --shutdown-timeout-s.
SHUTDOWN_TIMED_OUT = 3
GAUGE_INTERVAL_S = 0.5
# How long a rebalance waits for in-flight verdicts to be acknowledged before it lets them go
# (uncommitted: the partitions' next owner decides those pairs again).
DRAIN_TIMEOUT_S = 30.0
# The detail of a record whose headers the Kafka client could not read (a record without headers
# has an empty list; librdkafka's consumer gives None when a header name is not valid UTF-8).
UNREADABLE_HEADERS = "a header name is not valid UTF-8: the record's headers cannot be read"


@dataclass(slots=True)
class Delivery:
    """A record on its way to the broker, and the input records it finishes once acknowledged."""

    record: OutgoingRecord
    offsets: list  # [(TopicPartition, offset)]
    kind: Literal["verdict", "dead_letter"]
    label: str  # verdict outcome or dead-letter reason
    correct: bool | None = None
    attempts: int = 0


class Matcher:
    def __init__(self, config: MatcherConfig):
        self.config = config
        self.metrics = MatcherMetrics()
        self.metrics.pending_halves_limit.set(config.max_pending_halves)
        self.metrics.pending_bytes_limit.set(config.max_pending_bytes)
        self.models = ModelManager(config.model, self.metrics, config.model_poll_s,
                                   max_batch_size=config.max_batch_size)
        self.join = JoinTable(config.join_ttl_s, config.max_pending_halves, config.decided_memory,
                              max_bytes=config.max_pending_bytes)
        self.clock = StreamClock()
        self.batcher: Batcher[JoinedPair] = Batcher(config.max_batch_size, config.max_delay_ms / 1000)
        self.offsets = OffsetTracker(config.lookback_records)
        self.batches: queue.Queue[Batch[JoinedPair] | None] = queue.Queue(maxsize=config.max_queued_batches)
        self.completions: queue.SimpleQueue[tuple[Delivery, Exception | None]] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.health: HealthServer | None = None
        self.consumer = None
        self.producer = None
        self.worker: InferenceWorker | None = None
        self.connected = False
        self.assigned: set = set()
        self._overflow: deque[Batch[JoinedPair]] = deque()
        # Rebalances: where each revoked partition must be read again from (its commit point), and
        # the retained ones the poll loop still has to seek back (see _on_assigned).
        self._rewind_points: dict = {}
        self._rewinds: dict = {}
        # Read-back (see _reposition): newly assigned partitions whose commit point is not known
        # yet, and per partition the commit point below which records only restore the join's
        # memory of decided pairs.
        self._unplaced: set = set()
        self._lookback_end: dict = {}
        self._retries: deque[tuple[float, Delivery]] = deque()
        self._next_retry_log = 0.0
        self._retries_not_logged = 0
        # Records read, per half, added to digitmatch_messages_consumed_total once per poll (a
        # labelled counter increment per record was a measurable share of the poll loop).
        self._consumed = {"spoken": 0, "written": 0, "invalid": 0}
        # Verdicts go to the partition their halves came from when both topics have as many
        # partitions (what the default partitioner picks then, without hashing each key again).
        self._mirror_partitions = False
        self._produce_failures = 0  # failed deliveries since the last acknowledged one
        self._producer_stale = False
        self._next_producer_reset = 0.0
        self._paused = False
        # Join, batcher, offsets and the overflow are touched by the poll loop and by the rebalance
        # listener, which kafka-python 3 runs on its own I/O thread (librdkafka: on the poll
        # thread, inside poll). The lock is never held across a call that waits for that thread
        # (poll, commit, close, position).
        self._lock = threading.RLock()
        self._poll_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._health_ready = threading.Event()
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ in-process control

    def start(self) -> "Matcher":
        """Run on a background thread; returns once the HTTP endpoints are bound."""
        self._thread = threading.Thread(target=self._run_captured, name="matcher", daemon=True)
        self._thread.start()
        self._health_ready.wait(30)
        return self

    def stop(self, timeout: float = 120) -> None:
        """Graceful shutdown (like SIGTERM) and wait for it."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return True
            if self._thread is not None and not self._thread.is_alive():
                return False
            time.sleep(0.05)
        return False

    @property
    def metrics_port(self) -> int | None:
        return None if self.health is None else self.health.port

    def readiness(self) -> dict[str, bool]:
        return {
            "model_loaded": self.models.current is not None,
            "model_serving": self.models.serving,
            "broker_connected": self.connected,
            "partitions_assigned": bool(self.assigned),
        }

    def is_ready(self) -> bool:
        return all(self.readiness().values())

    def running(self) -> bool:
        """The thread :meth:`start` began is still running."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the thread :meth:`start` began to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_captured(self) -> None:
        try:
            self.run()
        except (ModelError, OSError) as exc:  # a bad --model or a taken port: the caller says so
            self.error = exc
            log.debug("matcher could not start", exc_info=True)
        except BaseException as exc:  # kept for the caller of start() to inspect
            self.error = exc
            log.exception("matcher stopped with an error")

    # ------------------------------------------------------------------ main

    def run(self) -> None:
        """Serve until :attr:`stop_event` is set; then shut down gracefully."""
        cfg = self.config
        try:
            self.health = HealthServer(self.metrics, self.readiness, cfg.metrics_host, cfg.metrics_port).start()
        finally:
            self._health_ready.set()
        try:
            threads = set_cpu_threads(cfg.intra_op_threads, cfg.inter_op_threads)
            log.info("TensorFlow CPU threads: %s (0 = one per core)", threads)
            self.models.load()
            self.models.start_watching()
            self.worker = InferenceWorker(self.models, self.batches, self._on_scored, self.metrics,
                                          max_pairs=cfg.max_batch_size).start()
            if self._connect():
                try:
                    self._loop()
                finally:
                    self._shutdown()
        finally:
            if self.worker is not None and self.worker.is_alive():
                self.worker.abandon()
                self.worker.stop()
            self.models.stop()
            self.metrics.ready.set(0)
            self.health.stop()

    def _connect(self) -> bool:
        """Create the clients, waiting with backoff while no broker answers. False if stopped."""
        cfg = self.config
        delay = 1.0
        while not self.stop_event.is_set():
            producer = consumer = None
            try:
                producer = new_producer(cfg.kafka)
                consumer = new_consumer(cfg.kafka, cfg.group_id, session_timeout_ms=cfg.session_timeout_ms,
                                        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                                        fetch_max_wait_ms=cfg.fetch_max_wait_ms)
                consumer.subscribe([cfg.input_topic], listener=_RebalanceListener(self))
            except CLIENT_ERRORS as exc:
                for client in (consumer, producer):
                    if client is not None:
                        client.close()
                log.warning("Kafka at %s unavailable (%s); retrying in %.0f s",
                            cfg.kafka.bootstrap_servers, exc, delay)
                self.stop_event.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.producer, self.consumer, self.connected = producer, consumer, True
            self._mirror_partitions = _same_partitions(consumer, cfg.input_topic, cfg.output_topic)
            log.info("connected to %s; group %r on %r -> %r (dead letters %r)", cfg.kafka.bootstrap_servers,
                     cfg.group_id, cfg.input_topic, cfg.output_topic, cfg.dlq_topic)
            return True
        return False

    def _loop(self) -> None:
        cfg = self.config
        self._poll_thread = threading.current_thread()
        self.metrics.threads.assign("poll_loop")
        commit_every = cfg.commit_interval_ms / 1000
        next_commit = time.monotonic() + commit_every
        next_gauges = last_poll = time.monotonic()
        while not self.stop_event.is_set():
            if self._producer_stale:
                self._reset_producer()
            with self._lock:
                self._drain_completions()
                self._feed_inference()
                timeout_ms = self._poll_timeout_ms(time.monotonic(), next_commit)
            try:
                records = self.consumer.poll(timeout_ms=timeout_ms, max_records=cfg.max_poll_records)
            except CLIENT_ERRORS as exc:
                self.metrics.kafka_errors.labels(stage="consume").inc()
                log.warning("poll failed: %s", exc)
                self.stop_event.wait(0.5)
                continue
            with self._lock:
                if self._rewinds or self._unplaced:
                    records = self._reposition(records)
                now, now_ms = time.monotonic(), wall_ms()
                for tp, batch in records.items():
                    if tp not in self.assigned:
                        continue  # revoked while these were in flight; the next owner reads them
                    if tp in self._lookback_end:
                        batch = self._restore(tp, batch, now, now_ms)
                    for record in batch:
                        self._handle(tp, record, now, now_ms)
                self._count_consumed()
                self._advance_quiet_partitions(records, now - last_poll)
                last_poll = now
                now = time.monotonic()
                due = self.batcher.due(now)
                if due is not None:
                    self._submit(due)
                for half in self.join.expire(self.clock):
                    self._unpaired(half)
            if now >= next_commit:
                self._commit()
                next_commit = now + commit_every
            if now >= next_gauges:
                self._update_gauges()
                next_gauges = now + GAUGE_INTERVAL_S

    def _reposition(self, records: dict) -> dict:
        """Place partitions where their reading must start after an assignment.

        * A partition kept across a rebalance is sought back to its commit point: its pending
          halves were forgotten on revocation, so they must be read again, as a new owner would.
        * A newly assigned one starts at its committed offset, which the first record returned for
          it shows.
        * Either way, when ``--lookback-records`` is set, reading starts that many records earlier:
          those records only restore the memory of decided pairs (:meth:`_restore`), because the
          commit point may split one (consumer/offsets.py).

        What this poll returned for a partition sought elsewhere is dropped (it is read again)."""
        lookback = self.config.lookback_records
        starts, kept = dict(self._rewinds), set(self._rewinds)
        self._rewinds.clear()
        for tp in list(self._unplaced):
            batch = records.get(tp)
            if tp in starts or tp not in self.assigned:
                self._unplaced.discard(tp)
            elif batch:
                starts[tp] = batch[0].offset
                self._unplaced.discard(tp)
        if not starts:
            return records
        sought = {}
        for tp, point in starts.items():
            begin = max(0, point - lookback)
            if begin < point:
                self._lookback_end[tp] = point
            if begin < point or tp in kept:
                self.consumer.seek(tp, begin)
                sought[tp] = (begin, point)
        if sought:
            log.info("reading partitions again from (read-back start, commit point): %s",
                     {tp.partition: where for tp, where in sorted(sought.items())})
        return {tp: batch for tp, batch in records.items() if tp not in sought}

    def _restore(self, tp, batch: list, now: float, now_ms: int) -> list:
        """Records before the commit point of a partition just assigned: finished already, so they
        are not tracked and decide nothing; their valid halves restore the join's memory of decided
        pairs. Returns the rest of ``batch``."""
        end = self._lookback_end[tp]
        restored = 0
        for i, record in enumerate(batch):
            if record.offset >= end:
                del self._lookback_end[tp]
                log.info("partition %d: read back %d records before the commit point %d",
                         tp.partition, restored, end)
                return batch[i:]
            restored += 1
            stream_ms = self.clock.observe(tp, record.timestamp, now_ms)
            if record.headers is None:
                continue  # unreadable headers: it was dead-lettered
            try:
                half = decode_half(record.key, record.value, record.headers)
            except InvalidMessage:
                continue  # it was dead-lettered
            self.join.restore(HalfRecord(tp, record.offset, half.pair_id, half.half, half.array,
                                         digest(record.value), now, now_ms, half.digit, half.produced_ms,
                                         stream_ms))
        return []

    def _count_consumed(self) -> None:
        for half, count in self._consumed.items():
            if count:
                self.metrics.messages_consumed.labels(half=half).inc(count)
                self._consumed[half] = 0

    def _poll_timeout_ms(self, now: float, next_commit: float) -> int:
        # (Expiry needs no wake-up of its own: stream time moves with the records and the polls.)
        wake = [next_commit, now + (0.01 if self._paused or self._retries else 0.1)]
        deadline = self.batcher.deadline()
        if deadline is not None:
            wake.append(deadline)
        return max(0, int((min(wake) - now) * 1000))

    def _advance_quiet_partitions(self, records: dict, elapsed_s: float) -> None:
        """Stream time of the partitions this poll brought nothing for moves on while they are
        caught up and not paused (consumer/stream_time.py), so their lone halves still expire."""
        if self._paused or not len(self.join):
            return
        quiet = [tp for tp in self.assigned if tp not in records and self._caught_up(tp)]
        if quiet:
            self.clock.idle(quiet, elapsed_s)

    def _caught_up(self, tp) -> bool:
        """Nothing left to read on ``tp`` as of the last fetch response."""
        try:
            high = self.consumer.highwater(tp)
            position = self.consumer.position(tp) if high is not None else None
        except Exception:  # not fetched yet / being reassigned: not known to be caught up
            return False
        return position is not None and position >= high

    # ------------------------------------------------------------------ records in

    def _handle(self, tp, record, now: float, now_ms: int) -> None:
        self.offsets.track(tp, record.offset)
        stream_ms = self.clock.observe(tp, record.timestamp, now_ms)
        try:
            if record.headers is None:
                unreadable = getattr(record, "unreadable", None)
                if unreadable is not None:
                    raise InvalidMessage(Reason.UNREADABLE, unreadable)
                raise InvalidMessage(Reason.BAD_HEADER, UNREADABLE_HEADERS)
            half = decode_half(record.key, record.value, record.headers)
        except InvalidMessage as exc:
            self._consumed["invalid"] += 1
            self._dead_letter(tp, record, exc.reason, exc.detail)
            return
        self._consumed[half.half.value] += 1
        result = self.join.add(
            HalfRecord(tp, record.offset, half.pair_id, half.half, half.array, digest(record.value),
                       now, now_ms, half.digit, half.produced_ms, stream_ms)
        )
        for old in result.evicted:
            self._unpaired(old)
        if result.related_offset is not None:  # a duplicate, conflict or late half: keep it with its pair
            self.offsets.span(tp, result.related_offset, record.offset)
        if result.outcome is JoinOutcome.JOINED:
            pair = result.pair
            self.offsets.span(tp, min(pair.spoken.offset, pair.written.offset),
                              max(pair.spoken.offset, pair.written.offset))
            self.metrics.join_wait.observe(pair.second.seen - pair.first.seen)
            full = self.batcher.add(pair, now)
            if full is not None:
                self._submit(full)
        elif result.outcome is JoinOutcome.DUPLICATE:
            self.offsets.finish(tp, record.offset)
        elif result.outcome is JoinOutcome.CONFLICT:
            self._dead_letter(tp, record, Reason.CONFLICTING_DUPLICATE, result.detail)
        elif result.outcome is JoinOutcome.ALREADY_DECIDED:
            self._dead_letter(tp, record, Reason.ALREADY_DECIDED, result.detail)

    # ------------------------------------------------------------------ batches to the model

    def _submit(self, batch: Batch[JoinedPair]) -> None:
        self.metrics.batch_flushes.labels(reason=batch.reason.value).inc()
        if not self._overflow:
            try:
                self.batches.put_nowait(batch)
                return
            except queue.Full:
                pass
        self._overflow.append(batch)
        self._pause()

    def _feed_inference(self) -> None:
        while self._overflow:
            try:
                self.batches.put_nowait(self._overflow[0])
            except queue.Full:
                break
            self._overflow.popleft()
        if self._paused and not self._overflow and not self.batches.full():
            self._resume()
        self.metrics.inference_queue.set(self.batches.qsize() + len(self._overflow))

    def _pause(self) -> None:
        if not self._paused:
            log.debug("inference queue full: pausing %d partitions", len(self.assigned))
        self._paused = True
        if self.assigned:
            self.consumer.pause(*self.assigned)
        self.metrics.partitions_paused.set(len(self.consumer.paused()))

    def _resume(self) -> None:
        self._paused = False
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
        self.metrics.partitions_paused.set(0)

    def _on_scored(self, batch: Batch[JoinedPair], model, verdicts: list[Verdict]) -> None:
        """Inference thread: hand the batch's verdicts to the producer."""
        topic = self.config.output_topic
        mirror = self._mirror_partitions
        for pair, verdict in zip(batch.items, verdicts):
            partition = pair.spoken.partition.partition if mirror else None
            record = OutgoingRecord(topic, verdict_key(verdict.pair_id), verdict.to_bytes(), [], partition)
            self._send(Delivery(record, pair.offsets, "verdict", verdict.outcome, verdict.correct))

    def _unpaired(self, half: HalfRecord) -> None:
        # Not observed in digitmatch_end_to_end_seconds: an unpaired verdict waits the join TTL by
        # design, and would make the latency quantiles (and their alert) about lone halves.
        if half.partition not in self.assigned:
            return  # no longer ours: its next owner reads the half again and decides it
        verdict = unpaired_verdict(half, self.models.current)
        partition = half.partition.partition if self._mirror_partitions else None
        record = OutgoingRecord(self.config.output_topic, verdict_key(half.pair_id), verdict.to_bytes(), [], partition)
        self._send(Delivery(record, [(half.partition, half.offset)], "verdict", "unpaired"))

    def _dead_letter(self, tp, record, reason: Reason, detail: str) -> None:
        log.info("dead letter %s:%d:%d: %s: %s", tp.topic, tp.partition, record.offset, reason.value, detail)
        out = dead_letter(
            self.config.dlq_topic, topic=tp.topic, partition=tp.partition, offset=record.offset,
            key=record.key, value=record.value, headers=record.headers, reason=reason, detail=detail,
            max_bytes=self.config.max_dead_letter_bytes, headers_unreadable=record.headers is None,
        )
        if is_truncated(out):
            self.metrics.dead_letters_truncated.inc()
        self._send(Delivery(out, [(tp, record.offset)], "dead_letter", reason.value))

    # ------------------------------------------------------------------ records out

    def _send(self, delivery: Delivery) -> None:
        """Any thread. The acknowledgement (or failure) comes back through :attr:`completions`."""
        rec = delivery.record
        try:
            future = self.producer.send(rec.topic, key=rec.key, value=rec.value, headers=rec.headers,
                                        partition=rec.partition)
        except CLIENT_ERRORS as exc:
            self.completions.put((delivery, exc))
            return
        future.add_callback(self._acked, delivery)
        future.add_errback(self._failed, delivery)

    def _acked(self, delivery: Delivery, _metadata) -> None:
        self.completions.put((delivery, None))

    def _failed(self, delivery: Delivery, exc: Exception) -> None:
        self.completions.put((delivery, exc))

    def _drain_completions(self) -> None:
        m = self.metrics
        # Counted per label, then added to the metrics once per drain: a labelled increment per
        # delivery was a tenth of the poll loop's time.
        verdicts: Counter[str] = Counter()
        checked: Counter[bool] = Counter()
        dead: Counter[str] = Counter()
        while True:
            try:
                delivery, exc = self.completions.get_nowait()
            except queue.Empty:
                break
            if exc is None:
                self._produce_failures = 0
                for tp, offset in delivery.offsets:
                    self.offsets.finish(tp, offset)
                if delivery.kind == "verdict":
                    verdicts[delivery.label] += 1
                    if delivery.correct is not None:
                        checked[delivery.correct] += 1
                else:
                    dead[delivery.label] += 1
                continue
            m.kafka_errors.labels(stage="produce").inc()
            delivery.attempts += 1
            if delivery.kind == "dead_letter" and _too_large(exc) and self._shrink(delivery):
                self._send(delivery)  # at once: the broker answered, it is not unreachable
                continue
            self._produce_failures += 1
            if self._produce_failures >= PRODUCER_RESET_AFTER_FAILURES and time.monotonic() >= self._next_producer_reset:
                self._producer_stale = True
            if not any(tp in self.assigned for tp, _ in delivery.offsets):
                log.warning("giving up on a %s for revoked partitions (its input is read again): %s", delivery.kind, exc)
                continue
            self._log_retry(delivery, exc)
            self._retries.append((time.monotonic() + RETRY_DELAY_S, delivery))
        for outcome, count in verdicts.items():
            m.verdicts.labels(outcome=outcome).inc(count)
        for correct, count in checked.items():
            m.verdicts_checked.labels(correct="true" if correct else "false").inc(count)
        for reason, count in dead.items():
            m.dead_letters.labels(reason=reason).inc(count)
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            self._send(self._retries.popleft()[1])

    def _shrink(self, delivery: Delivery) -> bool:
        """A dead letter refused as too large (a topic whose own limit is below
        --max-dead-letter-bytes): send its smallest form instead. False if it is that already."""
        small = smallest(delivery.record)
        if small == delivery.record:
            return False
        log.warning("a dead letter of %s was refused as too large: sending it without its value and headers",
                    _source(delivery.record))
        if not is_truncated(delivery.record):
            self.metrics.dead_letters_truncated.inc()
        delivery.record = small
        return True

    def _log_retry(self, delivery, exc) -> None:
        """One warning per RETRY_LOG_INTERVAL_S at most: an outage fails every in-flight delivery,
        hundreds a second; the counter ``digitmatch_kafka_errors_total{stage="produce"}`` has them all."""
        now = time.monotonic()
        if now < self._next_retry_log:
            self._retries_not_logged += 1
            return
        more = f" ({self._retries_not_logged} more failed deliveries not logged)" if self._retries_not_logged else ""
        log.warning("publishing a %s to %s failed (attempt %d), retrying: %s%s",
                    delivery.kind, delivery.record.topic, delivery.attempts, exc, more)
        self._next_retry_log = now + RETRY_LOG_INTERVAL_S
        self._retries_not_logged = 0

    def _reset_producer(self) -> None:
        """Poll thread, outside the lock (creating a client waits for the broker): replace the
        producer; deliveries still pending on the old one fail and are retried on the new one."""
        self._producer_stale = False
        self._next_producer_reset = time.monotonic() + PRODUCER_RESET_INTERVAL_S
        log.warning("%d deliveries failed in a row: recreating the producer (broker restarted or lost its state?)",
                    self._produce_failures)
        try:
            fresh = new_producer(self.config.kafka)
        except CLIENT_ERRORS as exc:
            log.warning("could not recreate the producer (%s); trying again later", exc)
            return
        old, self.producer = self.producer, fresh
        self._produce_failures = 0
        # Closing flushes, which waits for the old producer to fail what it still holds: not here.
        threading.Thread(target=_close_quietly, args=(old,), name="producer-close", daemon=True).start()

    # ------------------------------------------------------------------ offsets, gauges

    def _commit(self) -> None:
        """Commit the offsets below which everything is finished.

        On the poll thread the commit is synchronous. kafka-python 3 calls the rebalance listener
        on its I/O thread, where blocking calls are not allowed: there the commit is queued on
        that thread (``commit_async``) and goes out before the group is re-joined. (librdkafka
        calls the listener on the poll thread, inside ``poll``: its commits are synchronous.)
        """
        with self._lock:
            points = {tp: off for tp, off in self.offsets.to_commit().items() if tp in self.assigned}
        if not points:
            return
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in points.items()}
        if threading.current_thread() is not self._poll_thread:
            self.consumer.commit_async(offsets, callback=self._commit_done)
            with self._lock:
                self.offsets.mark_committed(points)
            return
        try:
            self.consumer.commit(offsets)
        except CLIENT_ERRORS as exc:
            self._commit_done(offsets, exc)
            return
        with self._lock:
            self.offsets.mark_committed(points)
        self.metrics.commits.labels(result="ok").inc()

    def _commit_done(self, offsets, result) -> None:
        if isinstance(result, BaseException):
            self.metrics.commits.labels(result="error").inc()
            self.metrics.kafka_errors.labels(stage="commit").inc()
            log.warning("offset commit failed (retried at the next interval): %s", result)
        elif result is not None:
            self.metrics.commits.labels(result="ok").inc()

    def _update_gauges(self) -> None:
        m = self.metrics
        with self._lock:
            m.pending_halves.set(len(self.join))
            m.pending_bytes.set(self.join.nbytes)
            m.partitions_assigned.set(len(self.assigned))
            m.inference_queue.set(self.batches.qsize() + len(self._overflow))
            m.ready.set(1 if self.is_ready() else 0)
            assigned = list(self.assigned)
        if threading.current_thread() is not self._poll_thread:
            return  # position() may wait for the I/O thread
        lags = {}
        for tp in assigned:
            try:
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                position = self.consumer.position(tp)
            except Exception:  # not fetched yet / being reassigned: no lag to report
                continue
            if position is not None:
                lags[tp.partition] = max(0, high - position)
        m.set_lag(lags)

    # ------------------------------------------------------------------ rebalances, shutdown

    def _drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Score everything joined so far, publish it and collect the acknowledgements, waiting
        for the broker at most ``timeout_s`` (what is not acknowledged by then stays uncommitted)."""
        deadline = time.monotonic() + timeout_s
        batch = self.batcher.drain(time.monotonic())
        if batch is not None:
            self.metrics.batch_flushes.labels(reason=batch.reason.value).inc()
            self._overflow.append(batch)
        while self._overflow:
            self.batches.put(self._overflow.popleft())
        self.batches.join()
        self._flush(deadline)
        while self._retries and time.monotonic() < deadline:
            time.sleep(RETRY_DELAY_S / 4)
            self._flush(deadline)
        if self._paused:
            self._resume()
        self.metrics.inference_queue.set(0)

    def _flush(self, deadline: float) -> None:
        try:
            self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except CLIENT_ERRORS as exc:
            log.warning("not every record was acknowledged in time: %s", exc)
        self._drain_completions()

    def _on_revoked(self, revoked, lost: bool = False) -> None:
        """Drain in-flight pairs, commit (unless the partitions are already lost), and forget the
        pending halves of ``revoked``: they are uncommitted, so their next owner reads them again."""
        revoked = set(revoked)
        if not revoked:
            return
        log.info("partitions %s: %s; draining in-flight pairs%s", "lost" if lost else "revoked",
                 sorted(tp.partition for tp in revoked), "" if lost else " and committing")
        with self._lock:
            self._drain()
        if not lost:
            self._commit()
        with self._lock:
            # (Lost partitions need no rewind: the client forgets their positions and reads them
            # again from the committed offsets.)
            for tp in () if lost else revoked:
                point = self.offsets.commit_point(tp)
                if point is None:  # revoked while reading back: nothing tracked yet
                    point = self._lookback_end.get(tp)
                if point is not None:
                    self._rewind_points[tp] = point
            dropped = self.join.revoke(revoked)
            self.clock.forget(revoked)
            self._unplaced -= revoked
            for tp in revoked:
                self._lookback_end.pop(tp, None)
            self.offsets.revoke(revoked)
            self.assigned -= revoked
        self._update_gauges()
        if dropped:
            log.info("dropped %d pending halves of revoked partitions (the next owner reads them again)", len(dropped))

    def _on_assigned(self, assigned) -> None:
        assigned = set(assigned)
        with self._lock:
            # The consumer keeps the position of a partition it owned before the rebalance (eager
            # protocol: revoked, then assigned again), but its pending halves were dropped on
            # revocation: the poll loop seeks it back to the commit point.
            self._rewinds.update({tp: p for tp, p in self._rewind_points.items() if tp in assigned})
            self._rewind_points.clear()
            self._unplaced |= assigned - set(self._rewinds)
            self.offsets.assign(assigned)
            self.assigned |= assigned
            if self._paused and assigned:
                self.consumer.pause(*assigned)
        log.info("partitions assigned: %s", sorted(tp.partition for tp in self.assigned))
        self._update_gauges()

    def _shutdown(self) -> None:
        held = len(self.join)
        log.info("shutting down: draining batches, flushing verdicts, committing offsets")
        started = time.monotonic()
        try:
            with self._lock:
                # (Half the budget for the drain; committing and leaving the group need the rest.)
                self._drain(self.config.shutdown_timeout_s / 2)
            self._commit()
        finally:
            self.connected = False
            self.assigned = set()
            self.metrics.ready.set(0)
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=max(0.0, self.config.shutdown_timeout_s - (time.monotonic() - started)))
        log.info("matcher stopped (%d halves were waiting for a partner; they are read again on restart)", held)


def _too_large(exc: Exception) -> bool:
    """The broker or the producer refused a record for its size (either client library)."""
    from kafka.errors import MessageSizeTooLargeError

    if isinstance(exc, MessageSizeTooLargeError):
        return True
    code = getattr(getattr(exc, "error", None), "code", None)
    return callable(code) and code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE


def _source(record: OutgoingRecord) -> str:
    return next((v.decode("ascii", "replace") for n, v in record.headers if n == H_DLQ_SOURCE), "?")


def _close_quietly(producer, timeout_s: float = 10.0) -> None:
    try:
        producer.close(timeout=timeout_s)
    except Exception as exc:  # a producer in a fatal state may not flush: nothing more to do with it
        log.warning("the replaced producer did not close cleanly: %s", exc)


def _same_partitions(consumer, input_topic: str, output_topic: str) -> bool:
    """True when both topics exist with the same partitions (a verdict can then go to its input
    partition number, which is where the key-hashing partitioner would put it)."""
    try:
        found_in = consumer.partitions_for_topic(input_topic)
        found_out = consumer.partitions_for_topic(output_topic)
    except Exception:  # metadata not available: let the partitioner decide
        return False
    return bool(found_in) and found_in == found_out


class _RebalanceListener(ConsumerRebalanceListener):
    def __init__(self, matcher: Matcher):
        self.matcher = matcher

    def on_partitions_revoked(self, revoked):
        self.matcher._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.matcher._on_assigned(assigned)

    def on_partitions_lost(self, lost):  # kafka-python >= 3: evicted from the group, cannot commit
        self.matcher._on_revoked(lost, lost=True)


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    add_matcher_options(parser)


def run(args: argparse.Namespace) -> int:
    from digitmatch.kafka.configuration import quiet_client_logs
    from digitmatch.kafka.exceptions import InvalidConfiguration
    from digitmatch.settings import model_problem

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        quiet_client_logs()
    try:
        config = MatcherConfig.from_args(args)
    except InvalidConfiguration as exc:
        print(f"digitmatch serve: {exc}", file=sys.stderr)
        return 2
    problem = model_problem("--model", config.model)  # before the endpoints and TensorFlow start
    if problem:
        print(f"digitmatch serve: {problem}", file=sys.stderr)
        return 2
    matcher = Matcher(config)
    stopping: list[float] = []  # when the first SIGTERM / SIGINT came

    def _stop(signum, _frame):
        log.info("received %s: stopping gracefully (at most %.0f s)", signal.Signals(signum).name,
                 config.shutdown_timeout_s)
        stopping.append(time.monotonic())
        matcher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # The matcher runs on a thread of its own, so that this one stays free to handle the signals
    # and to end a shutdown that a frozen broker holds up (a commit or a group leave that never
    # returns) after --shutdown-timeout-s.
    matcher.start()
    while matcher.running():
        matcher.wait(0.2)
        if stopping and time.monotonic() - stopping[0] > config.shutdown_timeout_s:
            log.error("shutdown did not finish within %.0f s (broker unreachable?): exiting now; what was "
                      "not committed is read again on restart", config.shutdown_timeout_s)
            logging.shutdown()
            os._exit(SHUTDOWN_TIMED_OUT)
    if isinstance(matcher.error, (ModelError, OSError)):  # OSError: e.g. the metrics port is taken
        print(f"digitmatch serve: {matcher.error}", file=sys.stderr)
        return 2
    return 0 if matcher.error is None else 1
