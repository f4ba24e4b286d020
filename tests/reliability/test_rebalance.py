"""Rebalances: one matcher, then a second and a third join the group mid-stream, then one is
SIGKILLed. No pair may be lost or joined with a half that is not its own, and the pending halves
of revoked partitions must be dropped (their new owner reads them again), not leaked."""

from __future__ import annotations

import re
import threading
import time

import pytest
from flow import PairStream, serve_flags, tally
from matcher_harness import Topics, make_pairs, metric_value
from probe import Sampler

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

MAX_PAIRS = 5000
RATE = 35.0
TAIL = 150  # pairs sent after the survivors own every partition: the kill happens mid-stream
PARTITIONS = 4
TTL_S = 20.0


def assigned(process) -> int:
    status, text = process.get("/metrics")
    return int(metric_value(text, "digitmatch_partitions_assigned") or 0) if status == 200 else 0


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_scale_out_then_kill_loses_no_pair_and_leaks_no_pending_half(broker, shipped_model, start_matcher, figures,
                                                                      clients):
    topics = Topics.create(broker.connection, "rebalance", partitions=PARTITIONS)
    flags = serve_flags(topics, shipped_model, "rebalance", join_ttl_s=TTL_S, max_batch_size=32)
    pairs = make_pairs(MAX_PAIRS, "rebalance", seed=21)
    settled = threading.Event()
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    layout = []  # partitions per live matcher after each step
    with Sampler(processes) as sampler:
        a = start_matcher(broker.bootstrap, **flags)
        processes.append(a)
        stream = clients.track(PairStream(sender, pairs, [(0, RATE)], until=settled, tail=TAIL).start())
        stream.wait_for_sent(40)
        layout.append(("one matcher", [assigned(a)]))
        for _ in range(2):  # scale out to two, then three
            newcomer = start_matcher(broker.bootstrap, **flags)
            processes.append(newcomer)
            live = list(processes)
            assert wait_until(lambda: sum(assigned(p) for p in live) == PARTITIONS
                              and all(assigned(p) for p in live), 60)
            layout.append((f"{len(live)} matchers", [assigned(p) for p in live]))
            time.sleep(1.0)
        victim = processes[1]
        sent_at_kill = stream.sent
        assert victim.kill() == -9
        survivors = [processes[0], processes[2]]
        assert wait_until(lambda: sum(assigned(p) for p in survivors) == PARTITIONS, 60)
        layout.append(("after SIGKILL of one", [assigned(p) for p in survivors]))
        settled.set()
        pairs = stream.wait()
        everyone = {p.pair_id for p in pairs}
        got = reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=120)
        time.sleep(1.5)  # the gauges are refreshed every 0.5 s
        got = reader.poll(0.5)
        pending_after = {p.pid: metric_value(p.get("/metrics")[1], "digitmatch_pending_halves") for p in survivors}
    result = tally(pairs, got.verdicts)
    logs = "".join(p.log_tail(2_000_000) for p in processes)
    dropped = sum(int(n) for n in re.findall(r"dropped (\d+) pending halves of revoked partitions", logs))
    assignments = len(re.findall(r"partitions assigned:", logs))
    figures(
        "rebalance",
        title="Scale out from one matcher to three mid-stream, then SIGKILL one",
        injected=f"a stream at {RATE:g} pairs/s over {PARTITIONS} partitions; a second and a third matcher "
                 "process join the group while it flows, then the second is SIGKILLed (its partitions move "
                 f"after the 6 s session timeout); the stream goes on for {TAIL} pairs after that",
        partitions_per_matcher=[f"{step}: {counts}" for step, counts in layout],
        killed_when_pairs_sent=sent_at_kill,
        matcher_crashes_injected=1,
        unexpected_exits=sum(p.returncode not in (None, -9) for p in processes),
        partition_assignments_logged=assignments,
        pending_halves_dropped_on_revocation=dropped,
        pending_halves_at_end=sum(v or 0 for v in pending_after.values()),
        peak_pending_halves=sampler.peaks.pending(),
        peak_rss_mib=sampler.peaks.rss_mib(),
        **result.as_figures(),
    )
    assert result.lost == 0, logs[-3000:]
    assert result.wrong_halves == 0
    assert result.unpaired == 0, "a half of a revoked partition lost its partner"
    assert result.re_emitted_identical == result.pairs_decided_twice_or_more
    assert all(v == 0 for v in pending_after.values()), f"pending halves leaked: {pending_after}"
    assert all(p.returncode is None for p in survivors)
    assert not got.dead_letters
