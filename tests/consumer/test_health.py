import json
import urllib.error
import urllib.request

import pytest

from digitmatch.consumer.health import HealthServer
from digitmatch.consumer.metrics import MatcherMetrics


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


@pytest.fixture
def served():
    conditions = {"model_loaded": True, "partitions_assigned": False}
    metrics = MatcherMetrics()
    server = HealthServer(metrics, lambda: dict(conditions), "127.0.0.1", 0).start()
    yield server, metrics, conditions
    server.stop()


def test_ephemeral_port_is_bound(served):
    server, _, _ = served
    assert server.port > 0


def test_metrics_in_prometheus_text_format(served):
    server, metrics, _ = served
    metrics.verdicts.labels(outcome="match").inc(3)
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert b'digitmatch_verdicts_total{outcome="match"} 3.0' in body


def test_healthz_and_readyz(served):
    server, _, conditions = served
    assert get(server.port, "/healthz")[0] == 200
    status, _, body = get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "model_loaded": True, "partitions_assigned": False}
    conditions["partitions_assigned"] = True
    status, _, body = get(server.port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_unknown_path(served):
    assert get(served[0].port, "/nope")[0] == 404


def test_port_in_use_is_an_error(served):
    with pytest.raises(OSError):
        HealthServer(MatcherMetrics(), dict, "127.0.0.1", served[0].port)
