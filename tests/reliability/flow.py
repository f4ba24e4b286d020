"""Pairs flowing through a real broker while faults are injected, and the accounting of what
came out: every pair ID sent must get a verdict built from its own halves; re-emitted verdicts
(at-least-once after a crash or rebalance) must repeat the decision."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from matcher_harness import PairSpec, Sender, decision

from digitmatch import wire

# Scores are rounded to 6 decimals, but a different batch composition changes float32 round-off
# (CPU kernels differ by batch size); the same tolerance as tests/consumer/test_matcher.py.
SCORE_TOLERANCE = 1e-5
# Consumer-group timing for matcher processes in tests (Tansu joins take ~session timeout / 2).
GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def serve_flags(topics, model, group: str, **flags) -> dict:
    """Flags of ``digitmatch serve`` (Python spelling) for the ``start_matcher`` fixture."""
    return {"group_id": group, "model": model, "input_topic": topics.input, "output_topic": topics.output,
            "dlq_topic": topics.dlq, "commit_interval_ms": 200, **GROUP_TIMING, **flags}


class PairStream:
    """Sends ``pairs`` on a thread at ``rate`` pairs per second (a list of ``(pairs, rate)`` phases
    for bursts). Each written half follows its spoken half ``lag`` pairs later, so at any moment
    about ``lag`` halves wait for their partner.

    With ``until`` (an event), the last phase goes on until the event is set and ``tail`` more
    pairs were sent (or ``pairs`` run out), so faults injected by the test happen mid-stream
    however slow the machine is. :attr:`sent_pairs` are the pairs actually sent."""

    def __init__(self, sender: Sender, pairs: list[PairSpec], phases: list[tuple[int, float]], lag: int = 20,
                 until: threading.Event | None = None, tail: int = 0):
        if sum(n for n, _ in phases) > len(pairs) or (until is None and sum(n for n, _ in phases) != len(pairs)):
            raise ValueError("the phases must add up to the pairs")
        self.sender = sender
        self.pairs = pairs
        self.phases = phases
        self.lag = lag
        self.until = until
        self.tail = tail
        self.sent = 0  # pairs whose both halves were handed to the producer
        self.sent_pairs: list[PairSpec] = []
        self.phase_of: dict[str, int] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pair-stream", daemon=True)

    def start(self) -> "PairStream":
        self._thread.start()
        return self

    def wait(self, timeout_s: float = 300) -> list[PairSpec]:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert not self._thread.is_alive(), "the pair stream did not finish"
        return self.sent_pairs

    def close(self) -> None:
        """End an ``until`` stream now (a test that failed half-way must not leave it sending)."""
        self.tail = 0
        if self.until is not None:
            self.until.set()
        self._thread.join(30)

    def wait_for_sent(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sent < count and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)

    def _more(self, last: bool, n: int, count: int) -> bool:
        if not (last and self.until is not None):
            return n < count
        if self.until.is_set():
            if self.tail <= 0:
                return False
            self.tail -= 1
        return True

    def _run(self) -> None:
        try:
            i = 0
            for phase, (count, rate) in enumerate(self.phases):
                started, n = time.monotonic(), 0
                while i < len(self.pairs) and self._more(phase == len(self.phases) - 1, n, count):
                    pair = self.pairs[i]
                    self.phase_of[pair.pair_id] = phase
                    self.sender.send(pair.spoken())
                    if i >= self.lag:
                        self.sender.send(self.pairs[i - self.lag].written())
                        self.sent += 1
                    i += 1
                    n += 1
                    ahead = started + n / rate - time.monotonic()
                    if ahead > 0:
                        self.sender.producer.flush()
                        time.sleep(ahead)
            self.sent_pairs = self.pairs[:i]
            for pair in self.pairs[max(0, i - self.lag):i]:
                self.sender.send(pair.written())
                self.sent += 1
            self.sender.producer.flush()
        except BaseException as exc:  # reported by wait()
            self.error = exc


@dataclass
class Tally:
    pairs_sent: int
    verdict_records: int
    pairs_decided: int
    lost: int
    re_emitted: int  # verdict records beyond the first of each pair
    pairs_decided_twice_or_more: int
    re_emitted_identical: int  # of those pairs, how many repeated the decision exactly
    wrong_halves: int  # verdicts whose ground truth is not the pair's own
    unpaired: int
    max_score_difference: float

    def as_figures(self) -> dict:
        return dict(vars(self))


def same_decision(verdicts: list[wire.Verdict]) -> bool:
    first = decision(verdicts[0])
    for v in verdicts[1:]:
        other = decision(v)
        if other[:1] + other[2:] != first[:1] + first[2:]:
            return False
        if (v.score is None) != (verdicts[0].score is None):
            return False
        if v.score is not None and abs(v.score - verdicts[0].score) > SCORE_TOLERANCE:
            return False
    return True


def tally(pairs: list[PairSpec], verdicts: dict[str, list[wire.Verdict]]) -> Tally:
    mine = {p.pair_id for p in pairs}
    records = sum(len(v) for pid, v in verdicts.items() if pid in mine)
    decided = [p for p in pairs if verdicts.get(p.pair_id)]
    repeated = [verdicts[p.pair_id] for p in decided if len(verdicts[p.pair_id]) > 1]
    wrong = sum(
        1 for p in decided for v in verdicts[p.pair_id]
        if v.truth is None or (v.truth.spoken, v.truth.written) != (p.spoken_digit, p.written_digit)
    )
    scores = [[v.score for v in vs if v.score is not None] for vs in repeated]
    return Tally(
        pairs_sent=len(pairs),
        verdict_records=records,
        pairs_decided=len(decided),
        lost=len(pairs) - len(decided),
        re_emitted=records - len(decided),
        pairs_decided_twice_or_more=len(repeated),
        re_emitted_identical=sum(same_decision(vs) for vs in repeated),
        wrong_halves=wrong,
        unpaired=sum(v.outcome == "unpaired" for p in decided for v in verdicts[p.pair_id]),
        max_score_difference=max((max(s) - min(s) for s in scores if s), default=0.0),
    )


def committed_records(conn, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on ``topic`` (records it will not read again)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**conn.consumer_kwargs(group))
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def latency_percentiles(verdicts: list[wire.Verdict]) -> dict[str, float | None]:
    """p50 / p99 / max of the verdicts' end-to-end latency (produced -> decided), in ms."""
    values = np.array([v.latency_ms.end_to_end for v in verdicts if v.latency_ms.end_to_end is not None])
    if values.size == 0:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(float(np.percentile(values, 50)), 1),
            "p99_ms": round(float(np.percentile(values, 99)), 1),
            "max_ms": round(float(values.max()), 1)}
