"""Back-pressure (consumer/pausing.py) against the in-memory consumer."""

from __future__ import annotations

import queue
import threading

from fake_kafka import FakeConsumer, FakeKafka

from digitmatch.consumer.batcher import Batch, FlushReason
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.pausing import BackPressure
from digitmatch.kafka.client import Partition

PARTS = {Partition("in", 0), Partition("in", 1)}


def batch(n: int = 1) -> Batch:
    return Batch(list(range(n)), FlushReason.FULL)


def pressure(room: int = 1):
    consumer = FakeConsumer(FakeKafka({"in": 2}))
    consumer.owned = set(PARTS)
    batches: queue.Queue = queue.Queue(maxsize=room)
    return BackPressure(batches, consumer, MatcherMetrics()), batches, consumer


def test_a_full_queue_pauses_every_partition_until_there_is_room_again():
    bp, batches, consumer = pressure(room=1)
    bp.submit(batch(), PARTS)
    assert not bp.paused
    bp.submit(batch(), PARTS)  # no room: waits here, input paused
    assert bp.paused and consumer.paused() == PARTS and len(bp) == 2
    bp.feed()
    assert bp.paused  # still no room
    batches.get_nowait()
    bp.feed()  # the waiting one moves on; the queue is full again: stay paused
    assert bp.paused and len(bp) == 1
    batches.get_nowait()
    bp.feed()
    assert not bp.paused and consumer.paused() == set()


def test_batches_keep_their_order():
    bp, batches, _ = pressure(room=1)
    first, second, third = batch(1), batch(2), batch(3)
    for b in (first, second, third):
        bp.submit(b, PARTS)
    got = []
    while len(got) < 3:
        got.append(batches.get_nowait())
        bp.feed()
    assert got == [first, second, third]


def test_a_partition_assigned_while_paused_is_paused():
    bp, _, consumer = pressure(room=1)
    bp.submit(batch(), set())
    bp.submit(batch(), set())
    new = Partition("in", 1)
    bp.assigned({new})
    assert new in consumer.paused()


def test_drain_hands_everything_on_and_waits_until_it_is_scored():
    bp, batches, consumer = pressure(room=1)
    bp.submit(batch(), PARTS)
    bp.submit(batch(), PARTS)
    scored = []

    def model():
        while len(scored) < 3:
            scored.append(batches.get())
            batches.task_done()

    worker = threading.Thread(target=model)
    worker.start()
    bp.drain(batch(5))
    worker.join(5)
    assert len(scored) == 3 and not bp.paused and consumer.paused() == set()
