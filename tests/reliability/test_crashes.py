"""Crashes: the matcher is SIGKILLed at random moments while pairs flow, and restarted. Every pair
ID sent must get a verdict built from its own halves; pairs decided again after a crash
(at-least-once) must repeat the decision. Twice: at a trickle (tens of pairs/s), and at half the
matcher's saturation measured in the test itself on the same broker (flow.measure_saturation)."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from flow import (FastSender, PairStream, committed_records, cycled_pairs, measure_saturation, recovery, serve_flags,
                  tally)
from matcher_harness import Reader, Topics, make_pairs
from probe import Sampler

from digitmatch import wire

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

MAX_PAIRS = 5000
RATE = 40.0  # pairs per second
TAIL = 200  # pairs sent after the last restart is ready: the stream outlasts the kills
KILLS = 3
TTL_S = 20.0  # longer than a restart: a half read again must find its partner, never expire


def test_repeated_sigkill_while_pairs_flow_loses_no_pair(broker, shipped_model, start_matcher, figures, clients):
    topics = Topics.create(broker.connection, "crash")
    flags = serve_flags(topics, shipped_model, "crash", join_ttl_s=TTL_S, max_batch_size=32)
    pairs = make_pairs(MAX_PAIRS, "crash", seed=11)
    last_restart_ready = threading.Event()
    rng = random.Random(2026)
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    kills = []  # (pairs sent when killed, seconds the victim had been ready, records committed)
    with Sampler(processes) as sampler:
        processes.append(start_matcher(broker.bootstrap, **flags))
        stream = clients.track(PairStream(sender, pairs, [(0, RATE)], until=last_restart_ready, tail=TAIL).start())
        for _ in range(KILLS):
            alive = rng.uniform(0.5, 4.0)
            time.sleep(alive)
            committed = committed_records(broker.connection, "crash", topics.input, 4)
            assert processes[-1].kill() == -9
            kills.append((stream.sent, round(alive, 2), committed))
            processes.append(start_matcher(broker.bootstrap, **flags))
        last_restart_ready.set()
        pairs = stream.wait()
        everyone = {p.pair_id for p in pairs}
        got = reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=180)
        got = reader.poll(3.0)  # anything re-emitted late has its chance to show
    peaks = sampler.peaks
    survivor = processes[-1]
    assert survivor.returncode is None, survivor.log_tail()
    result = tally(pairs, got.verdicts)
    figures(
        "crash_sigkill",
        title="SIGKILL the matcher while pairs flow, restart it",
        injected=f"{KILLS} SIGKILLs of the only matcher process at random moments (0.5-4 s after it "
                 f"became ready) during a stream at {RATE:g} pairs/s (each written half 20 pairs behind its "
                 f"spoken half) that goes on for {TAIL} pairs after the last restart; a new matcher process "
                 "started after each kill",
        kills_at_pairs_sent=[k[0] for k in kills],
        seconds_alive_before_kill=[k[1] for k in kills],
        records_committed_at_kills=[k[2] for k in kills],
        matcher_crashes_injected=KILLS,
        unexpected_exits=sum(p.returncode not in (None, -9) for p in processes),
        peak_pending_halves=peaks.pending(),
        peak_rss_mib=peaks.rss_mib(),
        **result.as_figures(),
    )
    assert result.lost == 0, f"{result.lost} pairs without a verdict\n{survivor.log_tail()}"
    assert result.wrong_halves == 0
    assert result.unpaired == 0, "a half read again after a crash lost its partner"
    assert result.re_emitted_identical == result.pairs_decided_twice_or_more
    assert result.pairs_decided_twice_or_more > 0, "no pair was in flight at any kill: nothing was tested"
    assert not got.dead_letters


# ---------------------------------------------------------------------- at load

LOAD_SHARE = 0.5  # of the saturation measured in the test
LOAD_KILLS = 2
LOAD_TAIL_S = 8.0  # seconds of stream after the last restart is ready
LOAD_MAX_S = 150  # pairs for at most this many seconds of stream
SATURATION_BACKLOG = 3000


def test_sigkill_at_half_the_measured_saturation_loses_no_pair(broker, shipped_model, start_matcher, figures,
                                                                clients):
    """The same kills at load: the matcher's saturation is measured first (a backlog drained, on
    this broker, in this run), then the stream runs at half of it (the matcher's default batch
    size) while the matcher is SIGKILLed and restarted."""
    topics = Topics.create(broker.connection, "crash-load")
    flags = serve_flags(topics, shipped_model, "crash-load", join_ttl_s=TTL_S)
    rng = random.Random(2027)
    sender = clients.track(FastSender(broker.connection, topics.input))
    reader = clients.track(Reader(broker.connection, topics))
    processes: list = []
    kills = []  # (pairs sent, seconds alive, records committed, kill epoch ms)
    with Sampler(processes) as sampler:
        processes.append(start_matcher(broker.bootstrap, **flags))
        warmup, backlog = cycled_pairs(200, "crash-warm", seed=12), cycled_pairs(SATURATION_BACKLOG, "crash-sat", 13)
        saturation = measure_saturation(sender, reader, processes, warmup, backlog)
        rate = round(LOAD_SHARE * saturation["saturation_pairs_per_s"])
        last_restart_ready = threading.Event()
        stream = clients.track(PairStream(sender, cycled_pairs(int(rate * LOAD_MAX_S), "crash-load", seed=14),
                                          [(0, rate)], until=last_restart_ready, tail=int(rate * LOAD_TAIL_S),
                                          flush=False).start())
        restarts_s = []
        for _ in range(LOAD_KILLS):
            alive = rng.uniform(2.0, 5.0)
            time.sleep(alive)
            committed = committed_records(broker.connection, "crash-load", topics.input, 4)
            killed_ms, killed = wire.now_ms(), time.monotonic()
            assert processes[-1].kill() == -9
            kills.append((stream.sent, round(alive, 2), committed, killed_ms))
            processes.append(start_matcher(broker.bootstrap, **flags))
            restarts_s.append(round(time.monotonic() - killed, 1))
        last_restart_ready.set()
        sent = stream.wait()
        pairs = warmup + backlog + sent
        everyone = {p.pair_id for p in pairs}
        reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=180)
        got = reader.poll(3.0)
    survivor = processes[-1]
    assert survivor.returncode is None, survivor.log_tail()
    result = tally(pairs, got.verdicts)
    streamed = {p.pair_id for p in sent}
    after_kills = [recovery(got.verdicts, k[3], pairs=streamed, until_ms=nxt)
                   for k, nxt in zip(kills, [k[3] for k in kills[1:]] + [None])]
    figures(
        "crash_sigkill_load",
        title="SIGKILL the matcher at half its measured saturation, restart it",
        injected=f"the matcher's saturation measured first on the same broker (a backlog of {SATURATION_BACKLOG:,} "
                 f"pairs written while it was frozen, timed from SIGCONT to the last verdict); then a stream at "
                 f"{LOAD_SHARE:.0%} of it (the open-loop load generator, the broker and the matcher share the "
                 f"machine's {os.cpu_count()} cores) and {LOAD_KILLS} SIGKILLs of the only matcher 2-5 s apart, a "
                 f"new matcher process started after each; the stream goes on {LOAD_TAIL_S:g} s after the last "
                 "restart is ready",
        **saturation,
        rate_pairs_per_s=rate,
        share_of_saturation=round(rate / saturation["saturation_pairs_per_s"], 2),
        kills_at_pairs_sent=[k[0] for k in kills],
        seconds_alive_before_kill=[k[1] for k in kills],
        records_committed_at_kills=[k[2] for k in kills],
        seconds_from_kill_to_ready_again=restarts_s,
        longest_verdict_gap_s=[a["longest_verdict_gap_s"] for a in after_kills],
        seconds_until_latency_normal=[a["seconds_until_latency_normal"] for a in after_kills],
        latency_p99_before_ms=after_kills[0]["latency_p99_before_ms"],
        latency_max_after_ms=max(a["latency_max_after_ms"] for a in after_kills),
        matcher_crashes_injected=LOAD_KILLS,
        unexpected_exits=sum(p.returncode not in (None, -9) for p in processes),
        peak_pending_halves=sampler.peaks.pending(),
        peak_rss_mib=sampler.peaks.rss_mib(),
        **result.as_figures(),
    )
    assert not sender.failed, sender.failed[:3]
    assert saturation["backlog_verdicts"] == SATURATION_BACKLOG
    assert result.lost == 0, f"{result.lost} pairs without a verdict\n{survivor.log_tail()}"
    assert result.wrong_halves == 0
    assert result.unpaired == 0, "a half read again after a crash lost its partner"
    assert result.re_emitted_identical == result.pairs_decided_twice_or_more
    assert result.pairs_decided_twice_or_more > 0, "no pair was in flight at any kill: nothing was tested"
    assert not got.dead_letters
