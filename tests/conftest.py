"""Fixtures shared by every test package: a real broker (the embedded Tansu, or Apache Kafka on the
local JVM), the data directory, and ``digitmatch serve`` processes that are always cleaned up.

* ``broker`` (module scope) / ``fresh_broker`` (function scope): a broker with ``pairs.in``,
  ``matches.out`` and ``pairs.dlq`` (``digitmatch.dev.broker.new_broker``); its log is kept in the
  test's tmp directory. Which broker (the ``broker_engine`` parameter, shown in the test ID):

  - tests marked ``any_broker`` (the end-to-end matcher tests, the reliability suite) run on the
    engine(s) of ``--broker {tansu,kafka,both}`` (env ``DIGITMATCH_TEST_BROKER``; default ``kafka``,
    the broker users run);
  - tests marked ``kafka_only`` (what only Apache Kafka can show) always run on Apache Kafka;
  - every other test on the embedded broker, which starts in a tenth of a second.
* ``kafka_cluster`` (function scope): a three-node Apache Kafka cluster
  (:class:`~digitmatch.dev.kafka_native.KafkaCluster`).
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
BROKER_ENV = "DIGITMATCH_TEST_BROKER"
BROKER_CHOICES = {"tansu": ["tansu"], "kafka": ["kafka"], "both": ["tansu", "kafka"]}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--broker", choices=sorted(BROKER_CHOICES), default=os.environ.get(BROKER_ENV, "kafka"),
                     help=f"broker of the tests marked any_broker (env {BROKER_ENV}; default kafka)")


def pytest_configure(config):
    if config.getoption("--broker") not in BROKER_CHOICES:
        raise pytest.UsageError(f"{BROKER_ENV}={config.getoption('--broker')!r}: choose from tansu, kafka, both")
    config.addinivalue_line("markers", "any_broker: runs on the broker(s) chosen by --broker")
    config.addinivalue_line("markers", "kafka_only: runs on Apache Kafka whatever --broker says")


def pytest_generate_tests(metafunc):
    if "broker_engine" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("kafka_only"):
        engines = ["kafka"]
    elif metafunc.definition.get_closest_marker("any_broker"):
        engines = BROKER_CHOICES[metafunc.config.getoption("--broker")]
    else:
        engines = ["tansu"]
    metafunc.parametrize("broker_engine", engines, indirect=True, scope="module")


@pytest.fixture(scope="module")
def broker_engine(request) -> str:
    """``tansu`` or ``kafka`` (see the module's docstring)."""
    return getattr(request, "param", "tansu")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data: ``DIGITMATCH_DATA`` or ``../shared/data`` beside the repository."""
    from digitmatch.settings import DEFAULT_DATA_DIR

    env = os.environ.get("DIGITMATCH_DATA")
    return (Path(env) if env else REPO_ROOT / DEFAULT_DATA_DIR).resolve()


def _broker(engine: str, log_dir: Path, **kwargs):
    from digitmatch.dev.broker import new_broker

    return new_broker(engine, log_path=log_dir / f"{engine}.log", **kwargs)


@pytest.fixture(scope="module")
def broker(broker_engine, tmp_path_factory):
    """One broker for the whole test module (topics: 4 partitions, DLQ 1)."""
    with _broker(broker_engine, tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def fresh_broker(broker_engine, tmp_path):
    """A broker of this test's own (for tests that restart or break it)."""
    with _broker(broker_engine, tmp_path) as running:
        yield running


@pytest.fixture
def kafka_cluster(tmp_path):
    """Three Apache Kafka nodes (replication factor 3, min.insync.replicas 2) of this test's own."""
    with _broker("kafka", tmp_path, nodes=3) as running:
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
