"""An in-memory Kafka behind the matcher's client interface (digitmatch.kafka.client), for fast
tests of the loop: partitions are lists, a group has one member, rebalances and delivery failures
happen when a test asks for them. It keeps the interface's promises: assignment callbacks run
inside ``poll``, after a new assignment is in place; ``pause`` keeps what was not returned yet;
``commit`` is synchronous; delivery reports come on another thread. A record appended without a
partition goes where the Java client's default partitioner puts its key (kafka-python's murmur2,
not the matcher's own partitioner that the routing check uses)."""

from __future__ import annotations

import threading
import time
from collections import deque

from kafka.partitioner.default import murmur2

from digitmatch.kafka.client import ClientError, OutgoingRecord, Partition, Record


class FakeKafka:
    def __init__(self, partitions: dict[str, int]):
        self.logs: dict[Partition, list[Record]] = {
            Partition(topic, p): [] for topic, n in partitions.items() for p in range(n)
        }
        self.committed: dict[Partition, int] = {}
        self.commits = 0
        self.lock = threading.Lock()

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers, partition: int | None = None,
               timestamp: int | None = None) -> Partition:
        count = sum(1 for tp in self.logs if tp.topic == topic)
        tp = Partition(topic, partition if partition is not None else (murmur2(key or b"") & 0x7FFFFFFF) % count)
        with self.lock:
            log = self.logs[tp]
            stamp = int(time.time() * 1000) if timestamp is None else timestamp
            log.append(Record(len(log), key, value, None if headers is None else list(headers), stamp))
        return tp

    def records(self, topic: str) -> list[Record]:
        with self.lock:
            return [r for tp, log in self.logs.items() if tp.topic == topic for r in log]


class FakeConsumer:
    def __init__(self, kafka: FakeKafka):
        self.kafka = kafka
        self.assignment = None
        self.topics: list[str] = []
        self.owned: set[Partition] = set()
        self.positions: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        self._changes: deque[tuple[str, set[Partition]]] = deque()
        self.closed = False
        self.fail_commits = 0
        self.sought: list[tuple[Partition, int]] = []  # every seek, in order

    # the test's controls
    def rebalance(self, revoke: set[Partition] = frozenset(), assign: set[Partition] = frozenset()) -> None:
        """At the next poll: revoke, then assign (an eager rebalance)."""
        if revoke:
            self._changes.append(("revoke", set(revoke)))
        if assign:
            self._changes.append(("assign", set(assign)))

    def lose(self, partitions: set[Partition]) -> None:
        self._changes.append(("lose", set(partitions)))

    # the interface
    def subscribe(self, topics, assignment) -> None:
        self.topics, self.assignment = list(topics), assignment
        self._changes.append(("assign", {tp for tp in self.kafka.logs if tp.topic in self.topics}))

    def poll(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]:
        while self._changes:
            change, partitions = self._changes.popleft()
            if change == "assign":
                for tp in partitions:
                    self.positions.setdefault(tp, self.kafka.committed.get(tp, 0))
                self.owned |= partitions
                self.assignment.on_assigned(partitions)
            else:
                getattr(self.assignment, "on_revoked" if change == "revoke" else "on_lost")(partitions)
                self.owned -= partitions
                self._paused -= partitions
                for tp in partitions:
                    self.positions.pop(tp, None)
        out: dict[Partition, list[Record]] = {}
        with self.kafka.lock:
            for tp in sorted(self.owned - self._paused):
                log = self.kafka.logs[tp]
                taken = log[self.positions[tp]: self.positions[tp] + max_records - sum(map(len, out.values()))]
                if taken:
                    out[tp] = list(taken)
                    self.positions[tp] += len(taken)
        if not out:
            time.sleep(min(timeout_s, 0.005))
        return out

    def pause(self, partitions) -> None:
        self._paused |= set(partitions) & self.owned

    def resume(self, partitions) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[Partition]:
        return set(self._paused)

    def seek(self, partition: Partition, offset: int) -> None:
        self.positions[partition] = offset
        self.sought.append((partition, offset))

    def commit(self, offsets) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise ClientError("commit refused (injected)")
        self.kafka.committed.update(offsets)
        self.kafka.commits += 1

    def lag(self, partition: Partition) -> int | None:
        if partition not in self.positions:
            return None
        return max(0, len(self.kafka.logs[partition]) - self.positions[partition])

    def partitions(self, topic: str) -> set[int] | None:
        found = {tp.partition for tp in self.kafka.logs if tp.topic == topic}
        return found or None

    def close(self) -> None:
        if self.owned and self.assignment is not None:
            self.assignment.on_revoked(set(self.owned))
        self.owned = set()
        self.closed = True


class FakeProducer:
    """Delivers to :class:`FakeKafka` on a thread of its own; ``fail(n)`` fails the next n records."""

    def __init__(self, kafka: FakeKafka):
        self.kafka = kafka
        self._failures: deque[ClientError] = deque()
        self._queue: deque = deque()
        self._wake = threading.Condition()
        self._pending = 0
        self.closed = False
        self._thread = threading.Thread(target=self._deliver, name="fake-producer", daemon=True)
        self._thread.start()

    def fail(self, count: int, error: ClientError | None = None) -> None:
        for _ in range(count):
            self._failures.append(error or ClientError("delivery failed (injected)"))

    def produce(self, record: OutgoingRecord, on_delivery) -> None:
        if self.closed:
            raise ClientError("producer closed")
        with self._wake:
            self._queue.append((record, on_delivery))
            self._pending += 1
            self._wake.notify()

    def _deliver(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                record, on_delivery = self._queue.popleft()
            if self._failures:
                on_delivery(self._failures.popleft(), None)
            else:
                tp = self.kafka.append(record.topic, record.key, record.value, record.headers, record.partition)
                on_delivery(None, len(self.kafka.logs[tp]) - 1)
            with self._wake:
                self._pending -= 1
                self._wake.notify_all()

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._wake:
            while self._pending and time.monotonic() < deadline:
                self._wake.wait(max(0.0, deadline - time.monotonic()))
            if self._pending:
                raise ClientError(f"{self._pending} records not delivered within {timeout_s} s")

    def close(self, timeout_s: float) -> None:
        try:
            self.flush(timeout_s)
        finally:
            self.closed = True
