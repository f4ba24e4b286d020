"""The ``start_matcher`` fixture / MatcherProcess: a real ``digitmatch serve`` process."""

from __future__ import annotations

import signal

import pytest

from digitmatch.model.serving import DEFAULT_MODEL_ROOT

pytestmark = pytest.mark.slow


def test_matcher_process_is_ready_serves_metrics_and_stops_gracefully(broker, start_matcher):
    matcher = start_matcher(broker.bootstrap, model=DEFAULT_MODEL_ROOT, group_id="mp-test",
                            session_timeout_ms=6000, heartbeat_interval_ms=1000)
    assert matcher.get("/healthz")[0] == 200
    status, body = matcher.get("/metrics")
    assert status == 200 and "digitmatch_ready 1.0" in body
    assert matcher.metrics_url.endswith(f":{matcher.metrics_port}/metrics")
    assert matcher.stop() == 0
    log = matcher.log_tail(20_000)
    assert "stopping gracefully" in log
    # TensorFlow's start-up lines (absl's notice, oneDNN's, the DT_BOOL fallback at the first
    # batch) are not in the log of a matcher at the default level, whatever this process's
    # TF_CPP_MIN_LOG_LEVEL (conftest sets one).
    assert "absl" not in log and "oneDNN" not in log, log


def test_kill_ends_the_process_group_at_once(broker, start_matcher):
    matcher = start_matcher(broker.bootstrap, ready=False, model=DEFAULT_MODEL_ROOT, group_id="mp-kill")
    assert matcher.kill() == -signal.SIGKILL
    assert matcher.returncode == -signal.SIGKILL
