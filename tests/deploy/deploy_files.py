"""Paths and loaders shared by the deploy/ checks (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "deploy" / "docker-compose.gpu.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
ARCHITECTURE = REPO / "docs" / "architecture.md"

MATCHER_JOB = "digitmatch-matcher"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def contract_metrics() -> dict[str, str]:
    """Metric name -> type from the table in docs/architecture.md (the contract)."""
    rows = re.findall(r"^\| `(digitmatch_[a-z_]+)` \| ([a-z]+)", ARCHITECTURE.read_text(), re.MULTILINE)
    return dict(rows)


def require_binary(name: str) -> str:
    """The path of a tool the checks need. `make test` installs them (.ci/system-deps); a
    developer machine without them skips these checks with the reason."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (run `make system-deps`)")
    return path
