"""Overload: a burst of ten times the input rate into a model slower than the burst, and halves
whose partner never comes while the pending-halves bound is reached. Memory must stay bounded
(partitions paused, the backlog left in Kafka), nothing may be dropped, and lone halves must get
``unpaired`` verdicts."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from flow import PairStream, latency_percentiles, serve_flags, tally
from matcher_harness import Topics, make_pairs, metric_value
from probe import Sampler, proc_memory_kib

from digitmatch import wire

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

BATCH = 16
QUEUED = 2
POLL = 200  # --max-poll-records: with the queue full, at most one poll's pairs wait in memory


def model_capacity(model_dir, batch: int = BATCH) -> float:
    """Pairs per second the model scores here, measured on this machine (so the burst exceeds it)."""
    from digitmatch.model.serving import ServingModel

    model = ServingModel.load(model_dir)
    mfcc, images = np.zeros((batch, 40, 13), np.float32), np.zeros((batch, 28, 28), np.uint8)
    model.predict_padded(mfcc, images)
    started = time.monotonic()
    for _ in range(3):
        model.predict_padded(mfcc, images)
    return 3 * batch / (time.monotonic() - started)


def test_burst_into_a_slow_model_pauses_and_drops_nothing(broker, slow_model, start_matcher, figures, clients):
    capacity = model_capacity(slow_model)
    base = max(2.0, 0.3 * capacity)  # the burst (10x) is three times what the model can score
    phases = [(int(4 * base), base), (int(6 * 10 * base), 10 * base), (int(6 * base), base)]
    topics = Topics.create(broker.connection, "burst")
    flags = serve_flags(topics, slow_model, "burst", max_batch_size=BATCH, max_queued_batches=QUEUED,
                        max_poll_records=POLL, max_delay_ms=20)
    pairs = make_pairs(sum(n for n, _ in phases), "burst", seed=51)
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    with Sampler(processes, interval_s=0.1) as sampler:
        matcher = start_matcher(broker.bootstrap, **flags)
        processes.append(matcher)
        rss_before = proc_memory_kib(matcher.pid).get("VmRSS", 0)
        stream = PairStream(sender, pairs, phases, lag=4).start()
        stream.wait()
        everyone = {p.pair_id for p in pairs}
        got = reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=240)
        text = matcher.get("/metrics")[1]
    peaks = sampler.peaks
    result = tally(pairs, got.verdicts)
    latency = {
        name: latency_percentiles([got.verdicts[p.pair_id][0] for p in pairs
                                   if stream.phase_of[p.pair_id] == phase and p.pair_id in got.verdicts])
        for phase, name in enumerate(("before the burst", "burst", "after the burst"))
    }
    figures(
        "overload_burst",
        title="Burst of 10x the input rate into a model slower than the burst",
        injected=f"a real SavedModel made slow on purpose (256 chained 1024x1024 matrix products per pair; "
                 f"measured {capacity:.0f} pairs/s at batch {BATCH} here); input at {base:.0f} pairs/s, "
                 f"then a burst at {10 * base:.0f} pairs/s for 6 s, then {base:.0f} pairs/s again; "
                 f"--max-batch-size {BATCH} --max-queued-batches {QUEUED} --max-poll-records {POLL}",
        model_capacity_pairs_per_s=round(capacity, 1),
        input_rates_pairs_per_s=[round(r, 1) for _, r in phases],
        end_to_end_latency_ms=latency,
        peak_consumer_lag_records=peaks.peak("consumer_lag_total"),
        peak_partitions_paused=peaks.paused(),
        peak_inference_queue_batches=peaks.peak("digitmatch_inference_queue_batches"),
        inference_queue_bound_batches=QUEUED + math.ceil(POLL / 2 / BATCH) + 1,
        peak_pending_halves=peaks.pending(),
        rss_mib_when_ready=round(rss_before / 1024, 1),
        peak_rss_mib=peaks.rss_mib(),
        kafka_errors=sum(metric_value(text, "digitmatch_kafka_errors_total", {"stage": s}) for s in
                         ("consume", "produce", "commit")),
        **result.as_figures(),
    )
    assert result.lost == 0 and result.unpaired == 0 and result.wrong_halves == 0
    assert result.re_emitted == 0
    # partitions were paused, and what waited in memory stayed within the configured bounds:
    # the queue, plus the batches cut from the one poll that filled it, plus the open batch
    assert peaks.paused() > 0
    assert peaks.peak("digitmatch_inference_queue_batches") <= QUEUED + math.ceil(POLL / 2 / BATCH) + 1
    assert peaks.pending() <= POLL
    assert matcher.returncode is None


LONE = 2000
GOOD = 100
BOUND = 300
TTL_S = 4.0


def test_partners_that_never_arrive_get_unpaired_verdicts_within_the_bound(broker, shipped_model, start_matcher,
                                                                           figures, clients):
    topics = Topics.create(broker.connection, "lonely")
    flags = serve_flags(topics, shipped_model, "lonely", max_pending_halves=BOUND, join_ttl_s=TTL_S)
    lone = make_pairs(LONE, "lone", seed=61)
    good = make_pairs(GOOD, "good", seed=62)
    records, per_good = [], LONE // GOOD
    for i, pair in enumerate(lone):  # half of them send only the spoken half, half only the written one
        records.append(pair.spoken() if i % 2 == 0 else pair.written())
        if i % per_good == per_good - 1:
            g = good[i // per_good]
            records += [g.spoken(), g.written()]
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    with Sampler(processes, interval_s=0.1) as sampler:
        matcher = start_matcher(broker.bootstrap, **flags)
        processes.append(matcher)
        sender.send_all(records)
        everyone = {p.pair_id for p in lone + good}
        got = reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=90)
        time.sleep(1.0)
        text = matcher.get("/metrics")[1]
    lone_result, good_result = tally(lone, got.verdicts), tally(good, got.verdicts)
    def early(v) -> bool:  # declared unpaired by the bound, before the TTL
        return v.timestamps.decided_ms - v.timestamps.first_seen_ms < TTL_S * 1000 - 1

    lone_early = sum(early(got.verdicts[p.pair_id][0]) for p in lone if p.pair_id in got.verdicts)
    # The bound expires the oldest pending half whatever its partition: a good pair whose second
    # half comes in a later poll, after hundreds of lone halves of other partitions, can be
    # pushed out too (docs/wire-format.md: "pushed out by the pending-halves bound").
    good_verdicts = [got.verdicts[p.pair_id][0] for p in good if p.pair_id in got.verdicts]
    good_evicted = [v for v in good_verdicts if v.outcome == "unpaired"]
    missing_right = sum(
        v.missing_half == (wire.Half.WRITTEN if i % 2 == 0 else wire.Half.SPOKEN)
        for i, v in enumerate(got.verdicts[p.pair_id][0] for p in lone)
    )
    figures(
        "partner_never_arrives",
        title="Partners that never arrive, pending-halves bound reached",
        injected=f"{LONE} halves whose partner is never sent (spoken and written alternately) with "
                 f"{GOOD} complete pairs among them, sent at once; --max-pending-halves {BOUND} "
                 f"--join-ttl-s {TTL_S:g}",
        lone_halves_sent=LONE,
        unpaired_verdicts=lone_result.unpaired,
        unpaired_before_the_ttl_by_the_bound=lone_early,
        unpaired_with_the_right_missing_half=missing_right,
        lone_without_verdict=lone_result.lost,
        good_pairs_sent=GOOD,
        good_pairs_joined=good_result.pairs_decided - good_result.unpaired,
        good_pairs_pushed_out_by_the_bound=len(good_evicted),
        good_pairs_joined_wrongly=good_result.wrong_halves - good_result.unpaired,
        peak_pending_halves=sampler.peaks.pending(),
        pending_halves_limit=BOUND,
        pending_halves_at_end=int(metric_value(text, "digitmatch_pending_halves")),
        end_to_end_histogram_count=int(metric_value(text, "digitmatch_end_to_end_seconds_count")),
        peak_rss_mib=sampler.peaks.rss_mib(),
    )
    assert lone_result.lost == 0 and lone_result.unpaired == LONE == missing_right
    assert good_result.lost == 0 and good_result.wrong_halves == good_result.unpaired == len(good_evicted)
    assert all(early(v) for v in good_evicted)
    assert len(good_evicted) < GOOD // 2
    assert lone_early > 0, "the bound was never reached"
    assert sampler.peaks.pending() <= BOUND
    assert metric_value(text, "digitmatch_pending_halves") == 0
    # the latency histogram (and its p99 alert) is about joined pairs, not lone halves that wait the TTL
    assert metric_value(text, "digitmatch_end_to_end_seconds_count") == GOOD - len(good_evicted)
