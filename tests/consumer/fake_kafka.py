"""An in-memory Kafka behind the matcher's client interface (digitmatch.kafka.client), for fast
tests of the loop: partitions are lists, a group has one member, rebalances and delivery failures
happen when a test asks for them. It keeps the interface's promises: assignment callbacks run
inside ``poll``, after a new assignment is in place; ``pause`` keeps what was not returned yet;
``commit`` is synchronous; delivery reports come on another thread. A record appended without a
partition goes where the Java client's default partitioner puts its key (kafka-python's murmur2,
not the matcher's own partitioner that the routing check uses).

Transactions (:class:`FakeProducer` with ``transactional=True``): records produced in a transaction
are in the log at once but invisible to read_committed readers (``records(topic,
committed_only=True)``) until it commits, and stay invisible when it aborts; offsets sent with it
are committed with it, their metadata kept unless the broker is made to drop it
(``FakeKafka(keeps_metadata=False)``, as Tansu does)."""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

from kafka.partitioner.default import murmur2

from digitmatch.kafka.client import ClientError, Committed, OutgoingRecord, Partition, Record, produce_each


class FakeKafka:
    def __init__(self, partitions: dict[str, int], keeps_metadata: bool = True):
        self.logs: dict[Partition, list[Record]] = {
            Partition(topic, p): [] for topic, n in partitions.items() for p in range(n)
        }
        self.committed: dict[Partition, int] = {}
        self.metadata: dict[Partition, str] = {}
        self.keeps_metadata = keeps_metadata
        self.commits = 0
        self.lock = threading.Lock()
        self.transaction_of: dict[tuple[Partition, int], int] = {}  # records produced in a transaction
        self.open_transactions: set[int] = set()
        self.aborted: set[int] = set()
        self.transactions = itertools.count(1)

    def append(self, topic: str, key: bytes | None, value: bytes | None, headers, partition: int | None = None,
               timestamp: int | None = None, transaction: int | None = None,
               unreadable: str | None = None) -> Partition:
        count = sum(1 for tp in self.logs if tp.topic == topic)
        tp = Partition(topic, partition if partition is not None else (murmur2(key or b"") & 0x7FFFFFFF) % count)
        with self.lock:
            log = self.logs[tp]
            stamp = int(time.time() * 1000) if timestamp is None else timestamp
            if transaction is not None:
                self.transaction_of[(tp, len(log))] = transaction
            log.append(Record(len(log), key, value, None if headers is None else list(headers), stamp, unreadable))
        return tp

    def commit_offsets(self, offsets) -> None:
        for tp, position in offsets.items():
            self.committed[tp] = position.offset
            if self.keeps_metadata:
                self.metadata[tp] = position.metadata
            else:
                self.metadata.pop(tp, None)
        self.commits += 1

    def records(self, topic: str, committed_only: bool = False) -> list[Record]:
        """Every record of ``topic``; ``committed_only``: as a read_committed reader sees them."""
        with self.lock:
            return [r for tp, log in self.logs.items() if tp.topic == topic for r in log
                    if not committed_only or self._visible(tp, r.offset)]

    def _visible(self, tp: Partition, offset: int) -> bool:
        transaction = self.transaction_of.get((tp, offset))
        return transaction is None or transaction not in self.open_transactions | self.aborted


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
        self.kafka.commit_offsets(offsets)

    def committed(self, partitions, timeout_s: float) -> dict[Partition, Committed | None]:
        return {tp: (Committed(self.kafka.committed[tp], self.kafka.metadata.get(tp, ""))
                     if tp in self.kafka.committed else None) for tp in partitions}

    def group_metadata(self) -> object:
        return ("fake-group", id(self))

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
    """Delivers to :class:`FakeKafka` on a thread of its own; ``fail(n)`` fails the next n records.
    ``transactional``: the transaction calls, and ``fail_commits`` (a list of errors the next
    ``commit`` calls raise)."""

    def __init__(self, kafka: FakeKafka, transactional: bool = False):
        self.kafka = kafka
        self.transactional = transactional
        self.transaction: int | None = None
        self._offsets: dict = {}
        self._failed_in_transaction = False
        self.fail_commits: list[ClientError] = []
        self.transactions_committed = 0
        self.transactions_aborted = 0
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
        if self.transactional and self.transaction is None:
            raise ClientError("no transaction begun")
        with self._wake:
            self._queue.append((record, on_delivery, self.transaction))
            self._pending += 1
            self._wake.notify()

    def produce_many(self, records: list[OutgoingRecord], on_delivery) -> None:
        produce_each(self, records, on_delivery)

    def _deliver(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                record, on_delivery, transaction = self._queue.popleft()
            if self._failures:
                self._failed_in_transaction = True
                on_delivery(self._failures.popleft(), None)
            else:
                tp = self.kafka.append(record.topic, record.key, record.value, record.headers, record.partition,
                                       transaction=transaction)
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

    # transactions
    def begin(self) -> None:
        assert self.transactional and self.transaction is None, "a transaction is open already"
        self.transaction = next(self.kafka.transactions)
        with self.kafka.lock:
            self.kafka.open_transactions.add(self.transaction)
        self._offsets, self._failed_in_transaction = {}, False

    def send_offsets(self, offsets, group_metadata, timeout_s: float) -> None:
        assert self.transaction is not None and group_metadata is not None
        self._offsets.update(offsets)

    def commit(self, timeout_s: float) -> None:
        assert self.transaction is not None
        self.flush(timeout_s)
        if self.fail_commits:
            raise self.fail_commits.pop(0)
        if self._failed_in_transaction:
            raise ClientError("a record of the transaction was not delivered", abortable=True)
        with self.kafka.lock:
            self.kafka.open_transactions.discard(self.transaction)
            self.kafka.commit_offsets(self._offsets)
        self.transaction, self.transactions_committed = None, self.transactions_committed + 1

    def abort(self, timeout_s: float) -> None:
        assert self.transaction is not None
        with self._wake:  # purged: what was not delivered yet fails
            purged, self._queue = list(self._queue), deque()
            self._pending -= len(purged)
        for _, on_delivery, _ in purged:
            on_delivery(ClientError("purged by the abort"), None)
        self.flush(timeout_s)
        with self.kafka.lock:
            self.kafka.open_transactions.discard(self.transaction)
            self.kafka.aborted.add(self.transaction)
        self.transaction, self.transactions_aborted = None, self.transactions_aborted + 1
