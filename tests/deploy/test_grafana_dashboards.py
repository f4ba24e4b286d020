"""deploy/grafana: provisioning points at the compose mounts, dashboards are well formed (unique
ids, non-overlapping grid, units, the provisioned datasource) and cover the main questions."""

from __future__ import annotations

import itertools

import pytest

from deploy_files import COMPOSE_FILE, DASHBOARD_DIR, GRAFANA_DIR, dashboards, load_yaml, panels
from promql import substitute

UNITS = {"s", "ops", "short", "percentunit"}
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap", "table"}


def datasource() -> dict:
    (ds,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    return ds


def compose_grafana() -> dict:
    return load_yaml(COMPOSE_FILE)["services"]["grafana"]


BOARDS = dashboards()


def test_there_are_dashboards():
    assert set(BOARDS) == {"digitmatch-overview.json", "digitmatch-internals.json"}
    uids = [board["uid"] for board in BOARDS.values()]
    assert len(set(uids)) == len(uids)


def test_datasource_provisioning():
    ds = datasource()
    assert ds["type"] == "prometheus" and ds["isDefault"] is True and ds["uid"]
    # The URL comes from the grafana service's environment, which defaults to the compose service.
    assert ds["url"] == "${PROMETHEUS_URL}"
    assert compose_grafana()["environment"]["PROMETHEUS_URL"] == "${PROMETHEUS_URL:-http://prometheus:9090}"


def test_dashboard_provider_reads_the_mounted_directory():
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "digitmatch.yml")["providers"]
    assert provider["type"] == "file"
    mounts = dict(v.split(":")[:2] for v in compose_grafana()["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert DASHBOARD_DIR == GRAFANA_DIR / "dashboards"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_structure(name):
    board = BOARDS[name]
    assert board["title"].startswith("digitmatch") and board["schemaVersion"] >= 36
    assert board["uid"] == name.removesuffix(".json")
    all_panels = panels(board)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert {p["type"] for p in all_panels} <= PANEL_TYPES


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_grid_layout(name):
    boxes = []
    for panel in panels(BOARDS[name]):
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos) and all(isinstance(pos[k], int) for k in "hwxy")
        assert pos["w"] >= 1 and pos["h"] >= 1 and 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert pos["w"] == 24 and pos["h"] == 1 and pos["x"] == 0
        boxes.append((panel["title"], pos))
    for (t1, a), (t2, b) in itertools.combinations(boxes, 2):
        overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                   and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
        assert not overlap, f"{t1!r} overlaps {t2!r}"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_panels_use_the_provisioned_datasource_and_units(name):
    uid = datasource()["uid"]
    for panel in panels(BOARDS[name]):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, title
        assert panel.get("description"), f"{title}: say what the panel shows"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, f"{title}: unit {unit!r}"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == unit
            assert panel["options"]["calculate"] is False, "buckets come from Prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, title
            assert target["expr"].strip(), title
            substitute(target["expr"])  # only variables Grafana defines
            if "histogram_quantile" in target["expr"]:
                assert unit in ("s", "short") and "sum by (le" in target["expr"], title


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_template_variable(name):
    (variable,) = BOARDS[name]["templating"]["list"]
    assert variable["name"] == "instance"
    assert variable["datasource"]["uid"] == datasource()["uid"]
    assert variable["includeAll"] is True and variable["allValue"] == ".*"
    assert variable["definition"] == "label_values(digitmatch_ready, instance)"
    for panel in panels(BOARDS[name]):
        for target in panel.get("targets", []):
            for selector in target["expr"].split("digitmatch_")[1:]:
                name_and_labels = selector.split("[")[0].split(")")[0]
                assert 'instance=~"$instance"' in name_and_labels, (panel["title"], target["expr"])


def test_the_questions_are_answered():
    """Throughput in/out, outcomes, latency p50/p95/p99 per stage, batching, back-pressure, DLQ,
    lag, model version and live accuracy each have a panel."""
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for board in BOARDS.values() for p in panels(board) if p["type"] != "row"
    }
    def shown(metric: str, *fragments: str) -> bool:
        return any(metric in e and all(f in e for f in fragments) for e in exprs.values())

    for metric in ("end_to_end_seconds", "join_wait_seconds", "batch_queue_wait_seconds", "inference_seconds"):
        for q in ("0.5", "0.95", "0.99"):
            assert shown(f"digitmatch_{metric}_bucket", f"histogram_quantile({q}, sum by (le) (rate("), (metric, q)
    assert shown("digitmatch_messages_consumed_total", "sum by (half)")
    assert shown("digitmatch_verdicts_total", "sum by (outcome)")
    assert shown("digitmatch_batch_flushes_total", "sum by (reason)")
    assert shown("digitmatch_dead_letters_total", "sum by (reason)")
    assert shown("digitmatch_consumer_lag", "sum by (partition)")
    assert shown("digitmatch_model_info", "version")
    assert shown("digitmatch_verdicts_checked_total", 'correct="true"')
    assert shown("digitmatch_pending_halves", "digitmatch_pending_halves_limit")
    assert shown("digitmatch_batch_size_bucket", "histogram_quantile(0.99")
