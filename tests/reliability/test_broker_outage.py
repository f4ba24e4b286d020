"""Broker outages: no broker when the matcher starts, and the broker lost mid-run: the embedded
broker restarted without its data (it keeps it in memory: every record, offset and producer ID is
lost); Apache Kafka killed (SIGKILL) for longer than the session timeout and started again on its
log, as a real broker comes back.

(Apache Kafka wiped and formatted again behind the same address, a new cluster ID, is not a case
the matcher recovers from in place: its librdkafka clients warn that the broker "reports different
ClusterId" and, observed here, fetch nothing more from the new topics. The matcher has to be
restarted then.)"""

from __future__ import annotations

import re
import time

import pytest
from flow import serve_flags, tally
from matcher_harness import Reader, Sender, Topics, make_pairs, metric_value, readyz
from probe import Sampler

from digitmatch import wire
from digitmatch.dev.broker import EmbeddedBroker, free_port

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

KAFKA_DOWN_S = 12.0
DEFAULT_TOPICS = Topics(wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ)  # what a broker restart re-creates


def send_and_collect(broker, pairs, timeout_s: float = 90):
    sender = Sender(broker.connection, DEFAULT_TOPICS.input)
    reader = Reader(broker.connection, DEFAULT_TOPICS)
    try:
        sender.send_all([p.spoken() for p in pairs] + [p.written() for p in pairs])
        wanted = {p.pair_id for p in pairs}
        return reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=timeout_s)
    finally:
        sender.close()
        reader.close()


def test_no_broker_at_start_waits_with_backoff_then_serves(shipped_model, start_matcher, tmp_path, figures):
    port = free_port()
    flags = serve_flags(DEFAULT_TOPICS, shipped_model, "late-broker")
    matcher = start_matcher(f"127.0.0.1:{port}", ready=False, **flags)
    broker = EmbeddedBroker(port, log_path=tmp_path / "late-broker.log")
    statuses = []
    started = time.monotonic()
    try:
        loaded_at, deadline = None, started + 180
        # the model loads while no broker answers; then the matcher keeps waiting for 8 s more
        while time.monotonic() < deadline and (loaded_at is None or time.monotonic() < loaded_at + 8):
            status, body = readyz(matcher.metrics_port)
            if status:
                statuses.append((status, body.get("broker_connected"), body.get("model_loaded")))
                if body.get("model_loaded") and loaded_at is None:
                    loaded_at = time.monotonic()
            assert matcher.returncode is None, matcher.log_tail()
            time.sleep(0.5)
        without_broker_s = time.monotonic() - started
        waiting_log = matcher.log_tail(200_000)
        # the matcher's own retry loop (clients that fail to start) and kafka-python's bootstrap backoff
        matcher_retries = [float(d) for d in re.findall(r"unavailable .*?; retrying in (\d+) s", waiting_log)]
        client_backoffs = [float(d) for d in re.findall(r"Bootstrap connection .* \(backoff ([\d.]+) secs\)",
                                                        waiting_log)]
        delays = matcher_retries or client_backoffs
        pid = matcher.pid
        broker.start()
        appeared = time.monotonic()
        matcher.wait_ready(90)
        ready_after_s = time.monotonic() - appeared
        pairs = make_pairs(50, "late", seed=31)
        got = send_and_collect(broker, pairs)
        result = tally(pairs, got.verdicts)
        figures(
            "broker_absent_at_start",
            title="No broker when the matcher starts",
            injected="the matcher process starts against a port where nothing listens; the broker is "
                     "started there once the matcher had loaded its model and waited 8 s more; then "
                     "50 pairs are sent",
            seconds_without_a_broker=round(without_broker_s, 1),
            readyz_while_waiting=sorted({f"{s} (broker_connected={b}, model_loaded={m})" for s, b, m in statuses}),
            matcher_retry_delays_s=matcher_retries,
            client_bootstrap_backoffs_s=client_backoffs,
            process_restarts=0 if matcher.pid == pid and matcher.returncode is None else 1,
            seconds_to_ready_after_broker_appeared=round(ready_after_s, 1),
            **result.as_figures(),
        )
        assert statuses and all(s == 503 and b is False for s, b, _ in statuses)
        assert statuses[-1][2] is True, "the model should load while the broker is away"
        assert len(delays) >= 2 and max(delays) > 2 * min(delays), f"no backoff: {delays}"
        assert matcher.returncode is None and matcher.pid == pid
        assert result.lost == 0 and result.wrong_halves == 0 and result.unpaired == 0
    finally:
        broker.stop()


def test_broker_lost_mid_run_is_reported_and_serving_resumes(fresh_broker, shipped_model, start_matcher, figures):
    broker = fresh_broker
    flags = serve_flags(DEFAULT_TOPICS, shipped_model, "lost-broker", max_batch_size=16)
    processes: list = []
    with Sampler(processes) as sampler:
        matcher = start_matcher(broker.bootstrap, **flags)
        processes.append(matcher)
        before = make_pairs(100, "before", seed=41)
        first = send_and_collect(broker, before)
        errors_before = matcher.get("/metrics")[1]
        if broker.engine == "kafka":
            broker.kill_node(1)
            time.sleep(KAFKA_DOWN_S)  # past the session timeout: the group has to be joined again
            broker.start_node(1)
        else:
            broker.restart()  # every record, offset and producer ID is gone; the topics are re-created
        restarted = time.monotonic()
        after = make_pairs(100, "after", seed=42)
        second = send_and_collect(broker, after, timeout_s=120)
        recovered_s = time.monotonic() - restarted
        text = matcher.get("/metrics")[1]
    log = matcher.log_tail(500_000)
    stages = ("consume", "produce", "commit")
    errors = {s: int(metric_value(text, "digitmatch_kafka_errors_total", {"stage": s})
                     - metric_value(errors_before, "digitmatch_kafka_errors_total", {"stage": s})) for s in stages}
    before_result, after_result = tally(before, first.verdicts), tally(after, second.verdicts)
    figures(
        "broker_lost_mid_run",
        title="Broker lost mid-run",
        injected=("100 pairs decided, then the broker is restarted on the same port: "
                  + (f"Apache Kafka SIGKILLed, down {KAFKA_DOWN_S:g} s (past the 10 s session timeout), started "
                     "again on its log" if broker.engine == "kafka" else
                     "the embedded broker without its data (in-memory storage: records, committed offsets and "
                     "producer IDs are lost, topics re-created)")
                  + "; then 100 new pairs are sent"),
        pairs_before=before_result.pairs_sent,
        verdicts_before=before_result.pairs_decided,
        pairs_after=after_result.pairs_sent,
        verdicts_after=after_result.pairs_decided,
        lost_after=after_result.lost,
        wrong_halves=before_result.wrong_halves + after_result.wrong_halves,
        unpaired_after=after_result.unpaired,
        kafka_errors_counted=errors,
        warnings_logged=len(re.findall(r" WARNING digitmatch", log)),
        seconds_from_restart_to_all_new_verdicts=round(recovered_s, 1),
        matcher_exit_code=matcher.returncode,
        peak_rss_mib=sampler.peaks.rss_mib(),
    )
    assert matcher.returncode is None, log[-3000:]
    assert before_result.lost == 0
    assert after_result.lost == 0, log[-3000:]
    assert after_result.wrong_halves == 0 and after_result.unpaired == 0
    assert sum(errors.values()) > 0, "the outage left no trace in digitmatch_kafka_errors_total"
    assert re.search(r"WARNING digitmatch\.consumer\.\w+: .*(fail|unavailable|lost)", log), \
        "the outage was not logged"
