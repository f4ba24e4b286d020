"""Small PromQL helpers for the deploy checks: the metric selectors an expression uses, and
Grafana's variables replaced by values Prometheus understands."""

from __future__ import annotations

import re

SELECTOR = re.compile(r"\b(digitmatch_[a-z_]+|up)\b\s*(\{[^}]*\})?(?!\s*\()")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# What Grafana would substitute on a dashboard showing the last hour with every matcher selected.
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "5m",
    "${instance:regex}": ".*",
    "${instance}": ".*",
    "$instance": ".*",
}


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, selector text) for every vector selector in ``expr``."""
    return [(m.group(1), m.group(0).strip()) for m in SELECTOR.finditer(expr)]


def label_matchers(selector: str) -> list[tuple[str, str, str]]:
    return MATCHER.findall(selector)


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}


def base_metric(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def substitute(expr: str) -> str:
    """``expr`` with Grafana's variables replaced; fails on any variable left over."""
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr
