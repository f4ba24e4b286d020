"""Fixtures shared by every test package: a real Kafka-protocol broker (Tansu), the data
directory, and ``digitmatch serve`` processes that are always cleaned up.

* ``broker`` (module scope) / ``fresh_broker`` (function scope): an :class:`EmbeddedBroker` with
  ``pairs.in``, ``matches.out`` and ``pairs.dlq``; its log is kept in the test's tmp directory.
* ``start_matcher(bootstrap, **flags)`` (function scope) / ``start_module_matcher`` (module scope):
  start ``python -m digitmatch.cli serve`` with ``flags`` (``max_batch_size=64`` ->
  ``--max-batch-size 64``), wait for ``/readyz`` unless ``ready=False``, and return a
  :class:`MatcherProcess` (``.stop()``, ``.kill()``, ``.metrics_url``, ``.log_tail()``). Every
  matcher still running at teardown is stopped, then its process group killed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data: ``DIGITMATCH_DATA`` or ``../shared/data`` beside the repository."""
    from digitmatch.settings import DEFAULT_DATA_DIR

    env = os.environ.get("DIGITMATCH_DATA")
    return (Path(env) if env else REPO_ROOT / DEFAULT_DATA_DIR).resolve()


def _broker(log_dir: Path, **kwargs):
    from digitmatch.dev.broker import EmbeddedBroker

    return EmbeddedBroker(log_path=log_dir / "tansu.log", **kwargs)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """One broker for the whole test module (topics: 4 partitions, DLQ 1)."""
    with _broker(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def fresh_broker(tmp_path):
    """A broker of this test's own (for tests that restart or break it)."""
    with _broker(tmp_path) as running:
        yield running


class _MatcherStarter:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started = []

    def __call__(self, bootstrap: str, *, ready: bool = True, ready_timeout_s: float = 180.0, **flags):
        from digitmatch.dev.matcher_process import MatcherProcess

        log_path = self.log_dir / f"matcher-{len(self.started)}.log"
        proc = MatcherProcess(bootstrap, log_path=log_path, **flags).start()
        self.started.append(proc)
        if ready:
            proc.wait_ready(ready_timeout_s)
        return proc

    def cleanup(self) -> None:
        for proc in self.started:
            try:
                proc.stop(timeout_s=20)
            finally:
                proc.kill()


@pytest.fixture
def start_matcher(tmp_path):
    starter = _MatcherStarter(tmp_path)
    yield starter
    starter.cleanup()


@pytest.fixture(scope="module")
def start_module_matcher(tmp_path_factory):
    starter = _MatcherStarter(tmp_path_factory.mktemp("matchers"))
    yield starter
    starter.cleanup()
