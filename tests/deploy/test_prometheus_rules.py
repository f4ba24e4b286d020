"""deploy/prometheus: promtool accepts the config and the rules, the rule unit tests pass, and
every alert is complete and speaks the metric contract that the matcher really exports."""

from __future__ import annotations

import re
import subprocess

import pytest

from deploy_files import (
    ALERT_RULES,
    ALERT_TESTS,
    MATCHER_JOB,
    PROMETHEUS_CONFIG,
    contract_metrics,
    dashboards,
    load_yaml,
    panels,
    require_binary,
)
from promql import base_metric, grouping_labels, label_matchers, selectors

SEVERITIES = {"critical", "warning", "info"}
TARGET_LABELS = {"job", "instance", "service"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) as the matcher's own registry declares them."""
    from digitmatch.consumer.metrics import MatcherMetrics

    found = {}
    for family in MatcherMetrics().registry.collect():
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, labels)
    # Label-less families and those without samples yet still declare their label names.
    registry = MatcherMetrics().registry
    for collector in list(registry._collector_to_names):
        names = getattr(collector, "_labelnames", ())
        for name in registry._collector_to_names[collector]:
            if name in found:
                found[name] = (found[name][0], found[name][1] | set(names))
    return found


def all_expressions() -> list[tuple[str, str]]:
    exprs = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for file, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                exprs.append((f"{file} / {panel['title']} / {target['refId']}", target["expr"]))
    return exprs


def test_config_is_valid():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_rules_are_valid():
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_finds_matchers_by_dns():
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == MATCHER_JOB]
    assert "static_configs" not in job, "replicas come and go with --scale: discover them"
    assert job["dns_sd_configs"][0]["names"] == ["matcher"]
    assert config["rule_files"] == ["alerts.yml"]


def test_every_alert_is_complete():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert re.fullmatch(r"Digitmatch[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{rule['alert']}: needs a `for:` duration"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]


def test_the_alerts_a_person_wants_exist():
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert 'up{job="digitmatch-matcher"} == 0' in exprs["DigitmatchMatcherDown"]
    assert "digitmatch_verdicts_total" in exprs["DigitmatchNoVerdicts"]
    assert "histogram_quantile(0.99, sum by (le)" in exprs["DigitmatchEndToEndLatencyHigh"]
    assert "digitmatch_dead_letters_total" in exprs["DigitmatchDeadLetters"]
    assert "digitmatch_pending_halves / digitmatch_pending_halves_limit) > 0.8" in (
        exprs["DigitmatchPendingHalvesNearLimit"]
    )
    assert "digitmatch_consumer_lag" in exprs["DigitmatchConsumerLagGrowing"]
    assert 'digitmatch_model_loads_total{result="error"}' in exprs["DigitmatchModelLoadFailed"]


def test_contract_is_what_the_matcher_exports():
    """docs/architecture.md and consumer/metrics.py name the same metrics with the same types."""
    exported = exported_metrics()
    contract = contract_metrics()
    assert set(contract) == set(exported)
    for name, kind in contract.items():
        assert exported[name][0] == kind, name


def test_every_contract_metric_is_on_a_dashboard():
    used = {base_metric(name) for _, expr in all_expressions() for name, _ in selectors(expr)}
    missing = set(contract_metrics()) - used
    assert not missing, f"not shown on any dashboard: {sorted(missing)}"


@pytest.mark.parametrize("where, expr", [pytest.param(w, e, id=w) for w, e in all_expressions()])
def test_expressions_use_contract_metrics_and_labels(where, expr):
    exported = exported_metrics()
    names_in_expr = set()
    labels_in_expr = set(TARGET_LABELS)
    for name, selector in selectors(expr):
        if name == "up":
            assert f'job="{MATCHER_JOB}"' in selector or selector == "up", f"{where}: up without the matcher job"
            names_in_expr.add(name)
            continue
        base = base_metric(name)
        if name in exported:
            kind, labels = exported[name]
        else:
            assert base in exported and exported[base][0] == "histogram", f"{where}: unknown metric {name}"
            kind, labels = "histogram", exported[base][1] | ({"le"} if name.endswith("_bucket") else set())
        if kind == "histogram":
            assert name != base, f"{where}: use {name}_bucket/_sum/_count"
        if kind == "counter":
            assert re.search(rf"(rate|increase)\(\s*{re.escape(selector)}\s*\[", expr), (
                f"{where}: counter {name} outside rate()/increase()"
            )
        for label, _op, _value in label_matchers(selector):
            assert label in labels | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
        names_in_expr.add(name)
        labels_in_expr |= labels
    assert names_in_expr, f"{where}: no metric"
    unknown = grouping_labels(expr) - labels_in_expr
    assert not unknown, f"{where}: grouping by labels no metric has: {unknown}"
