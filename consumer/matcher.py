"""The matcher: a short loop that wires the parts, each of which owns one concern.

A pair's way (docs/architecture.md has the picture): the consumer's poll (``digitmatch.kafka.client``)
-> :class:`~digitmatch.consumer.checkpointing.Checkpoint` places partitions and reads back ->
decoding (``digitmatch.wire``) and the partition check (:class:`~digitmatch.consumer.routing.Routing`)
-> :class:`~digitmatch.consumer.join.JoinTable` (expiry by
:class:`~digitmatch.consumer.stream_time.StreamClock`) -> :class:`~digitmatch.consumer.batcher.Batcher`
-> :class:`~digitmatch.consumer.pausing.BackPressure` -> the inference thread
(:class:`~digitmatch.consumer.inference.InferenceWorker`) -> records
(:mod:`digitmatch.consumer.verdicts`) -> :class:`~digitmatch.consumer.outbox.Outbox` -> the
acknowledged offsets back to the checkpoint, committed every ``--commit-interval-ms`` (exactly once:
in a transaction with the records published, :class:`~digitmatch.consumer.transactions.Transactions`).
Rebalances: :class:`~digitmatch.consumer.rebalance.Rebalance`. The command and its signals:
:mod:`digitmatch.consumer.serve`.

Threads: the **poll loop** (:meth:`Matcher.run`) owns the join, the batcher, the checkpoint and
the back-pressure, and runs the rebalance callbacks (inside ``poll``); it never waits for the
model, so heartbeats and rebalances stay healthy. The **inference** thread scores batches; the
**verdicts** thread builds the verdicts of the batch scored before and hands their records to the
outbox (:meth:`Matcher._on_scored`); the producer's thread reports deliveries back through the
outbox's queue. The **model watcher** and the **HTTP endpoints** run on threads of their own.

``Matcher(config).start()`` runs the loop on a thread, ``stop()`` shuts it down gracefully (the
same path as SIGTERM). ``new_consumer`` / ``new_producer`` replace the Kafka clients (the tests
pass in-memory fakes).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from digitmatch.consumer.batcher import Batch, Batcher
from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.config import MatcherConfig
from digitmatch.consumer.health import HealthServer
from digitmatch.consumer.inference import InferenceWorker
from digitmatch.consumer.models import ModelManager
from digitmatch.consumer.intake import Intake
from digitmatch.consumer.join import JoinedPair, JoinTable
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.outbox import Outbox
from digitmatch.consumer.pausing import BackPressure
from digitmatch.consumer.rebalance import Rebalance
from digitmatch.consumer.routing import Routing
from digitmatch.consumer.stream_time import StreamClock
from digitmatch.consumer.transactions import TransactionFatal, Transactions, transactional_id
from digitmatch.consumer import verdicts
from digitmatch.kafka import clients
from digitmatch.kafka.client import ClientError, Consumer, Partition, Producer
from digitmatch.kafka.exceptions import TransactionsUnavailable
from digitmatch.model.serving import ModelError, set_cpu_threads
from digitmatch.wire import now_ms as wall_ms

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 0.5
# How long a rebalance waits for in-flight verdicts to be acknowledged before it lets them go
# (uncommitted: the partitions' next owner decides those pairs again).
DRAIN_TIMEOUT_S = 30.0


class Matcher:
    def __init__(self, config: MatcherConfig, *, new_consumer: Callable[[], Consumer] | None = None,
                 new_producer: Callable[[], Producer] | None = None):
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
        self.batches: queue.Queue[Batch[JoinedPair] | None] = queue.Queue(maxsize=config.max_queued_batches)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.health: HealthServer | None = None
        self.worker: InferenceWorker | None = None
        # Set by _connect:
        self.consumer: Consumer | None = None
        self.outbox: Outbox | None = None
        self.checkpoint: Checkpoint | None = None
        self.pressure: BackPressure | None = None
        self.transactions: Transactions | None = None  # exactly once
        self.connected = False
        self._new_consumer = new_consumer or (lambda: clients.new_consumer(
            config.kafka, config.group_id, session_timeout_ms=config.session_timeout_ms,
            heartbeat_interval_ms=config.heartbeat_interval_ms, fetch_max_wait_ms=config.fetch_max_wait_ms,
            read_committed=config.exactly_once))
        self._new_producer = new_producer or (
            (lambda: clients.new_transactional_producer(config.kafka, transactional_id(config.group_id),
                                                        transaction_timeout_ms=config.transaction_timeout_ms))
            if config.exactly_once else (lambda: clients.new_producer(config.kafka)))
        self.intake: Intake | None = None
        self._thread: threading.Thread | None = None
        self._health_ready = threading.Event()

    # ------------------------------------------------------------------ control and readiness

    def start(self) -> "Matcher":
        """Run on a background thread; returns once the HTTP endpoints are bound."""
        self._thread = threading.Thread(target=self._run_captured, name="matcher", daemon=True)
        self._thread.start()
        self._health_ready.wait(30)
        return self

    def stop(self, timeout: float = 120) -> None:
        """Graceful shutdown (like SIGTERM) and wait for it."""
        self.stop_event.set()
        self.wait(timeout)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
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

    @property
    def assigned(self) -> set[Partition]:
        return set() if self.checkpoint is None else self.checkpoint.assigned

    def readiness(self) -> dict[str, bool]:
        return {
            "model_loaded": self.models.current is not None,
            "model_serving": self.models.serving,
            "broker_connected": self.connected,
            "partitions_assigned": bool(self.assigned),
        }

    def is_ready(self) -> bool:
        return all(self.readiness().values())

    def _run_captured(self) -> None:
        try:
            self.run()
        except (ModelError, OSError, TransactionsUnavailable) as exc:  # a bad --model, a taken port: the caller says so
            self.error = exc
            log.debug("matcher could not start", exc_info=True)
        except TransactionFatal as exc:
            self.error = exc
            log.error("%s", exc)
        except BaseException as exc:  # kept for the caller of start() to inspect
            self.error = exc
            log.exception("matcher stopped with an error")

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Serve until :attr:`stop_event` is set; then shut down gracefully."""
        cfg = self.config
        try:
            self.health = HealthServer(self.metrics, self.readiness, cfg.metrics_host, cfg.metrics_port).start()
        finally:
            self._health_ready.set()
        try:
            log.info("TensorFlow CPU threads: %s (0 = one per core)",
                     set_cpu_threads(cfg.intra_op_threads, cfg.inter_op_threads))
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

    def _loop(self) -> None:
        cfg = self.config
        self.metrics.threads.assign("poll_loop")
        commit_every = cfg.commit_interval_ms / 1000
        next_commit = time.monotonic() + commit_every
        next_gauges = last_poll = time.monotonic()
        while not self.stop_event.is_set():
            self.outbox.collect()
            self.pressure.feed()
            try:
                records = self.consumer.poll(self._poll_timeout_s(next_commit), cfg.max_poll_records)
            except ClientError as exc:
                self.metrics.kafka_errors.labels(stage="consume").inc()
                log.warning("poll failed: %s", exc)
                self.stop_event.wait(0.5)
                continue
            records = self.checkpoint.place(records)
            now, now_ms = time.monotonic(), wall_ms()
            for tp, batch in records.items():
                if tp not in self.assigned:
                    continue  # revoked while these were in flight; the next owner reads them
                self.intake.handle_batch(tp, batch, now, now_ms, self.checkpoint.read_back)
            self.intake.count_consumed()
            self._advance_quiet_partitions(records, now - last_poll)
            last_poll = now
            due = self.batcher.due(time.monotonic())
            if due is not None:
                self.pressure.submit(due, self.assigned)
            for half in self.join.expire(self.clock):
                self.intake.unpaired(half)
            if now >= next_commit:
                self._commit()
                next_commit = now + commit_every
            if now >= next_gauges:
                self._update_gauges()
                next_gauges = now + GAUGE_INTERVAL_S

    def _poll_timeout_s(self, next_commit: float) -> float:
        # (Expiry needs no wake-up of its own: stream time moves with the records and the polls.)
        now = time.monotonic()
        wake = [next_commit, now + (0.01 if self.pressure.paused or self.outbox.retrying else 0.1)]
        deadline = self.batcher.deadline()
        if deadline is not None:
            wake.append(deadline)
        return max(0.0, min(wake) - now)

    # ------------------------------------------------------------------ scored batches

    def _on_scored(self, batch: Batch[JoinedPair], _model, scored: list[verdicts.Document]) -> None:
        """Verdicts thread: the batch's verdicts to the outbox, in one call."""
        topic, mirror = self.config.output_topic, self.intake.mirror
        self.outbox.send_all([verdicts.pair_verdict(topic, pair, verdict, mirror)
                              for pair, verdict in zip(batch.items, scored)])

    # ------------------------------------------------------------------ around the loop

    def _connect(self) -> bool:
        """Create the clients and the parts around them, waiting with backoff (1 s doubling to
        30 s) while no broker answers. False if stopped first."""
        cfg = self.config

        def log_retry(state: RetryCallState) -> None:
            log.warning("Kafka at %s unavailable (%s); retrying in %.0f s", cfg.kafka.bootstrap_servers,
                        state.outcome.exception(), state.next_action.sleep)

        retrying = Retrying(retry=retry_if_exception_type(ClientError), wait=wait_exponential(multiplier=1.0, max=30.0),
                            sleep=self.stop_event.wait, before_sleep=log_retry)
        for attempt in retrying:
            if self.stop_event.is_set():
                return False
            with attempt:
                outbox = Outbox(self._new_producer, self.metrics, on_finished=self._finished,
                                still_ours=lambda tp: tp in self.assigned, transactional=cfg.exactly_once)
                try:
                    consumer = self._new_consumer()
                except ClientError:
                    outbox.close(0)
                    raise
        self.outbox = outbox
        self.checkpoint = Checkpoint(consumer, cfg.lookback_records, self.metrics, exact=cfg.exactly_once)
        self.pressure = BackPressure(self.batches, consumer, self.metrics)
        routing = Routing(consumer, cfg.input_topic, enabled=cfg.partition_check == "murmur2")
        if cfg.exactly_once:
            self.transactions = Transactions(consumer, outbox, self.checkpoint, self.metrics,
                                             pending_offsets=self.join.pending_offsets, evict=self._evict,
                                             drain=self._drain_pipeline, forget=self._forget)
            self.transactions.begin()
        consumer.subscribe([cfg.input_topic], Rebalance(
            self.checkpoint, self.pressure, self.join, self.clock, routing, self.metrics, drain=self._drain, commit=self._commit,
            abort=None if self.transactions is None else self.transactions.abort, changed=self._update_gauges))
        self.intake = Intake(cfg, join=self.join, clock=self.clock, batcher=self.batcher, checkpoint=self.checkpoint,
                             pressure=self.pressure, outbox=outbox, models=self.models, metrics=self.metrics,
                             routing=routing, mirror=_same_partitions(consumer, cfg.input_topic, cfg.output_topic))
        self.consumer, self.connected = consumer, True
        log.info("connected to %s; group %r on %r -> %r (dead letters %r)", cfg.kafka.bootstrap_servers,
                 cfg.group_id, cfg.input_topic, cfg.output_topic, cfg.dlq_topic)
        return True

    def _finished(self, offsets) -> None:
        self.checkpoint.finish(offsets)

    def _commit(self) -> None:
        if self.transactions is not None:
            self.transactions.commit()
        else:
            self.checkpoint.commit()

    def _evict(self, tp: Partition, count: int) -> None:
        """Exactly once: the oldest pending halves of ``tp`` declared unpaired early (consumer/transactions.py)."""
        for half in self.join.evict(tp, count):
            self.intake.unpaired(half)

    def _forget(self, partitions: set[Partition]) -> None:
        """Exactly once, after an abort: the join state of ``partitions`` (read again)."""
        self.join.revoke(partitions)
        self.clock.forget(partitions)

    def _drain_pipeline(self) -> None:
        """Score everything joined so far and hand it to the outbox (no waiting for the broker)."""
        self.pressure.drain(self.batcher.drain(time.monotonic()))

    def _drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Score everything joined so far, publish it and collect the acknowledgements, waiting
        for the broker at most ``timeout_s`` (what is not acknowledged by then stays uncommitted)."""
        deadline = time.monotonic() + timeout_s
        self.pressure.drain(self.batcher.drain(time.monotonic()))
        self.outbox.drain(deadline)

    def _advance_quiet_partitions(self, records: dict, elapsed_s: float) -> None:
        """Stream time of the partitions this poll brought nothing for moves on while they are
        caught up and not paused (consumer/stream_time.py), so their lone halves still expire."""
        if self.pressure.paused or not len(self.join):
            return
        quiet = [tp for tp in self.assigned if tp not in records and self.consumer.lag(tp) == 0]
        if quiet:
            self.clock.idle(quiet, elapsed_s)

    def _update_gauges(self) -> None:
        m = self.metrics
        m.pending_halves.set(len(self.join))
        m.pending_bytes.set(self.join.nbytes)
        m.partitions_assigned.set(len(self.assigned))
        m.inference_queue.set(len(self.pressure))
        m.ready.set(1 if self.is_ready() else 0)
        lags = {tp.partition: lag for tp in self.assigned if (lag := self.consumer.lag(tp)) is not None}
        m.set_lag(lags)

    def _shutdown(self) -> None:
        held = len(self.join)
        log.info("shutting down: draining batches, flushing verdicts, committing offsets")
        started = time.monotonic()
        try:
            # (Half the budget for the drain; committing and leaving the group need the rest.)
            self._drain(self.config.shutdown_timeout_s / 2)
            self._commit()
        finally:
            self.connected = False
            self.metrics.ready.set(0)
            self.consumer.close()
            self.outbox.close(self.config.shutdown_timeout_s - (time.monotonic() - started))
        log.info("matcher stopped (%d halves were waiting for a partner; they are read again on restart)", held)


def _same_partitions(consumer: Consumer, input_topic: str, output_topic: str) -> bool:
    """True when both topics exist with the same partitions."""
    try:
        found_in, found_out = consumer.partitions(input_topic), consumer.partitions(output_topic)
    except Exception:  # metadata not available: let the partitioner decide
        return False
    return bool(found_in) and found_in == found_out
