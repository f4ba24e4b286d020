"""The inference stage: batches from a bounded queue, scored by the model being served
(:class:`~digitmatch.consumer.models.ModelManager`), their verdicts handed on. A batch's inputs are
built here, for the version that scores it (:mod:`digitmatch.consumer.model_inputs`: the features
of ``pcm16`` spoken halves are computed with that version's parameters, off the poll loop).

Two threads, so that the model is never idle while verdicts are built: the **inference** thread
builds a batch's inputs and calls the model, then goes on to the next batch; the **verdicts**
thread turns the scores into verdict documents, observes the batch's metrics and hands the
verdicts on (``on_scored``: the matcher publishes them). One scored batch at most waits between
the two (TensorFlow releases the GIL while it runs, so the verdicts of one batch are built while
the next is scored).

Rules are in :class:`InferenceWorker`'s docstring; what happens when a batch fails on a new version
(fallback, backoff, readiness) is in :mod:`digitmatch.consumer.models`.
"""


from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tenacity import RetryCallState, Retrying, wait_exponential

from digitmatch.consumer.batcher import Batch, combine
from digitmatch.consumer.join import JoinedPair
from digitmatch.consumer.metrics import MatcherMetrics, observe_all
from digitmatch.consumer.model_inputs import model_inputs
from digitmatch.consumer.models import ModelManager
from digitmatch.consumer.verdicts import Document, verdict_documents
from digitmatch.model.serving import ServingModel

log = logging.getLogger(__name__)


# the batch, the version that scored it, its verdicts (consumer/verdicts.py's documents), in order
OnScored = Callable[[Batch[JoinedPair], ServingModel, list[Document]], None]


class InferenceWorker:
    """Takes batches from a bounded queue, scores them, hands the verdicts to ``on_scored``.

    Batches that are already waiting when the model becomes free are scored in one call, as long
    as together they hold at most ``max_pairs`` pairs (the matcher passes ``--max-batch-size``);
    ``on_scored`` then gets the combined batch. A batch that would not fit waits for the next call.
    ``max_pairs`` should not exceed the manager's ``max_batch_size`` (the largest batch proven).

    A call that fails is reported to the manager (:meth:`ModelManager.batch_failed`): retried at
    once on the version it fell back to, else after a backoff (0.5 s doubling to 30 s) until it
    succeeds or :meth:`abandon` is called.

    ``None`` in the queue stops the worker (after the batches taken before it). ``queue.join()``
    waits until every batch put so far has been scored and handed on (the matcher uses it to drain
    on a rebalance and at shutdown): a batch is marked done on the queue by the verdicts thread,
    after ``on_scored`` returned, in the order the batches were taken. Verdicts are handed on in
    that order too.
    """

    def __init__(
        self,
        manager: ModelManager,
        batches: "queue.Queue[Batch[JoinedPair] | None]",
        on_scored: OnScored,
        metrics: MatcherMetrics | None = None,
        max_pairs: int = 1,
    ):
        self.manager = manager
        self.batches = batches
        self.on_scored = on_scored
        self.metrics = metrics
        self.max_pairs = max_pairs
        if max_pairs > manager.max_batch_size:
            log.warning("the inference worker sends up to %d pairs a call, the model is proven up to %d",
                        max_pairs, manager.max_batch_size)
        self._next: Batch[JoinedPair] | None = None  # taken from the queue, did not fit the last call
        self._abandon = threading.Event()
        # inference -> verdicts: (what was scored, or None where nothing was; queue items taken),
        # and None when the inference thread has stopped
        self._scored: queue.Queue[tuple[_Scored | None, int] | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)
        self._verdicts = threading.Thread(target=self._hand_on_loop, name="verdicts", daemon=True)

    def start(self) -> "InferenceWorker":
        self._verdicts.start()
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60) -> None:
        """Finish the batches already queued, then stop."""
        self.batches.put(None)
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait until both threads have ended (after the stop sentinel)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._thread.join(timeout)
        self._verdicts.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def abandon(self) -> None:
        """Stop retrying a failing batch (its pairs stay uncommitted and are read again later)."""
        self._abandon.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive() or self._verdicts.is_alive()

    def _loop(self) -> None:
        """The inference thread."""
        if self.metrics is not None:
            self.metrics.threads.assign("inference")
        stopping = False
        try:
            while not stopping:
                taken = self._take()
                stopping = taken[-1] is None  # the stop sentinel only ever ends the list
                call = taken[:-1] if stopping else taken
                scored = None
                try:
                    if call:
                        scored = self._score(combine(call))
                except Exception:
                    log.exception("inference thread: batch of %d pairs dropped", sum(map(len, call)))
                finally:
                    self._scored.put((scored, len(taken)))
        finally:
            self._scored.put(None)

    def _hand_on_loop(self) -> None:
        """The verdicts thread: each scored batch's verdicts handed on, then its queue items done."""
        if self.metrics is not None:
            self.metrics.threads.assign("verdicts")
        while (item := self._scored.get()) is not None:
            scored, taken = item
            try:
                if scored is not None:
                    self._hand_on(scored)
            except Exception:
                log.exception("verdicts thread: the verdicts of a batch of %d pairs dropped", len(scored.batch))
            finally:
                for _ in range(taken):
                    self.batches.task_done()

    def _take(self) -> "list[Batch[JoinedPair] | None]":
        """What the next model call scores, as got from the queue (the stop sentinel included, so
        that each gets its ``task_done``): the next batch, waiting for it, then those already
        queued while they fit in ``max_pairs``. One that does not fit is kept for the next call."""
        first = self._next if self._next is not None else self.batches.get()
        self._next = None
        taken = [first]
        size = 0 if first is None else len(first)
        while first is not None and size < self.max_pairs:
            try:
                more = self.batches.get_nowait()
            except queue.Empty:
                break
            if more is None:
                taken.append(more)
                break
            if size + len(more) > self.max_pairs:
                self._next = more
                break
            taken.append(more)
            size += len(more)
        return taken

    def _score(self, batch: Batch[JoinedPair]) -> "_Scored | None":
        """Score ``batch`` on one version (retried as the class docstring says); None if abandoned."""

        def log_retry(state: RetryCallState) -> None:
            log.error("inference failed on a batch of %d pairs (model v%d); retrying in %.1f s",
                      len(batch), model.version, state.next_action.sleep, exc_info=state.outcome.exception())

        retrying = Retrying(wait=wait_exponential(multiplier=0.5, max=30.0), sleep=self._abandon.wait,
                            before_sleep=log_retry)
        for attempt in retrying:
            if attempt.retry_state.attempt_number > 1 and self._abandon.is_set():
                return None  # abandoned while it waited to retry
            with attempt:
                while True:
                    model = self.manager.current  # one version for the whole batch
                    started = time.monotonic()
                    try:
                        # pcm16 halves get their features from this version's parameters
                        inputs = model_inputs(batch.items, model.features)
                        outputs = model.predict_padded(inputs.mfcc, inputs.images)
                        break
                    except Exception as exc:
                        # retried at once if another version serves now, else after the backoff
                        if not self.manager.batch_failed(model, len(batch), exc):
                            raise
        inference_s = time.monotonic() - started
        if not self.manager.serving:
            self.manager.batch_scored(model)
        return _Scored(batch, model, outputs, started, inference_s, inputs.features_s if inputs.pcm_halves else None)

    def _hand_on(self, scored: "_Scored") -> None:
        """The verdicts of a scored batch, and its metrics."""
        batch = scored.batch
        verdicts = verdict_documents(batch.items, scored.outputs, scored.model, scored.started, scored.inference_s)
        if self.metrics is not None:
            m = self.metrics
            m.inference.observe(scored.inference_s)
            if scored.features_s is not None:
                m.features.observe(scored.features_s)
            m.batch_size.observe(len(batch))
            observe_all(m.queue_wait, [max(0.0, scored.started - pair.joined) for pair in batch.items])
            ends = [v["latency_ms"]["end_to_end"] for v in verdicts]
            observe_all(m.end_to_end, [end / 1000 for end in ends if end is not None])
        self.on_scored(batch, scored.model, verdicts)


@dataclass(frozen=True)
class _Scored:
    """A batch scored on the inference thread, on its way to the verdicts thread."""

    batch: Batch[JoinedPair]
    model: ServingModel
    outputs: dict[str, np.ndarray]
    started: float  # monotonic time the batch entered the model
    inference_s: float
    features_s: float | None  # time the pcm16 halves' features took, None without any
