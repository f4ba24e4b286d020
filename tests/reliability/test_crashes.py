"""Crashes: the matcher is SIGKILLed at random moments while pairs flow, and restarted. Every pair
ID sent must get a verdict built from its own halves; pairs decided again after a crash
(at-least-once) must repeat the decision."""

from __future__ import annotations

import random
import threading
import time

import pytest
from flow import PairStream, committed_records, serve_flags, tally
from matcher_harness import Topics, make_pairs
from probe import Sampler

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
