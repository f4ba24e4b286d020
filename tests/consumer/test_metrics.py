"""The metric names, types, labels and buckets are a contract (docs/architecture.md)."""

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from digitmatch.consumer.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS, MatcherMetrics

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def documented():
    """name -> (type, labels) from the metrics table of docs/architecture.md."""
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        m = re.match(r"\| `(digitmatch_\w+)` \| ([a-z]+)[^|]*\| ([^|]*)\|", line)
        if m:
            labels = tuple(re.findall(r"`(\w+)`", m.group(3)))
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def exposed(metrics):
    families = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if family.name.endswith("_created"):
            continue  # prometheus-client's creation timestamps
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = family
    return families


def test_every_documented_metric_is_exposed_with_its_type_and_labels():
    metrics = MatcherMetrics()
    metrics.set_model("m", 1)
    metrics.set_lag({0: 3})
    families = exposed(metrics)
    table = documented()
    assert len(table) == 28
    for name, (kind, labels) in table.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        sample_labels = {k for s in family.samples for k in s.labels if k not in ("le",)}
        assert sample_labels == set(labels), name
    assert set(families) == set(table)


def test_buckets():
    assert LATENCY_BUCKETS == (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    assert BATCH_SIZE_BUCKETS == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    metrics = MatcherMetrics()
    text = metrics.exposition().decode()
    assert 'digitmatch_inference_seconds_bucket{le="0.0025"}' in text
    assert 'digitmatch_batch_size_bucket{le="1024.0"}' in text


def test_model_info_names_one_model_at_a_time():
    metrics = MatcherMetrics()
    metrics.set_model("m", 1)
    metrics.set_model("m", 2)
    r = metrics.registry
    assert r.get_sample_value("digitmatch_model_info", {"name": "m", "version": "2"}) == 1
    assert r.get_sample_value("digitmatch_model_info", {"name": "m", "version": "1"}) is None


def test_registries_are_independent():
    a, b = MatcherMetrics(), MatcherMetrics()
    a.verdicts.labels(outcome="match").inc()
    assert b.registry.get_sample_value("digitmatch_verdicts_total", {"outcome": "match"}) == 0


def test_observe_all_is_observe_per_value():
    """observe_all: the buckets, count and sum of one observe per value, bounds included."""
    import numpy as np
    import pytest
    from prometheus_client import CollectorRegistry, Histogram

    from digitmatch.consumer.metrics import observe_all

    values = np.random.default_rng(1).exponential(0.05, size=500).tolist() + list(LATENCY_BUCKETS) + [0.0, 1e6]
    one, batch = CollectorRegistry(), CollectorRegistry()
    by_value = Histogram("h", "d", buckets=LATENCY_BUCKETS, registry=one)
    by_batch = Histogram("h", "d", buckets=LATENCY_BUCKETS, registry=batch)
    for v in values:
        by_value.observe(v)
    observe_all(by_batch, values[:200])
    observe_all(by_batch, [])
    observe_all(by_batch, values[200:])
    for le in [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]:
        assert batch.get_sample_value("h_bucket", {"le": le}) == one.get_sample_value("h_bucket", {"le": le}), le
    assert batch.get_sample_value("h_count") == one.get_sample_value("h_count") == len(values)
    assert batch.get_sample_value("h_sum") == pytest.approx(one.get_sample_value("h_sum"), rel=1e-12)
