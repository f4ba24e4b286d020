"""The dashboards and alert rules against a real Prometheus scraping a real matcher.

A Prometheus server (Debian's binary) gets deploy/prometheus/prometheus.yml with the matcher job
pointed at a running ``digitmatch serve`` instead of Docker's DNS, and loads
deploy/prometheus/alerts.yml unchanged. Pairs flow through the embedded broker from
``digitmatch produce``, together with lone halves (``unpaired`` verdicts) and malformed records
(dead letters). Then every query of every dashboard panel and every alert expression is run
through Prometheus' HTTP API: each must evaluate, and each must return data.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from deploy_files import ALERT_RULES, MATCHER_JOB, dashboards, load_yaml, panels, require_binary
from digitmatch import wire
from digitmatch.dev.broker import free_port
from prometheus_server import PrometheusServer
from promql import selectors, substitute

pytestmark = pytest.mark.slow

PAIRS = 300
RATE = 60  # pairs per second: ~5 s of load, several scrapes and batches
LONE_HALVES = 6
MALFORMED = 8
RAW_PAIRS = 4  # spoken halves sent as pcm16 recordings: the features panel has something to show
# Lone halves wait this long for a partner; generous, so a real pair's halves are never split by
# a stall on a busy machine.
JOIN_TTL_S = 3.0


def panel_queries() -> list:
    params = []
    for file, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                where = f"{file.removesuffix('.json')} / {panel['title']} / {target['refId']}"
                params.append(pytest.param(target, id=where))
    return params


def alert_rules() -> list:
    rules = [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]
    return [pytest.param(rule, id=rule["alert"]) for rule in rules]


def send_noise(bootstrap: str) -> None:
    """Lone spoken halves (their partner never comes), records that fail validation, and pairs
    whose spoken half is a raw recording (pcm16)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    rng = np.random.default_rng(7)
    now_ms = int(time.time() * 1000)
    for i in range(RAW_PAIRS):
        samples = rng.integers(-3000, 3000, size=6000, dtype=np.int16)
        for key, value, headers in (wire.encode_spoken_pcm16(f"raw-{i}", samples, 8000, 2, now_ms),
                                    wire.encode_written(f"raw-{i}", rng.integers(0, 255, (28, 28), np.uint8), 2, now_ms)):
            producer.send(wire.TOPIC_PAIRS, key=key, value=value, headers=headers)
    for i in range(LONE_HALVES):
        key, value, headers = wire.encode_spoken(f"lone-{i}", rng.normal(size=(30, 13)).astype("<f4"), 3, now_ms)
        producer.send(wire.TOPIC_PAIRS, key=key, value=value, headers=headers)
    for i in range(MALFORMED // 2):
        # No dm- headers at all, and a written half whose pixels do not fit its declared shape.
        producer.send(wire.TOPIC_PAIRS, key=f"bad-{i}".encode(), value=b"not a half", headers=[])
        key, value, headers = wire.encode_written(f"short-{i}", np.zeros((28, 28), np.uint8), 1, now_ms)
        producer.send(wire.TOPIC_PAIRS, key=key, value=value[:100], headers=headers)
    producer.flush()
    producer.close()


@pytest.fixture(scope="module")
def served_model(tmp_path_factory) -> Path:
    """The shipped model, which the image serves. Without one (a checkout before training), the
    improved architecture untrained, exported the same way: the metrics do not depend on weights."""
    from digitmatch.features import DEFAULT_PARAMS
    from digitmatch.model.architecture import build
    from digitmatch.model.export import export
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, versions

    if versions(DEFAULT_MODEL_ROOT):
        return DEFAULT_MODEL_ROOT
    root = tmp_path_factory.mktemp("model") / "untrained"
    metadata = {"name": "untrained", "architecture": "improved", "threshold": 0.5}
    export(build("improved"), root, 1, metadata, DEFAULT_PARAMS)
    return root


@pytest.fixture(scope="module")
def live(broker, start_module_matcher, served_model, data_dir, tmp_path_factory):
    """(Prometheus, evaluation time) after a load has flowed through a scraped matcher."""
    prometheus_binary = require_binary("prometheus")
    matcher = start_module_matcher(
        broker.bootstrap, model=served_model, join_ttl_s=JOIN_TTL_S, session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    workdir = tmp_path_factory.mktemp("prometheus")
    target = f"127.0.0.1:{matcher.metrics_port}"
    prometheus = PrometheusServer(prometheus_binary, workdir, free_port(), [target]).start()
    try:
        # The matcher is scraped (its counters exist at zero) before anything is sent.
        prometheus.wait_for(f'up{{job="{MATCHER_JOB}"}} == 1', timeout_s=30)
        send_noise(broker.bootstrap)
        load = subprocess.run(
            [sys.executable, "-m", "digitmatch.cli", "produce", "--bootstrap-servers", broker.bootstrap,
             "--pairs", str(PAIRS), "--rate", str(RATE), "--seed", "5", "--data", str(data_dir),
             "--model", str(served_model)],
            capture_output=True, text=True, timeout=180,
        )
        assert load.returncode == 0, load.stderr[-3000:]
        # Every pair and lone half gets a verdict, every malformed record a dead letter, and
        # Prometheus has scraped them all.
        prometheus.wait_for(
            "sum(digitmatch_verdicts_total)", timeout_s=60,
            predicate=lambda r: bool(r) and float(r[0]["value"][1]) >= PAIRS + RAW_PAIRS + LONE_HALVES,
        )
        prometheus.wait_for(
            "sum(digitmatch_dead_letters_total)", timeout_s=30,
            predicate=lambda r: bool(r) and float(r[0]["value"][1]) >= MALFORMED,
        )
        time.sleep(2)  # two more scrapes and rule evaluations
        yield prometheus, time.time()
    finally:
        prometheus.stop()


def finite(result: list[dict]) -> list[float]:
    return [v for v in (float(s["value"][1]) for s in result) if math.isfinite(v)]


def test_scraped_counts_match_what_was_sent(live):
    prometheus, at = live
    verdicts = prometheus.query("sum by (outcome) (digitmatch_verdicts_total)", at)
    by_outcome = {s["metric"]["outcome"]: float(s["value"][1]) for s in verdicts}
    assert by_outcome["match"] + by_outcome["no_match"] == PAIRS + RAW_PAIRS
    assert by_outcome["unpaired"] == LONE_HALVES
    dead = prometheus.query("sum(digitmatch_dead_letters_total)", at)
    assert float(dead[0]["value"][1]) == MALFORMED


@pytest.mark.parametrize("target", panel_queries())
def test_dashboard_query_returns_data(live, target):
    prometheus, at = live
    expr = substitute(target["expr"])
    result = prometheus.query(expr, at)
    # No exceptions: the load includes lone halves and malformed records, so every series the
    # dashboards read exists and has moved.
    assert finite(result), f"{expr} returned no finite value: {result}"
    # Every {{label}} of the legend is a label of the returned series.
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
        for series in result:
            assert label in series["metric"], f"{expr}: series without {label!r} for the legend"


def test_template_variable_lists_the_matcher(live):
    prometheus, at = live
    for board in dashboards().values():
        (variable,) = board["templating"]["list"]
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()
        result = prometheus.query(f"group by ({label}) ({metric})", at)
        assert {s["metric"][label] for s in result} == {t for t in _matcher_targets(prometheus)}


def _matcher_targets(prometheus) -> set[str]:
    return {
        t["labels"]["instance"]
        for t in prometheus.api("targets")["activeTargets"]
        if t["labels"]["job"] == MATCHER_JOB
    }


@pytest.mark.parametrize("rule", alert_rules())
def test_alert_expression_evaluates_on_live_metrics(live, rule):
    """The expression runs; every series it reads exists (an alert over a missing series could
    never fire); and Prometheus' own evaluation of the loaded rule reports no error."""
    prometheus, at = live
    prometheus.query(rule["expr"], at)  # raises on an evaluation error
    for name, selector in selectors(rule["expr"]):
        assert prometheus.query(f"count({selector})", at), f"{rule['alert']}: {selector} has no series"
    (loaded,) = [
        r for g in prometheus.api("rules")["groups"] for r in g["rules"] if r.get("name") == rule["alert"]
    ]
    assert loaded["health"] == "ok", loaded.get("lastError")
    assert loaded["query"] and loaded["lastEvaluation"] and not loaded["lastEvaluation"].startswith("0001")


def test_alert_states_on_a_healthy_matcher_with_bad_input(live):
    """Bad input sent: the dead-letter alert is on its way (pending, `for: 1m`) with the reasons;
    the matcher being up, ready and producing verdicts raises none of the availability alerts."""
    prometheus, _ = live
    alerts = prometheus.api("alerts")["alerts"]
    dead = [a for a in alerts if a["labels"]["alertname"] == "DigitmatchDeadLetters"]
    assert dead and {a["state"] for a in dead} <= {"pending", "firing"}
    assert {a["labels"]["reason"] for a in dead} <= {r.value for r in wire.Reason}
    active = {a["labels"]["alertname"] for a in alerts}
    for quiet in ("DigitmatchMatcherDown", "DigitmatchNoMatcherRunning", "DigitmatchMatcherNotReady",
                  "DigitmatchNoVerdicts", "DigitmatchPendingHalvesNearLimit", "DigitmatchKafkaErrors",
                  "DigitmatchModelLoadFailed", "DigitmatchIdleReplica"):
        assert quiet not in active, quiet
