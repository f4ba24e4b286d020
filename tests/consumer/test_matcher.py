"""End to end: the matcher against a real Kafka-protocol broker (Tansu) and a real SavedModel."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from matcher_harness import (
    Reader,
    Sender,
    Topics,
    decision,
    http_get,
    make_pairs,
    metric_value,
    own_tracebacks,
    readyz,
    until,
)

from digitmatch import wire
from digitmatch.dev.broker import EmbeddedBroker, free_port
from digitmatch.consumer.config import MatcherConfig
from digitmatch.consumer.matcher import Matcher
from digitmatch.kafka.admin import ensure_topics

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

TEST_GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def settled(matcher: Matcher) -> bool:
    """An in-process matcher has read everything there is (its lag gauges, which the poll thread
    sets: the consumer itself is the poll thread's), and decided and delivered it."""
    registry = matcher.metrics.registry
    lags = [s.value for family in registry.collect() if family.name == "digitmatch_consumer_lag"
            for s in family.samples]
    return (bool(lags) and sum(lags) == 0  # (a partition with nothing to read may have no lag yet)
            and registry.get_sample_value("digitmatch_inference_queue_batches") == 0
            and len(matcher.batcher) == 0 and not matcher.outbox.retrying)


def matcher_config(broker, topics: Topics, model, group: str, **overrides) -> MatcherConfig:
    settings = {
        "kafka": broker.connection,
                "group_id": group,
        "input_topic": topics.input,
        "output_topic": topics.output,
        "dlq_topic": topics.dlq,
        "model": model,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "commit_interval_ms": 200,
        **TEST_GROUP_TIMING,
        **overrides,
    }
    return MatcherConfig(**settings)


def start_matcher_in_process(config: MatcherConfig, timeout_s: float = 60) -> Matcher:
    matcher = Matcher(config).start()
    assert matcher.wait_ready(timeout_s), f"matcher not ready: {matcher.readiness()} {matcher.error!r}"
    return matcher


def test_own_tracebacks_leaves_out_only_the_kafka_librarys_own():
    log = ("2026-11-26 05:00:00,001 INFO digitmatch.consumer.matcher: connected\n"
           "2026-11-26 05:00:01,002 ERROR kafka.net.transport: Error receiving network data closing socket\n"
           "Traceback (most recent call last):\nConnectionResetError: [Errno 104]\n"
           "2026-11-26 05:00:02,003 ERROR digitmatch.consumer.matcher: matcher stopped with an error\n"
           "Traceback (most recent call last):\nRuntimeError: boom\n")
    (found,) = own_tracebacks(log)
    assert "RuntimeError: boom" in found and "ConnectionResetError" not in found
    assert own_tracebacks("Traceback (most recent call last):\nImportError: x\n")
    assert not own_tracebacks(log.split("2026-11-26 05:00:02")[0])


# --------------------------------------------------------------------------- one mixed stream

TTL_S = 3.0
N_PAIRS = 200


def malformed_records():
    """(expected reason, (key, value, headers)) for records the matcher must dead-letter."""
    _, good_value, good_headers = wire.encode_written("m-ok", np.zeros((28, 28), np.uint8))
    _, _, spoken_headers = wire.encode_spoken("m-nan", np.zeros((4, 13), np.float32))
    nan_value = np.full((4, 13), np.nan, np.float32).tobytes()
    return [
        ("missing_key", (None, good_value, good_headers)),
        ("bad_pair_id", (b"has space", good_value, good_headers)),
        ("missing_header", (b"m-noheaders", good_value, [])),
        ("size_mismatch", (b"m-short", good_value[:100], good_headers)),
        ("non_finite", (b"m-nan", nan_value, spoken_headers)),
        ("unknown_header", (b"m-unknown", good_value, good_headers + [("dm-colour", b"red")])),
        ("unsupported_schema", (b"m-schema", good_value, [("dm-schema", b"9")] + good_headers[1:])),
    ]


@pytest.fixture(scope="module")
def scenario(broker, serving_model):
    """One matcher, one stream with every situation: pairs in reverse order and far apart,
    duplicates, a conflicting duplicate, halves without a partner, a late partner, malformed records."""
    topics = Topics.create(broker.connection, "scenario")
    config = matcher_config(broker, topics, serving_model, "scenario", join_ttl_s=TTL_S,
                            max_batch_size=32, max_delay_ms=20)
    matcher = start_matcher_in_process(config)
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    pairs = make_pairs(N_PAIRS, "pair")
    duplicated = {p.pair_id for p in pairs[::10]}
    malformed = malformed_records()
    conflict = make_pairs(2, "conflict", seed=1)
    lonely = make_pairs(2, "lonely", seed=2)
    try:
        records = [p.spoken() for p in pairs]
        records += [p.spoken() for p in pairs if p.pair_id in duplicated]  # duplicate while pending
        records += [record for _, record in malformed]
        records += [conflict[0].spoken(), wire.encode_spoken(conflict[0].pair_id, conflict[1].mfcc)]
        records += [lonely[0].spoken(), lonely[1].written()]
        records += [p.written() for p in reversed(pairs)]  # first pair's partner comes last
        records += [conflict[0].written()]
        sender.send_all(records)
        everyone = {p.pair_id for p in pairs} | {conflict[0].pair_id, lonely[0].pair_id, lonely[1].pair_id}
        reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=60)
        # after the decision: identical duplicates (idempotent) and the late partner of an unpaired half
        sender.send_all([p.written() for p in pairs if p.pair_id in duplicated] + [lonely[0].written()])
        reader.wait_for(lambda c: len(c.dead_letters) >= len(malformed) + 2, timeout_s=30)
        assert until(lambda: settled(matcher))  # everything read is decided and delivered
        collected = reader.poll(0.5)
        status_metrics, metrics_text = http_get(matcher.metrics_port, "/metrics")
        yield {
            "matcher": matcher,
            "config": config,
            "pairs": pairs,
            "duplicated": duplicated,
            "malformed": malformed,
            "conflict": conflict,
            "lonely": lonely,
            "collected": collected,
            "metrics": metrics_text.decode(),
            "health": http_get(matcher.metrics_port, "/healthz"),
            "ready": readyz(matcher.metrics_port),
        }
    finally:
        sender.close()
        reader.close()
        matcher.stop()


def test_each_pair_gets_one_verdict_built_from_its_own_halves(scenario):
    verdicts = scenario["collected"].verdicts
    for p in scenario["pairs"]:
        assert len(verdicts[p.pair_id]) == 1, p.pair_id
        v = verdicts[p.pair_id][0]
        assert v.outcome in ("match", "no_match")
        assert (v.truth.spoken, v.truth.written) == (p.spoken_digit, p.written_digit)
        assert v.correct == ((v.outcome == "match") == (p.spoken_digit == p.written_digit))
        assert v.score == round(v.score, 6) and 0 <= v.score <= 1
        assert v.outcome == ("match" if v.score >= v.threshold else "no_match")
        assert v.missing_half is None
        assert v.timestamps.first_seen_ms <= v.timestamps.joined_ms <= v.timestamps.decided_ms
        assert v.latency_ms.inference > 0 and v.latency_ms.end_to_end >= 0
    models = {(v[0].model.name, v[0].model.version) for v in verdicts.values()}
    assert len(models) == 1


def test_duplicate_halves_are_idempotent(scenario):
    verdicts = scenario["collected"].verdicts
    keys = {key for key, _, _ in scenario["collected"].dead_letters}
    for pair_id in scenario["duplicated"]:
        assert len(verdicts[pair_id]) == 1
        assert pair_id.encode() not in keys


def test_conflicting_duplicate_is_dead_lettered_and_the_first_half_wins(scenario):
    first, other = scenario["conflict"]
    verdicts = scenario["collected"].verdicts[first.pair_id]
    assert len(verdicts) == 1
    conflicts = [(k, v, h) for k, v, h in scenario["collected"].dead_letters
                 if h[wire.H_DLQ_REASON] == b"conflicting_duplicate"]
    assert len(conflicts) == 1
    key, value, headers = conflicts[0]
    assert key == first.pair_id.encode() and value == other.mfcc.tobytes()


def test_missing_half_gives_an_unpaired_verdict_after_the_ttl(scenario):
    spoken_only, written_only = scenario["lonely"]
    verdicts = scenario["collected"].verdicts
    a, = verdicts[spoken_only.pair_id]
    b, = verdicts[written_only.pair_id]
    assert a.outcome == b.outcome == "unpaired"
    assert a.missing_half == wire.Half.WRITTEN and b.missing_half == wire.Half.SPOKEN
    assert a.score is None and a.truth.spoken == spoken_only.spoken_digit and a.truth.written is None
    for v in (a, b):
        assert v.timestamps.decided_ms - v.timestamps.first_seen_ms >= TTL_S * 1000 - 1


def test_late_partner_of_an_unpaired_half_is_already_decided(scenario):
    reasons = scenario["collected"].dead_letter_reasons()
    assert reasons[scenario["lonely"][0].pair_id.encode()] == "already_decided"


def test_malformed_records_are_dead_lettered_byte_for_byte(scenario):
    dead = scenario["collected"].dead_letters
    by_reason = {h[wire.H_DLQ_REASON].decode(): (k, v, h) for k, v, h in dead}
    for reason, (key, value, headers) in scenario["malformed"]:
        assert reason in by_reason, reason
        got_key, got_value, got_headers = by_reason[reason]
        assert (got_key, got_value) == (key, value)
        for name, raw in headers:
            assert got_headers[name] == raw
        topic, partition, offset = got_headers[wire.H_DLQ_SOURCE].decode().rsplit(":", 2)
        assert topic == scenario["config"].input_topic and partition.isdigit() and offset.isdigit()
        assert got_headers[wire.H_DLQ_DETAIL]
    # good pairs kept flowing around them
    assert len(scenario["collected"].verdicts) == N_PAIRS + 3


def test_metrics_endpoint_has_the_contract_series_with_sane_values(scenario):
    text = scenario["metrics"]
    collected = scenario["collected"]

    def value(metric, **labels):
        return metric_value(text, metric, labels)

    n_malformed = len(scenario["malformed"])
    outcomes = [v[0].outcome for v in collected.verdicts.values()]
    assert value("digitmatch_verdicts_total", outcome="match") == outcomes.count("match")
    assert value("digitmatch_verdicts_total", outcome="no_match") == outcomes.count("no_match")
    assert value("digitmatch_verdicts_total", outcome="unpaired") == 2
    assert value("digitmatch_messages_consumed_total", half="invalid") == n_malformed
    # 200 pairs + 20 duplicates pending + 20 after + conflict pair (3) + 2 lonely + 1 late
    assert value("digitmatch_messages_consumed_total", half="spoken") == N_PAIRS + 20 + 2 + 1
    assert value("digitmatch_messages_consumed_total", half="written") == N_PAIRS + 20 + 1 + 1 + 1
    assert value("digitmatch_dead_letters_total", reason="already_decided") == 1
    assert value("digitmatch_dead_letters_total", reason="conflicting_duplicate") == 1
    assert value("digitmatch_dead_letters_total", reason="missing_key") == 1
    checked = value("digitmatch_verdicts_checked_total", correct="true") + value(
        "digitmatch_verdicts_checked_total", correct="false")
    assert checked == N_PAIRS + 1  # the conflict pair too: its first spoken half carried a digit
    assert value("digitmatch_verdicts_checked_total", correct="true") == sum(
        v[0].correct is True for v in collected.verdicts.values())
    assert value("digitmatch_join_wait_seconds_count") == N_PAIRS + 1
    assert value("digitmatch_batch_size_sum") == N_PAIRS + 1
    assert value("digitmatch_batch_size_count") == value("digitmatch_inference_seconds_count") > 0
    assert value("digitmatch_batch_size_bucket", le="32.0") == value("digitmatch_batch_size_count")
    assert value("digitmatch_batch_queue_wait_seconds_count") == N_PAIRS + 1
    # joined pairs only (the pairs and the conflict pair): unpaired verdicts wait the TTL by design
    assert value("digitmatch_end_to_end_seconds_count") == N_PAIRS + 1
    flushes = sum(value("digitmatch_batch_flushes_total", reason=r) for r in ("full", "deadline", "drain"))
    # (batches cut while the model was busy may be scored in one call: consumer/inference.py)
    assert flushes >= value("digitmatch_batch_size_count")
    assert value("digitmatch_pending_halves") == 0
    assert value("digitmatch_pending_halves_limit") == scenario["config"].max_pending_halves
    assert value("digitmatch_inference_queue_batches") == 0
    assert value("digitmatch_partitions_assigned") == 4
    assert value("digitmatch_partitions_paused") == 0
    assert value("digitmatch_commits_total", result="ok") >= 1
    assert value("digitmatch_commits_total", result="error") == 0
    assert value("digitmatch_kafka_errors_total", stage="produce") == 0
    assert value("digitmatch_model_loads_total", result="ok") == 1
    version = scenario["collected"].verdicts[scenario["pairs"][0].pair_id][0].model
    assert value("digitmatch_model_info", name=version.name, version=str(version.version)) == 1
    assert value("digitmatch_ready") == 1
    lags = [value("digitmatch_consumer_lag", partition=str(p)) for p in range(4)]
    assert all(lag is not None and lag >= 0 for lag in lags)
    # every latency histogram uses the contract's buckets
    for name in ("join_wait", "batch_queue_wait", "inference", "end_to_end"):
        assert value(f"digitmatch_{name}_seconds_bucket", le="0.001") is not None
        assert value(f"digitmatch_{name}_seconds_bucket", le="60.0") is not None


def test_health_and_readiness(scenario):
    assert scenario["health"][0] == 200
    status, body = scenario["ready"]
    assert status == 200 and body["ready"] is True


# --------------------------------------------------------------------------- groups, crashes, shutdown


def test_two_matchers_share_the_partitions(broker, serving_model):
    topics = Topics.create(broker.connection, "two")
    # a tiny inference queue also exercises pausing the partitions for back-pressure
    a = Matcher(matcher_config(broker, topics, serving_model, "two", max_batch_size=4,
                               max_queued_batches=1)).start()
    b = None
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    try:
        assert a.wait_ready(60), f"matcher not ready: {a.readiness()} {a.error!r}"
        b = Matcher(matcher_config(broker, topics, serving_model, "two", max_batch_size=4,
                                   max_queued_batches=1)).start()
        deadline = time.monotonic() + 60
        while not (a.assigned and b.assigned and a.is_ready() and b.is_ready()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert a.assigned and b.assigned and not (a.assigned & b.assigned)
        assert len(a.assigned | b.assigned) == 4
        pairs = make_pairs(300, "two")
        sender.send_all([p.spoken() for p in pairs] + [p.written() for p in pairs])
        got = reader.wait_for(lambda c: len(c.verdicts) == len(pairs), timeout_s=60)
        assert len(got.verdicts) == len(pairs)
        for p in pairs:
            assert {(v.truth.spoken, v.truth.written) for v in got.verdicts[p.pair_id]} == {
                (p.spoken_digit, p.written_digit)}
        for m in (a, b):
            assert m.metrics.registry.get_sample_value("digitmatch_verdicts_total", {"outcome": "match"}) > 0
    finally:
        sender.close()
        reader.close()
        if b is not None:
            b.stop()
        a.stop()


def test_back_pressure_pauses_the_partitions_and_resumes_them(broker, serving_model):
    """Batches of one and room for one queued batch: reading outruns the model, so the matcher must
    pause its partitions (instead of blocking the poll loop) and resume them when there is room."""
    topics = Topics.create(broker.connection, "pressure", partitions=2)
    matcher = start_matcher_in_process(matcher_config(broker, topics, serving_model, "pressure",
                                                      max_batch_size=1, max_queued_batches=1))
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    pairs = make_pairs(400, "pressure")
    seen_paused = []
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.is_set():
            if matcher.consumer is not None and matcher.consumer.paused():
                seen_paused.append(len(matcher.consumer.paused()))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sender.send_all([p.spoken() for p in pairs] + [p.written() for p in pairs])
        got = reader.wait_for(lambda c: len(c.verdicts) == len(pairs), timeout_s=90)
        assert len(got.verdicts) == len(pairs)
        assert seen_paused and max(seen_paused) == 2
        assert until(lambda: not matcher.consumer.paused())
        registry = matcher.metrics.registry
        assert registry.get_sample_value("digitmatch_batch_flushes_total", {"reason": "full"}) == len(pairs)
        assert registry.get_sample_value("digitmatch_partitions_paused") == 0
    finally:
        stop_watch.set()
        watcher.join()
        sender.close()
        reader.close()
        matcher.stop()


def serve_flags(topics: Topics, model, group: str, **flags) -> dict:
    """Flags of ``digitmatch serve`` (Python spelling) for the conftest's ``start_matcher``."""
    return {"group_id": group, "model": model, "input_topic": topics.input, "output_topic": topics.output,
            "dlq_topic": topics.dlq, **TEST_GROUP_TIMING, **flags}


KILL_TTL_S = 4.0


def _restart_and_check_every_pair(broker, start_matcher, flags, reader, pairs):
    """Start a matcher after a crash; every pair gets verdicts built from its own halves, none
    ``unpaired`` (halves read again after the restart must find their partners again, and a pair
    the commit point split is joined again with its half read back), and a pair decided twice
    (before and after the crash) is decided the same way. Returns (matcher, collected)."""
    second = start_matcher(broker.bootstrap, ready=False, **flags)
    got = reader.wait_for(lambda c: len(c.verdicts) == len(pairs), timeout_s=120)
    assert len(got.verdicts) == len(pairs), second.log_tail()
    got = reader.poll(KILL_TTL_S + 2)  # anything that should not come has had its chance
    for p in pairs:
        verdicts = got.verdicts[p.pair_id]
        assert {v.outcome for v in verdicts} <= {"match", "no_match"}, p.pair_id
        assert {(v.truth.spoken, v.truth.written) for v in verdicts} == {(p.spoken_digit, p.written_digit)}
        assert len({decision(v)[:1] + decision(v)[2:] for v in verdicts}) == 1
        assert max(v.score for v in verdicts) - min(v.score for v in verdicts) <= 1e-5
    return second, got


def test_matcher_killed_mid_stream_loses_no_pair(broker, serving_model, start_matcher):
    topics = Topics.create(broker.connection, "kill")
    flags = serve_flags(topics, serving_model, "kill", join_ttl_s=KILL_TTL_S, max_batch_size=16)
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    pairs = make_pairs(400, "kill")
    try:
        first = start_matcher(broker.bootstrap, **flags)
        # every spoken half first, so at the kill many pairs hold half their state in memory only
        sender.send_all([p.spoken() for p in pairs])
        for chunk in range(0, len(pairs), 50):
            sender.send_all([p.written() for p in pairs[chunk:chunk + 50]])
            if chunk == 150:
                reader.wait_for(lambda c: len(c.verdicts) >= 100, timeout_s=60)
                assert first.kill() == -9
        before = len(reader.poll(0.5).verdicts)
        assert before < len(pairs)
        _restart_and_check_every_pair(broker, start_matcher, flags, reader, pairs)
    finally:
        sender.close()
        reader.close()


def _overlapping(pairs, gap: int = 3) -> list:
    """Each pair's written half sent ``gap`` records after its spoken half: every pair overlaps
    the next, so any commit point inside the stream splits a decided pair."""
    records = []
    for k, p in enumerate(pairs):
        records.append(p.spoken())
        if k >= gap:
            records.append(pairs[k - gap].written())
    return records + [p.written() for p in pairs[-gap:]]


def test_commit_point_moves_through_overlapping_pairs_and_a_restart_rejoins_split_pairs(
        broker, serving_model, start_matcher):
    topics = Topics.create(broker.connection, "overlap", partitions=1)
    flags = serve_flags(topics, serving_model, "overlap", join_ttl_s=KILL_TTL_S, max_batch_size=16,
                        commit_interval_ms=200, lookback_records=100)
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    check = KafkaConsumer(**broker.connection.consumer_kwargs("overlap"))
    tp = TopicPartition(topics.input, 0)
    pairs = make_pairs(300, "overlap")
    records = _overlapping(pairs)
    try:
        first = start_matcher(broker.bootstrap, **flags)
        sender.send_all(records[:400])
        reader.wait_for(lambda c: len(c.verdicts) >= 150, timeout_s=60)
        deadline = time.monotonic() + 30
        while (check.committed(tp) or 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        committed = check.committed(tp)
        # without the read-back the commit point could not move at all in this stream
        assert committed >= 300
        assert first.kill() == -9
        sender.send_all(records[400:])
        second, got = _restart_and_check_every_pair(broker, start_matcher, flags, reader, pairs)
        assert not got.dead_letters
        # only pairs with a half at or past the commit point were decided again
        again = {pid for pid, v in got.verdicts.items() if len(v) > 1}
        assert len(again) <= (len(records) - committed) // 2 + 3
        log = second.log_tail(20_000)
        assert "read back" in log and not own_tracebacks(log)
    finally:
        check.close()
        sender.close()
        reader.close()


def test_sigterm_commits_so_a_restart_reprocesses_nothing_finished(broker, serving_model, start_matcher):
    topics = Topics.create(broker.connection, "term", partitions=2)
    flags = serve_flags(topics, serving_model, "term", join_ttl_s=300,
                        commit_interval_ms=60000)  # only the shutdown commits
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    pairs = make_pairs(60, "term")
    held = make_pairs(1, "held", seed=5)[0]
    restarted = None
    try:
        process = start_matcher(broker.bootstrap, **flags)
        sender.send_all([p.spoken() for p in pairs] + [p.written() for p in pairs])
        reader.wait_for(lambda c: len(c.verdicts) == len(pairs), timeout_s=60)
        sender.send_all([held.spoken()])  # the last record of its partition; waits for a partner

        def pending():
            return metric_value(process.get("/metrics")[1], "digitmatch_pending_halves")

        deadline = time.monotonic() + 30
        while pending() != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pending() == 1
        assert process.stop() == 0, process.log_tail()
        log = process.log_tail(20_000)
        assert "shutting down" in log and "matcher stopped" in log and not own_tracebacks(log)

        check = KafkaConsumer(**broker.connection.consumer_kwargs("term"))
        committed = {p: check.committed(TopicPartition(topics.input, p)) for p in range(2)}
        check.close()
        assert sum(committed.values()) == 2 * len(pairs)  # everything but the held half

        restarted = start_matcher_in_process(matcher_config(broker, topics, serving_model, "term",
                                                                  join_ttl_s=300))
        assert until(lambda: restarted.is_ready() and len(restarted.join) == 1 and settled(restarted), 60)
        again = reader.poll(0.5)
        assert all(len(v) == 1 for v in again.verdicts.values()), "finished pairs were decided again"
        assert held.pair_id not in again.verdicts
        assert restarted.metrics.registry.get_sample_value("digitmatch_pending_halves") == 1
        assert restarted.metrics.registry.get_sample_value(
            "digitmatch_messages_consumed_total", {"half": "spoken"}) == 1  # only the held half was read again
        sender.send_all([held.written()])
        got = reader.wait_for(lambda c: held.pair_id in c.verdicts, timeout_s=30)
        assert got.verdicts[held.pair_id][0].truth.spoken == held.spoken_digit
    finally:
        sender.close()
        reader.close()
        if restarted is not None:
            restarted.stop()


def test_new_model_version_is_hot_swapped_between_batches(broker, tiny_model_dir, publish_version, tmp_path):
    topics = Topics.create(broker.connection, "swap", partitions=1)
    root = tmp_path / "models"
    root.mkdir()
    publish_version(tiny_model_dir, root, 1)
    matcher = start_matcher_in_process(matcher_config(broker, topics, root, "swap", model_poll_s=0.2))
    sender = Sender(broker.connection, topics.input)
    reader = Reader(broker.connection, topics)
    try:
        before, after = make_pairs(20, "v1"), make_pairs(20, "v2", seed=3)
        sender.send_all([p.spoken() for p in before] + [p.written() for p in before])
        reader.wait_for(lambda c: len(c.verdicts) == 20, timeout_s=30)
        broken = publish_version(tiny_model_dir, root, 3)
        (broken / "saved_model.pb").write_bytes(b"broken")
        publish_version(tiny_model_dir, root, 2)
        deadline = time.monotonic() + 30
        while matcher.models.current.version != 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        sender.send_all([p.spoken() for p in after] + [p.written() for p in after])
        got = reader.wait_for(lambda c: len(c.verdicts) == 40, timeout_s=30)
        assert {got.verdicts[p.pair_id][0].model.version for p in before} == {1}
        assert {got.verdicts[p.pair_id][0].model.version for p in after} == {2}
        registry = matcher.metrics.registry
        assert registry.get_sample_value("digitmatch_model_loads_total", {"result": "error"}) >= 1
        assert registry.get_sample_value("digitmatch_model_info", {"name": "tiny", "version": "2"}) == 1
    finally:
        sender.close()
        reader.close()
        matcher.stop()


def test_waits_for_a_broker_that_is_not_there_yet(tiny_model_dir, tmp_path):
    port = free_port()
    broker = EmbeddedBroker(port, log_path=tmp_path / "late-broker.log")
    topics = Topics("late.pairs.in", "late.matches.out", "late.pairs.dlq")
    config = MatcherConfig(
        kafka=broker.connection.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"}),
        group_id="late", input_topic=topics.input, output_topic=topics.output, dlq_topic=topics.dlq,
        model=tiny_model_dir, metrics_host="127.0.0.1", metrics_port=0, **TEST_GROUP_TIMING,
    )
    matcher = Matcher(config).start()
    try:
        assert until(lambda: matcher.readiness()["model_loaded"], 60)
        status, body = readyz(matcher.metrics_port)
        assert status == 503 and body["broker_connected"] is False and body["model_loaded"] is True
        assert http_get(matcher.metrics_port, "/healthz")[0] == 200
        assert matcher.error is None
        broker.start()
        ensure_topics(broker.connection, {topics.input: 1, topics.output: 1, topics.dlq: 1})
        assert matcher.wait_ready(60), matcher.readiness()
        pair = make_pairs(1, "late")[0]
        sender = Sender(broker.connection, topics.input)
        reader = Reader(broker.connection, topics)
        sender.send_all([pair.written(), pair.spoken()])
        got = reader.wait_for(lambda c: pair.pair_id in c.verdicts, timeout_s=30)
        assert pair.pair_id in got.verdicts
        sender.close()
        reader.close()
    finally:
        matcher.stop()
        broker.stop()
