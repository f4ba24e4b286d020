"""Fixtures of the reliability suite: real broker, real ``digitmatch serve`` processes, and the
figures each scenario records for ``docs/reliability.md``.

``figures(scenario, title=..., injected=..., **numbers)`` stores one scenario's measured numbers.
With ``DIGITMATCH_RELIABILITY_REPORT=path.json`` set, they are merged into that file at the end of
the session (``make reliability`` sets it and renders the page with ``report.py``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# matcher_harness (topics per test, sender, reader, pair specs) is shared with tests/consumer.
sys.path.insert(0, str(HERE.parent / "consumer"))

REPORT_ENV = "DIGITMATCH_RELIABILITY_REPORT"


class Figures:
    def __init__(self) -> None:
        self.scenarios: dict[str, dict] = {}
        self.broker: str | None = None  # the running test's broker engine (tansu, kafka)

    def __call__(self, scenario: str, *, title: str, injected: str, **numbers) -> None:
        self.scenarios[scenario] = {
            "title": title,
            "injected": injected,
            "figures": numbers,
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "broker": self.broker,
        }

    def write(self, path: Path) -> None:
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(self.scenarios)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2) + "\n")


@pytest.fixture(scope="session")
def figures():
    collected = Figures()
    yield collected
    target = os.environ.get(REPORT_ENV)
    if target and collected.scenarios:
        collected.write(Path(target))


@pytest.fixture(autouse=True)
def _figures_broker(request, figures):
    """Tells ``figures`` which broker the test runs on (tests/conftest.py's ``broker_engine``)."""
    if "kafka_cluster" in request.fixturenames:
        figures.broker = "kafka"
    elif "broker_engine" in request.fixturenames:
        figures.broker = request.getfixturevalue("broker_engine")
    else:
        figures.broker = None
    yield
    figures.broker = None


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The model the product ships (model/savedmodels/digitmatch)."""
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, versions

    if not versions(DEFAULT_MODEL_ROOT):
        pytest.fail(f"no SavedModel under {DEFAULT_MODEL_ROOT}")
    return DEFAULT_MODEL_ROOT


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory) -> Path:
    """A real SavedModel whose inference is deliberately expensive (see slow_model.py)."""
    from slow_model import export_slow_model

    return export_slow_model(tmp_path_factory.mktemp("slow-model"))


@pytest.fixture
def clients():
    """``clients(connection, topics) -> (Sender, Reader)`` on a test's topics; ``clients.track(x)``
    registers anything else with a ``close()`` (a PairStream). All closed at teardown, so a test
    that fails half-way leaves nothing sending."""
    from matcher_harness import Reader, Sender

    opened = []

    def open_clients(connection, topics):
        sender, reader = Sender(connection, topics.input), Reader(connection, topics)
        opened.extend([sender, reader])
        return sender, reader

    def track(thing):
        opened.append(thing)
        return thing

    open_clients.track = track
    yield open_clients
    for thing in reversed(opened):
        thing.close()
