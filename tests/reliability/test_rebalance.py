"""Rebalances: one matcher, then a second and a third join the group mid-stream, then one is
SIGKILLed. No pair may be lost or joined with a half that is not its own, and the pending halves
of revoked partitions must be dropped (their new owner reads them again), not leaked. Twice: at a
trickle (tens of pairs/s), and at half the saturation of one matcher measured in the test itself
on the same broker (flow.measure_saturation)."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
from flow import FastSender, PairStream, cycled_pairs, measure_saturation, recovery, serve_flags, tally
from matcher_harness import Reader, Topics, make_pairs, metric_value
from probe import Sampler

from digitmatch import wire

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

MAX_PAIRS = 5000
RATE = 35.0
TAIL = 150  # pairs sent after the survivors own every partition: the kill happens mid-stream
PARTITIONS = 4
TTL_S = 20.0
LOAD_SHARE = 0.5  # of the saturation measured in the test
LOAD_TAIL_S = 4.0
LOAD_MAX_S = 150
SATURATION_BACKLOG = 3000


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


class Steps:
    def __init__(self):
        self.layout: list[str] = []  # partitions per live matcher after each step
        self.sent_at_kill = 0
        self.killed_ms = 0
        self.survivors: list = []


def scale_out_then_kill(broker, start_matcher, flags, processes: list, stream) -> Steps:
    """With ``processes`` = [one matcher] and ``stream`` flowing: a second and a third matcher
    join (each step waits until every live matcher owns partitions), then the second is
    SIGKILLed and its partitions move to the two others."""
    steps = Steps()
    steps.layout.append(f"one matcher: {[assigned(processes[0])]}")
    for _ in range(2):  # scale out to two, then three
        newcomer = start_matcher(broker.bootstrap, **flags)
        processes.append(newcomer)
        live = list(processes)
        assert wait_until(lambda: sum(assigned(p) for p in live) == PARTITIONS
                          and all(assigned(p) for p in live), 60)
        steps.layout.append(f"{len(live)} matchers: {[assigned(p) for p in live]}")
        time.sleep(1.0)
    victim = processes[1]
    steps.sent_at_kill, steps.killed_ms = stream.sent, wire.now_ms()
    assert victim.kill() == -9
    steps.survivors = [processes[0], processes[2]]
    assert wait_until(lambda: sum(assigned(p) for p in steps.survivors) == PARTITIONS, 60)
    steps.layout.append(f"after SIGKILL of one: {[assigned(p) for p in steps.survivors]}")
    return steps


def collect(reader, pairs, survivors, timeout_s: float = 120):
    """Every verdict of ``pairs``, and the survivors' pending halves once they are all decided."""
    everyone = {p.pair_id for p in pairs}
    reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=timeout_s)
    time.sleep(1.5)  # the gauges are refreshed every 0.5 s
    got = reader.poll(0.5)
    return got, {p.pid: metric_value(p.get("/metrics")[1], "digitmatch_pending_halves") for p in survivors}


def test_scale_out_then_kill_loses_no_pair_and_leaks_no_pending_half(broker, shipped_model, start_matcher, figures,
                                                                      clients):
    topics = Topics.create(broker.connection, "rebalance", partitions=PARTITIONS)
    flags = serve_flags(topics, shipped_model, "rebalance", join_ttl_s=TTL_S, max_batch_size=32)
    pairs = make_pairs(MAX_PAIRS, "rebalance", seed=21)
    settled = threading.Event()
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    with Sampler(processes) as sampler:
        a = start_matcher(broker.bootstrap, **flags)
        processes.append(a)
        stream = clients.track(PairStream(sender, pairs, [(0, RATE)], until=settled, tail=TAIL).start())
        stream.wait_for_sent(40)
        steps = scale_out_then_kill(broker, start_matcher, flags, processes, stream)
        settled.set()
        pairs = stream.wait()
        got, pending_after = collect(reader, pairs, steps.survivors)
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
        partitions_per_matcher=steps.layout,
        killed_when_pairs_sent=steps.sent_at_kill,
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
    assert all(p.returncode is None for p in steps.survivors)
    assert not got.dead_letters


def test_scale_out_then_kill_at_half_the_measured_saturation(broker, shipped_model, start_matcher, figures, clients):
    """The same steps at load: one matcher's saturation is measured first (a backlog drained, on
    this broker, in this run), then the stream runs at half of it (the matcher's default batch
    size) while the group grows to three and one is SIGKILLed."""
    topics = Topics.create(broker.connection, "rebalance-load", partitions=PARTITIONS)
    flags = serve_flags(topics, shipped_model, "rebalance-load", join_ttl_s=TTL_S)
    settled = threading.Event()
    sender = clients.track(FastSender(broker.connection, topics.input))
    reader = clients.track(Reader(broker.connection, topics))
    processes: list = []
    with Sampler(processes) as sampler:
        processes.append(start_matcher(broker.bootstrap, **flags))
        warmup = cycled_pairs(200, "rebalance-warm", seed=22)
        backlog = cycled_pairs(SATURATION_BACKLOG, "rebalance-sat", seed=23)
        saturation = measure_saturation(sender, reader, processes, warmup, backlog)
        rate = round(LOAD_SHARE * saturation["saturation_pairs_per_s"])
        stream = clients.track(PairStream(sender, cycled_pairs(int(rate * LOAD_MAX_S), "rebalance-load", seed=24),
                                          [(0, rate)], until=settled, tail=int(rate * LOAD_TAIL_S),
                                          flush=False).start())
        started_ms = wire.now_ms()
        stream.wait_for_sent(int(rate * 2))
        steps = scale_out_then_kill(broker, start_matcher, flags, processes, stream)
        settled.set()
        sent = stream.wait()
        pairs = warmup + backlog + sent
        got, pending_after = collect(reader, pairs, steps.survivors, timeout_s=180)
    result = tally(pairs, got.verdicts)
    streamed = {p.pair_id for p in sent}
    whole = recovery(got.verdicts, started_ms, pairs=streamed)
    after_kill = recovery(got.verdicts, steps.killed_ms, pairs=streamed)
    logs = "".join(p.log_tail(5_000_000) for p in processes)
    figures(
        "rebalance_load",
        title="Scale out from one matcher to three at half one matcher's measured saturation, then SIGKILL one",
        injected=f"one matcher's saturation measured first on the same broker (a backlog of {SATURATION_BACKLOG:,} "
                 f"pairs written while it was frozen, timed from SIGCONT to the last verdict); then a stream at "
                 f"{LOAD_SHARE:.0%} of it over {PARTITIONS} partitions (the open-loop load generator, the broker and "
                 f"the matchers share the machine's {os.cpu_count()} cores); a second and a third matcher join, "
                 f"then the second is SIGKILLed; the stream goes on {LOAD_TAIL_S:g} s after its partitions moved",
        **saturation,
        rate_pairs_per_s=rate,
        share_of_saturation=round(rate / saturation["saturation_pairs_per_s"], 2),
        partitions_per_matcher=steps.layout,
        killed_when_pairs_sent=steps.sent_at_kill,
        longest_verdict_gap_s=whole["longest_verdict_gap_s"],
        latency_max_ms=whole["latency_max_after_ms"],
        seconds_from_kill_until_latency_normal=after_kill["seconds_until_latency_normal"],
        matcher_crashes_injected=1,
        unexpected_exits=sum(p.returncode not in (None, -9) for p in processes),
        partition_assignments_logged=len(re.findall(r"partitions assigned:", logs)),
        pending_halves_dropped_on_revocation=sum(
            int(n) for n in re.findall(r"dropped (\d+) pending halves of revoked partitions", logs)),
        pending_halves_at_end=sum(v or 0 for v in pending_after.values()),
        peak_pending_halves=sampler.peaks.pending(),
        peak_rss_mib=sampler.peaks.rss_mib(),
        **result.as_figures(),
    )
    assert not sender.failed, sender.failed[:3]
    assert saturation["backlog_verdicts"] == SATURATION_BACKLOG
    assert result.lost == 0, logs[-3000:]
    assert result.wrong_halves == 0
    assert result.unpaired == 0, "a half of a revoked partition lost its partner"
    assert result.re_emitted_identical == result.pairs_decided_twice_or_more
    assert all(v == 0 for v in pending_after.values()), f"pending halves leaked: {pending_after}"
    assert all(p.returncode is None for p in steps.survivors)
    assert not got.dead_letters
