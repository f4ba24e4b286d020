"""Routing: whether each half was read from the partition of the input topic its key hashes to.

The join is partition-local (docs/wire-format.md, "Partitioning"): both halves of a pair must be in
one partition, and the producers' murmur2 partitioner puts them there. A half found in another
partition was sent with another partitioner (librdkafka's default, ``consistent_random``, hashes
with CRC32) or to a partition chosen by hand, while its partner, from a producer that does it
right, waits in the partition the key hashes to for a half that never comes.

Rules:

* A half whose key's murmur2 partition (:mod:`digitmatch.kafka.partitioner`), among the input
  topic's partitions as the consumer's metadata counts them, is not the partition it was read
  from is dead-lettered ``misrouted`` by the intake, with a detail naming both partitions and the
  producer setting that fixes it (:func:`detail`). Its partner, where it is, gets the pair's one
  ``unpaired`` verdict after the join TTL.
* Dead-lettered, not re-routed: publishing the half again to the right partition would make the
  matcher a producer on its own input (one more copy after each crash before the commit) and
  hide the producer's misconfiguration; a dead letter shows it at the first record, and can be
  replayed once the producer is fixed.
* Checked once per partition per poll, all the batch's keys at once. A record without a key, or
  with a key longer than a pair ID, is not hashed: decoding rejects it (``missing_key``,
  ``bad_pair_id``), and a long key would cost hashing time for nothing.
* The partition count is read from the consumer's metadata at the first batch after each
  assignment (partitions are only ever added to a topic, and adding them rebalances the group),
  never per poll. While it cannot be read, nothing is checked, and it is asked again after
  :data:`RETRY_S`. A batch from a partition beyond the count means the count is out of date: it
  is not checked, and the count is read again.
* A topic of one partition has nothing to check; with ``--partition-check off`` nothing is
  checked (the matcher's behaviour before the check, for a topic whose partition count was
  increased while records written with the old count are still to be read).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from digitmatch.kafka.client import ClientError, Consumer, Partition, Record
from digitmatch.kafka.partitioner import murmur2_partitions
from digitmatch.wire import MAX_PAIR_ID_LENGTH

log = logging.getLogger(__name__)

# How long the check waits before asking again for a partition count it could not read.
RETRY_S = 10.0
_NONE: dict[int, str] = {}


def detail(expected: int, count: int, read_from: int) -> str:
    """The ``dm-dlq-detail`` of a misrouted half."""
    return (f"key hashes (murmur2) to partition {expected} of {count} but was read from partition {read_from}: "
            "the producer must use the murmur2 partitioner and no explicit partition (librdkafka clients: "
            "partitioner=murmur2_random; kcat: -X partitioner=murmur2_random; Java, kafka-python: the default)")


class Routing:
    def __init__(self, consumer: Consumer, topic: str, *, enabled: bool,
                 clock: Callable[[], float] = time.monotonic):
        self.consumer = consumer
        self.topic = topic
        self.enabled = enabled
        self.count: int | None = None  # the topic's partitions, as last read
        self._clock = clock
        self._stale = True
        self._next_read = 0.0

    def assigned(self) -> None:
        """The assignment changed: the partition count is read again before the next check."""
        self._stale, self._next_read = True, 0.0

    def misrouted(self, tp: Partition, records: list[Record]) -> dict[int, str]:
        """``{offset: detail}`` of the records of ``tp``'s batch whose key hashes to another
        partition; empty when none does or when nothing can be checked (see the rules)."""
        if not self.enabled or not records:
            return _NONE
        count = self._partition_count(tp)
        if count is None or count == 1:
            return _NONE
        keys = [record.key for record in records]
        rows = [i for i, key in enumerate(keys) if key is not None and len(key) <= MAX_PAIR_ID_LENGTH]
        if len(rows) < len(keys):
            keys = [keys[i] for i in rows]
        expected = murmur2_partitions(keys, count)
        wrong = (expected != tp.partition).nonzero()[0]
        if not len(wrong):
            return _NONE
        return {records[rows[i]].offset: detail(int(expected[i]), count, tp.partition) for i in wrong.tolist()}

    def _partition_count(self, tp: Partition) -> int | None:
        if not self._stale and tp.partition >= self.count:
            self._stale = True  # partitions were added since the count was read
        if self._stale and self._clock() >= self._next_read:
            self._read_count()
            if not self._stale and tp.partition >= self.count:  # the metadata is behind the assignment
                self._stale, self._next_read = True, self._clock() + RETRY_S
        return None if self._stale else self.count

    def _read_count(self) -> None:
        try:
            found = self.consumer.partitions(self.topic)
        except ClientError as exc:
            found, problem = None, str(exc)
        else:
            problem = "the topic is not in the metadata"
        if not found:
            self._next_read = self._clock() + RETRY_S
            log.warning("partition count of %r unknown (%s): halves are not checked for their partition; "
                        "asking again in %.0f s", self.topic, problem, RETRY_S)
            return
        if len(found) != self.count:
            log.info("%r has %d partitions: halves are checked against their key's murmur2 partition",
                     self.topic, len(found))
        self.count, self._stale = len(found), False
