"""Stream time: the clock per partition against which a pending half's TTL is judged.

A half waits ``--join-ttl-s`` for its partner *in the stream*, not on the matcher's wall clock. A
matcher that was stopped, stalled or is catching up on a backlog has not read the partners that
are already on the topic; judged by the wall clock it would declare their halves unpaired before
reading them (and then dead-letter the partners as ``already_decided``). Kafka Streams judges its
window grace against stream time for the same reason.

Rules (:class:`StreamClock`):

* A partition's stream time is the highest record timestamp read from it (Kafka's record
  timestamp: the producer's create time, or the broker's log-append time), in epoch milliseconds.
  It never goes back, and a record stamped ahead of the matcher's wall clock counts as stamped
  now: one record from the future cannot expire every pending half of its partition. A record
  without a timestamp counts as stamped when it is read.
* A half is stamped, when it is read, with its partition's stream time after its own record
  (:meth:`StreamClock.observe`), and expires once that stream time has moved ``ttl`` past the
  stamp: a partner produced within the TTL has been read by then, whatever the producers' clocks
  say of each other, since every half is measured against the same partition clock.
* A quiet partition still expires its halves: while a partition is caught up (nothing left to
  read as of the last fetch), not paused, and a poll brings nothing for it, its stream time moves
  on with the monotonic clock by the time since the previous poll, but by at most ``max_step_s``
  per poll (:meth:`StreamClock.idle`). A stall of the matcher (SIGSTOP, a frozen host) therefore
  moves it one step, not by the length of the stall, and the partners that were produced during
  the stall are read before the clock can reach them.
* A partition's clock is forgotten when the partition is revoked; its next owner starts again
  from the records it reads.

The caller passes both clocks in (wall milliseconds to :meth:`observe`, elapsed monotonic seconds
to :meth:`idle`), so the rules are tested without waiting.
"""

from __future__ import annotations

from typing import Hashable, Iterable

# librdkafka and kafka-python report a missing timestamp as -1 (type NOT_AVAILABLE).
NO_TIMESTAMP = -1


class StreamClock:
    """Stream time per partition, in epoch milliseconds."""

    def __init__(self, max_step_s: float = 0.5):
        if max_step_s <= 0:
            raise ValueError("max_step_s must be > 0")
        self.max_step_ms = max_step_s * 1000
        self._now: dict[Hashable, float] = {}

    def observe(self, partition: Hashable, timestamp_ms: int, wall_ms: int) -> float:
        """A record of ``partition`` stamped ``timestamp_ms`` was read at ``wall_ms``; returns the
        partition's stream time after it (the stamp of a half read from that record)."""
        stamp = wall_ms if timestamp_ms is None or timestamp_ms <= NO_TIMESTAMP or timestamp_ms > wall_ms else timestamp_ms
        now = self._now.get(partition)
        if now is None or stamp > now:
            self._now[partition] = now = stamp
        return now

    def idle(self, partitions: Iterable[Hashable], elapsed_s: float) -> None:
        """``partitions`` are caught up, not paused, and the last poll brought nothing for them:
        move their stream time on by ``elapsed_s`` (at most one step). A partition not read yet
        has no stream time and stays without one."""
        step = min(max(elapsed_s, 0.0) * 1000, self.max_step_ms)
        if step <= 0:
            return
        for partition in partitions:
            now = self._now.get(partition)
            if now is not None:
                self._now[partition] = now + step

    def now(self, partition: Hashable) -> float | None:
        """The partition's stream time (None before its first record)."""
        return self._now.get(partition)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        for partition in partitions:
            self._now.pop(partition, None)
