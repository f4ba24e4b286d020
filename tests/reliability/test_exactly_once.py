"""Exactly once on Apache Kafka (``--processing-guarantee exactly-once``): matchers are SIGKILLed and
the group rebalances while pairs and bad records flow. A read_committed reader of the outputs must
see exactly one verdict per pair, built from its own halves, and exactly one dead letter per bad
record: none lost, none twice. (Tansu returns aborted records to read_committed readers and drops
the commit metadata, so there is no exactly-once to check on it: kafka_only.)"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from flow import PairStream, serve_flags, tally
from matcher_harness import Reader, Topics, make_pairs, metric_value
from probe import Sampler

pytestmark = [pytest.mark.slow, pytest.mark.kafka_only]

MAX_PAIRS = 5000
RATE = 40.0
TAIL = 200
TTL_S = 60.0  # longer than a restart plus the transaction timeout: a half read again finds its partner
TRANSACTION_TIMEOUT_MS = 10_000
BAD_PER_BURST = 25


def committed_transactions(process) -> float:
    status, text = process.get("/metrics")
    found = metric_value(text, "digitmatch_transactions_total", {"result": "committed"}) if status == 200 else None
    return found or 0.0


def wait_until_committing(process, timeout_s: float = 120) -> None:
    """Until ``process`` has committed transactions with outputs: a restarted matcher first waits for
    the killed one's open transaction to be aborted (up to the transaction timeout), and a kill
    before it decides anything would test nothing."""
    deadline = time.monotonic() + timeout_s
    while committed_transactions(process) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)


def bad_records(burst: int) -> list[tuple[bytes, bytes, list]]:
    """Records the matcher must dead-letter (a pair ID with a space and a '!': bad_pair_id)."""
    return [(f"bad {burst}-{i}!".encode(), b"x", [("dm-half", b"spoken")]) for i in range(BAD_PER_BURST)]


def test_sigkills_and_a_rebalance_leave_one_committed_verdict_per_pair(broker, shipped_model, start_matcher,
                                                                       figures, clients):
    topics = Topics.create(broker.connection, "eos")
    flags = serve_flags(topics, shipped_model, "eos", join_ttl_s=TTL_S, max_batch_size=32,
                        processing_guarantee="exactly-once", transaction_timeout_ms=TRANSACTION_TIMEOUT_MS)
    pairs = make_pairs(MAX_PAIRS, "eos", seed=31)
    settled = threading.Event()
    rng = random.Random(2027)
    sender, uncommitted = clients(broker.connection, topics)
    committed = clients.track(Reader(broker.connection, topics, read_committed=True))
    processes: list = []
    steps, bad_sent = [], []
    with Sampler(processes) as sampler:
        processes.append(start_matcher(broker.bootstrap, **flags))
        stream = clients.track(PairStream(sender, pairs, [(0, RATE)], until=settled, tail=TAIL).start())

        def burst() -> None:
            records = bad_records(len(bad_sent))
            sender.send_all(records)
            bad_sent.extend(key for key, _, _ in records)

        for kill in range(2):  # SIGKILL the only matcher mid-stream, twice, restarting it each time
            wait_until_committing(processes[-1])
            time.sleep(rng.uniform(0.5, 2.0))
            burst()
            time.sleep(rng.uniform(0.1, 0.6))
            assert processes[-1].kill() == -9
            steps.append(f"SIGKILL {kill + 1} at {stream.sent} pairs sent")
            processes.append(start_matcher(broker.bootstrap, **flags))
        processes.append(start_matcher(broker.bootstrap, **flags))  # a second member: rebalance
        steps.append(f"second matcher joined at {stream.sent} pairs sent")
        burst()
        wait_until_committing(processes[-1])
        time.sleep(rng.uniform(0.1, 0.6))
        assert processes[-2].kill() == -9  # the older member, while both own partitions
        steps.append(f"SIGKILL of one of two at {stream.sent} pairs sent")
        burst()
        settled.set()
        pairs = stream.wait()
        everyone = {p.pair_id for p in pairs}
        got = committed.wait_for(lambda c: everyone <= c.verdicts.keys() and len(c.dead_letters) >= len(bad_sent),
                                 timeout_s=240)
        got = committed.poll(3.0)  # anything committed twice has its chance to show
        raw = uncommitted.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=30)
    survivor = processes[-1]
    assert survivor.returncode is None, survivor.log_tail()
    result = tally(pairs, got.verdicts)
    letters = Counter(key for key, _, _ in got.dead_letters)
    raw_records = sum(len(v) for v in raw.verdicts.values())
    figures(
        "exactly_once",
        title="Exactly once: SIGKILLs and a rebalance mid-stream, read_committed reader",
        injected=f"--processing-guarantee exactly-once on Apache Kafka; a stream at {RATE:g} pairs/s (each written "
                 f"half 20 pairs behind its spoken half) with {BAD_PER_BURST} bad records every few seconds; the only "
                 "matcher SIGKILLed twice and restarted, then a second matcher joins and the older of the two is "
                 f"SIGKILLed; transaction timeout {TRANSACTION_TIMEOUT_MS // 1000} s; outputs read by a read_committed "
                 "consumer",
        steps=steps,
        matcher_crashes_injected=3,
        unexpected_exits=sum(p.returncode not in (None, -9) for p in processes),
        bad_records_sent=len(bad_sent),
        dead_letters_committed=sum(letters.values()),
        bad_records_without_dead_letter=len(set(bad_sent) - letters.keys()),
        dead_letters_committed_twice=sum(1 for n in letters.values() if n > 1),
        verdict_records_read_uncommitted=raw_records,
        peak_pending_halves=sampler.peaks.pending(),
        peak_rss_mib=sampler.peaks.rss_mib(),
        **result.as_figures(),
    )
    assert result.lost == 0, f"{result.lost} pairs without a committed verdict\n{survivor.log_tail()}"
    assert result.wrong_halves == 0
    assert result.re_emitted == 0, f"{result.re_emitted} verdicts committed twice"
    assert result.unpaired == 0
    assert set(bad_sent) == letters.keys() and all(n == 1 for n in letters.values()), letters
