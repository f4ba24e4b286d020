"""The Kafka client interface the matcher is written against: what its loop needs, in its own
terms, and nothing of either library's API.

* A :class:`Consumer` in a consumer group: ``poll`` returns at once what is there (up to
  ``max_records``), grouped per :class:`Partition` in offset order; ``pause``/``resume`` stop and
  restart what ``poll`` returns for partitions without dropping what was fetched; ``seek`` moves a
  partition's next record; ``commit`` is synchronous; the :class:`Assignment` callbacks run on the
  thread that polls, inside ``poll``, after a new assignment is in place (so they may pause or seek
  the partitions they are given) and before a revocation takes effect (so they may still commit).
* A :class:`Producer`: ``produce`` queues a record and calls ``on_delivery(None, offset)`` once the
  broker has it (at ``offset`` of its partition), or ``on_delivery(error, None)``; the callbacks
  come on a thread of the client's. ``produce_many`` queues several in one call (the verdicts of a
  batch) and reports each by its index, ``on_delivery(index, error, offset)``, exactly once: a
  record that could not be queued is reported too (with the error), so the call itself never raises.
  :func:`produce_each` is ``produce_many`` made of ``produce`` calls, for clients without a faster way.
* A :class:`TransactionalProducer` (exactly-once, KIP-447): a :class:`Producer` whose records go
  into the open transaction; ``send_offsets`` adds the consumer's offsets (with their metadata) to
  it, fenced by the consumer group's generation (:meth:`Consumer.group_metadata`); ``commit`` makes
  records and offsets visible together, ``abort`` discards both.
* ``Consumer.committed`` reads the committed :class:`Committed` offsets with their metadata (what
  a broker keeps of it: Apache Kafka all of it, Tansu nothing).
* Errors are :class:`ClientError`; :attr:`ClientError.too_large` tells a record refused for its size,
  :attr:`ClientError.abortable` a transaction that must be aborted, :attr:`ClientError.fatal` a
  client that cannot go on.

:mod:`digitmatch.kafka.librdkafka` implements it on librdkafka (``confluent-kafka``); the matcher's
tests also run it on an in-memory fake (``tests/consumer/fake_kafka.py``).
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Mapping, NamedTuple, Protocol


class Partition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One record read from a partition."""

    offset: int
    key: bytes | None
    value: bytes | None
    # None when the headers cannot be read (a header name that is not valid UTF-8: legal on the
    # wire, where header names are bytes); an empty list when there are none.
    headers: list[tuple[str, bytes]] | None
    timestamp: int = -1  # epoch ms (-1 when the record has none)
    # Why the client could not read the record at this offset at all (a compressed batch it cannot
    # inflate); its key, value and headers are then None.
    unreadable: str | None = None


class OutgoingRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None = None  # None: the producer's partitioner picks it from the key


class Committed(NamedTuple):
    """A committed position: the next offset to read, and the commit's metadata string."""

    offset: int
    metadata: str = ""


class ClientError(Exception):
    """A Kafka client error, raised or passed to ``on_delivery``."""

    def __init__(self, message: str, *, too_large: bool = False, fatal: bool = False, abortable: bool = False,
                 retriable: bool = False):
        super().__init__(message)
        self.too_large = too_large  # the record is larger than the producer or the broker accepts
        self.fatal = fatal  # the client cannot go on (a fenced or fatally failed producer)
        self.abortable = abortable  # the open transaction can only be aborted
        self.retriable = retriable  # the same call may succeed if made again


class Assignment(Protocol):
    def on_assigned(self, partitions: set[Partition]) -> None: ...

    def on_revoked(self, partitions: set[Partition]) -> None: ...

    def on_lost(self, partitions: set[Partition]) -> None:
        """Taken away without a revocation (the group moved on without this member): nothing of
        them may be committed any more."""


class Consumer(Protocol):
    def subscribe(self, topics: list[str], assignment: Assignment) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> dict[Partition, list[Record]]: ...

    def pause(self, partitions: Iterable[Partition]) -> None: ...

    def resume(self, partitions: Iterable[Partition]) -> None: ...

    def paused(self) -> set[Partition]: ...

    def seek(self, partition: Partition, offset: int) -> None: ...

    def commit(self, offsets: Mapping[Partition, Committed]) -> None:
        """Commit ``{partition: (next offset to read, metadata)}``; raises :class:`ClientError`."""

    def committed(self, partitions: Iterable[Partition], timeout_s: float) -> dict[Partition, Committed | None]:
        """The group's committed positions (None: nothing committed); raises :class:`ClientError`.
        A read_committed consumer waits for transactions still holding offsets of them (KIP-447)."""

    def group_metadata(self) -> object:
        """The consumer group's current generation and member, for
        :meth:`TransactionalProducer.send_offsets` (opaque)."""

    def lag(self, partition: Partition) -> int | None:
        """Records after the next one ``poll`` returns, as of the last fetch (None before one)."""

    def partitions(self, topic: str) -> set[int] | None:
        """The partition numbers of ``topic`` as the broker's metadata has them now (None: no such
        topic); raises :class:`ClientError` when the metadata does not come."""

    def close(self) -> None: ...


OnDelivery = Callable[["ClientError | None", "int | None"], None]
# produce_many's report of one record: (its index in the call, error, offset)
OnEachDelivery = Callable[[int, "ClientError | None", "int | None"], None]


class Producer(Protocol):
    def produce(self, record: OutgoingRecord, on_delivery: OnDelivery) -> None:
        """Queue ``record``; raises :class:`ClientError` when it cannot be queued."""

    def produce_many(self, records: list[OutgoingRecord], on_delivery: OnEachDelivery) -> None:
        """Queue ``records``, each reported once by its index (module docstring); never raises."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record is delivered; :class:`ClientError` if some are not."""

    def close(self, timeout_s: float) -> None: ...


class TransactionalProducer(Producer, Protocol):
    """Records produced between ``begin`` and ``commit``/``abort`` form one transaction. Each call
    raises :class:`ClientError` (``abortable``: abort and go on; ``fatal``: the producer is done)."""

    def begin(self) -> None: ...

    def send_offsets(self, offsets: Mapping[Partition, Committed], group_metadata: object, timeout_s: float) -> None:
        ...

    def commit(self, timeout_s: float) -> None: ...

    def abort(self, timeout_s: float) -> None: ...


def produce_each(producer: Producer, records: list[OutgoingRecord], on_delivery: OnEachDelivery) -> None:
    """``produce_many`` as one ``produce`` per record: one that cannot be queued is reported at once."""
    for index, record in enumerate(records):
        try:
            producer.produce(record, functools.partial(on_delivery, index))
        except ClientError as exc:
            on_delivery(index, exc, None)
