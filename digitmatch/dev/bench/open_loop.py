"""The open-loop load generator: pair *i* is due at ``i / rate`` seconds after the start, whatever
the matcher does (a closed loop would slow down with the system under test and hide its queueing).
When the sender falls behind it sends what is due at once, and reports the rate it really managed,
so a run where the load generator itself was the limit is visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from digitmatch.dev.bench.records import RecordPool, stamped
from digitmatch.kafka.client import OutgoingRecord, Producer
from digitmatch.wire import now_ms



@dataclass(frozen=True)
class SentLoad:
    run_id: str
    pair_ids: list[str]
    offered_pairs_per_s: float  # 0 = as fast as possible
    started_ms: int  # wall clock of the first send
    ended_ms: int  # wall clock when the last pair was handed to the client
    flushed_ms: int  # ... and when the broker had acknowledged everything
    failed: int

    @property
    def seconds(self) -> float:
        return max(1e-3, (self.ended_ms - self.started_ms) / 1000)

    @property
    def sent_pairs_per_s(self) -> float:
        return len(self.pair_ids) / self.seconds


def pair_ids(run_id: str, n: int) -> list[str]:
    return [f"{run_id}-{i}" for i in range(n)]


def send_open_loop(
    producer: Producer, topic: str, pool: RecordPool, run_id: str, n_pairs: int, rate: float
) -> SentLoad:
    """Send both halves of ``n_pairs`` pairs (IDs ``<run_id>-<i>``) at ``rate`` pairs/s (0 = as fast
    as the client goes), alternating which half goes first; then flush."""
    ids = pair_ids(run_id, n_pairs)
    failures = []

    def report(error, _offset) -> None:
        if error is not None:
            failures.append(error)
    t0 = time.monotonic()
    started_ms = now_ms()
    i = 0
    while i < n_pairs:
        due = n_pairs if rate <= 0 else min(n_pairs, int((time.monotonic() - t0) * rate) + 1)
        sent_ms = now_ms()
        while i < due:
            key = ids[i].encode("ascii")
            spoken, written = pool.halves(i)
            halves = (spoken, written) if i % 2 == 0 else (written, spoken)
            for half in halves:
                producer.produce(OutgoingRecord(topic, key, half.value, stamped(half, sent_ms)), report)
            i += 1
        if i < n_pairs:
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
    ended_ms = now_ms()
    producer.flush(60)
    return SentLoad(run_id, ids, rate, started_ms, ended_ms, now_ms(), len(failures))


def run_topics(mode: str, run_id: str) -> tuple[str, str]:
    """(input, output) topics of one run of a bench consumer (``naive``, ``plain``): its own, so it
    reads nothing but the pairs sent for it."""
    return f"bench.{mode}.{run_id}.pairs.in", f"bench.{mode}.{run_id}.matches.out"
