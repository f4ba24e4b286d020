"""Reading the verdicts of one benchmark run off ``matches.out``.

One group-less consumer stays assigned to the topic for the whole benchmark and reads forward, so
every run parses only the verdicts written since the previous one. It is read after the send
window, not during it, so it takes no CPU from the system under test while that is measured.
Only the fields the benchmark needs are parsed (``json.loads``, not the full ``Verdict`` model).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from digitmatch import wire
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.reader import open_reader


@dataclass(frozen=True, slots=True)
class SeenVerdict:
    outcome: str
    produced_ms: int | None
    decided_ms: int
    end_to_end_ms: float | None
    # where the end-to-end time went, ms: producer -> broker -> matcher read, waiting for the
    # partner, waiting in the batch/queue, the batch's inference
    transit_ms: float | None
    join_wait_ms: float | None
    queue_wait_ms: float | None
    inference_ms: float | None


class VerdictTap:
    def __init__(self, conn: KafkaConnection, topic: str = wire.TOPIC_MATCHES, read_committed: bool = False):
        self.consumer = open_reader(conn, topic, read_committed=read_committed)
        self.duplicates = 0

    def collect(self, pair_ids: list[str], timeout_s: float) -> dict[str, SeenVerdict]:
        """Read until every pair in ``pair_ids`` has a verdict or ``timeout_s`` passed. Verdicts of
        other pairs (earlier runs, warm-ups) are skipped; a repeated verdict keeps the first."""
        wanted = set(pair_ids)
        found: dict[str, SeenVerdict] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for records in self.consumer.poll(timeout_ms=200, max_records=20_000).values():
                for record in records:
                    v = json.loads(record.value)
                    pid = v["pair_id"]
                    if pid not in wanted:
                        continue
                    if pid in found:
                        self.duplicates += 1
                        continue
                    latency, stamps = v["latency_ms"], v["timestamps"]
                    produced = stamps["produced_ms"]
                    found[pid] = SeenVerdict(
                        v["outcome"], produced, stamps["decided_ms"], latency["end_to_end"],
                        None if produced is None else stamps["first_seen_ms"] - produced,
                        latency["join_wait"], latency["queue_wait"], latency["inference"],
                    )
        return found

    def close(self) -> None:
        self.consumer.close()
