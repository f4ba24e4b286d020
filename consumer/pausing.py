"""Back-pressure: batches on their way to the model, and pausing the input while they cannot go.

Rules:

* A batch cut by the batcher goes to the inference queue (``--max-queued-batches``) if there is
  room and nothing is waiting before it; otherwise it waits here, in order, and every assigned
  partition is paused: nothing more is read while the model is behind, so memory stays bounded
  and the backlog stays in Kafka.
* :meth:`BackPressure.feed`, at each turn of the loop, moves waiting batches to the queue as room
  frees up, and resumes the partitions once nothing waits and the queue has room again.
* A partition assigned while paused is paused too.
* :meth:`BackPressure.drain` hands everything on and waits until the model has scored it (before
  a rebalance takes partitions away, and at shutdown).
"""

from __future__ import annotations

import logging
import queue
from collections import deque

from digitmatch.consumer.batcher import Batch
from digitmatch.consumer.join import JoinedPair
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.kafka.client import Consumer, Partition

log = logging.getLogger(__name__)


class BackPressure:
    def __init__(self, batches: "queue.Queue[Batch[JoinedPair] | None]", consumer: Consumer,
                 metrics: MatcherMetrics):
        self.batches = batches
        self.consumer = consumer
        self.metrics = metrics
        self.paused = False
        self._waiting: deque[Batch[JoinedPair]] = deque()

    def __len__(self) -> int:
        """Batches not scored yet (queued or waiting here)."""
        return self.batches.qsize() + len(self._waiting)

    def submit(self, batch: Batch[JoinedPair], assigned: set[Partition]) -> None:
        self.metrics.batch_flushes.labels(reason=batch.reason.value).inc()
        if not self._waiting:
            try:
                self.batches.put_nowait(batch)
                return
            except queue.Full:
                pass
        self._waiting.append(batch)
        self._pause(assigned)

    def feed(self) -> None:
        while self._waiting:
            try:
                self.batches.put_nowait(self._waiting[0])
            except queue.Full:
                break
            self._waiting.popleft()
        if self.paused and not self._waiting and not self.batches.full():
            self._resume()
        self.metrics.inference_queue.set(len(self))

    def assigned(self, partitions: set[Partition]) -> None:
        if self.paused and partitions:
            self.consumer.pause(partitions)

    def drain(self, last: Batch[JoinedPair] | None = None) -> None:
        """Hand ``last`` (the batcher's partial batch) and every waiting batch to the model, and
        wait until all are scored."""
        if last is not None:
            self.metrics.batch_flushes.labels(reason=last.reason.value).inc()
            self._waiting.append(last)
        while self._waiting:
            self.batches.put(self._waiting.popleft())
        self.batches.join()
        if self.paused:
            self._resume()
        self.metrics.inference_queue.set(0)

    def _pause(self, assigned: set[Partition]) -> None:
        if not self.paused:
            log.debug("inference queue full: pausing %d partitions", len(assigned))
        self.paused = True
        if assigned:
            self.consumer.pause(assigned)
        self.metrics.partitions_paused.set(len(self.consumer.paused()))

    def _resume(self) -> None:
        self.paused = False
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(paused)
        self.metrics.partitions_paused.set(0)
