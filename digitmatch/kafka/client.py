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
  come on a thread of the client's.
* Errors are :class:`ClientError`; :attr:`ClientError.too_large` tells a record refused for its size.

:mod:`digitmatch.kafka.librdkafka` implements it on librdkafka (``confluent-kafka``); the matcher's
tests also run it on an in-memory fake (``tests/consumer/fake_kafka.py``).
"""

from __future__ import annotations

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


class ClientError(Exception):
    """A Kafka client error, raised or passed to ``on_delivery``."""

    def __init__(self, message: str, *, too_large: bool = False, fatal: bool = False):
        super().__init__(message)
        self.too_large = too_large  # the record is larger than the producer or the broker accepts
        self.fatal = fatal  # the client cannot go on (a fenced or fatally failed producer)


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

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``{partition: next offset to read}``; raises :class:`ClientError`."""

    def lag(self, partition: Partition) -> int | None:
        """Records after the next one ``poll`` returns, as of the last fetch (None before one)."""

    def partitions(self, topic: str) -> set[int] | None:
        """The partition numbers of ``topic`` as the broker's metadata has them now (None: no such
        topic); raises :class:`ClientError` when the metadata does not come."""

    def close(self) -> None: ...


OnDelivery = Callable[["ClientError | None", "int | None"], None]


class Producer(Protocol):
    def produce(self, record: OutgoingRecord, on_delivery: OnDelivery) -> None:
        """Queue ``record``; raises :class:`ClientError` when it cannot be queued."""

    def flush(self, timeout_s: float) -> None:
        """Wait until every queued record is delivered; :class:`ClientError` if some are not."""

    def close(self, timeout_s: float) -> None: ...
