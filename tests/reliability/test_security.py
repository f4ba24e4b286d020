"""Security checks that need no broker: no pickle on any code path, size limits before decoding,
a configurable bind address for the HTTP endpoints, SASL/TLS options reaching kafka-python, and a
non-root container."""

from __future__ import annotations

import argparse
import ast
import re
import tracemalloc
import urllib.request
from pathlib import Path

import pytest
import yaml

from digitmatch import wire
from digitmatch.consumer.config import MatcherConfig, add_matcher_options
from digitmatch.consumer.health import HealthServer
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.kafka.configuration import KafkaConnection, add_connection_options

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("digitmatch", "consumer", "producer", "model")
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def pickle_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle"):
            found.append(node.attr)
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
            if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                found.append("allow_pickle not False")
    return [f"{path.relative_to(REPO)}:{use}" for use in found]


def test_no_pickle_anywhere_in_the_source_tree():
    files = source_files()
    assert len(files) > 20
    uses = [use for path in files for use in pickle_uses(path)]
    assert uses == []


def test_the_pickle_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("import pickle\nfrom dill import loads\nimport numpy as np\nnp.load('x', allow_pickle=True)\n")
    assert len(pickle_uses_at(sample)) == 3


def pickle_uses_at(path: Path) -> list[str]:
    global REPO
    saved, REPO = REPO, path.parent
    try:
        return pickle_uses(path)
    finally:
        REPO = saved


def test_value_size_is_checked_before_the_key_headers_or_any_array():
    huge = bytes(wire.MAX_VALUE_BYTES + 1)
    with pytest.raises(wire.InvalidMessage) as caught:
        wire.decode_half(b"\xff not even a key", huge, [("dm-nonsense", None)] * 3)
    assert caught.value.reason is wire.Reason.TOO_LARGE


def test_a_declared_enormous_shape_allocates_nothing():
    _, value, headers = wire.encode_spoken("p", [[0.0] * 13])
    headers = [(n, b"1000000000000,13" if n == wire.H_SHAPE else v) for n, v in headers]
    tracemalloc.start()
    try:
        with pytest.raises(wire.InvalidMessage) as caught:
            wire.decode_half(b"p", value, headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason is wire.Reason.TOO_LARGE
    assert peak < 64 * 1024


def serve_config(argv: list[str]) -> MatcherConfig:
    parser = argparse.ArgumentParser()
    add_matcher_options(parser)
    return MatcherConfig.from_args(parser.parse_args(argv))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_metrics_bind_address_is_configurable(how, monkeypatch):
    host = "127.0.0.2"  # loopback, but not the address a default client uses
    if how == "flag":
        config = serve_config(["--metrics-host", host, "--metrics-port", "0"])
    else:
        monkeypatch.setenv("DIGITMATCH_METRICS_HOST", host)
        monkeypatch.setenv("DIGITMATCH_METRICS_PORT", "0")
        config = serve_config([])
    server = HealthServer(MatcherMetrics(), lambda: {"ok": True}, config.metrics_host, config.metrics_port).start()
    try:
        assert server.host == host
        with urllib.request.urlopen(f"http://{host}:{server.port}/healthz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    finally:
        server.stop()


def test_sasl_and_tls_options_reach_every_kafka_client(tmp_path, monkeypatch):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
    monkeypatch.setenv("DIGITMATCH_SASL_PASSWORD", "from-the-environment")
    config = serve_config(["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-256",
                           "--sasl-username", "matcher", "--ssl-cafile", str(ca), "--ssl-certfile", str(cert),
                           "--ssl-keyfile", str(key)])
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "matcher", "sasl_plain_password": "from-the-environment",
                "ssl_cafile": str(ca), "ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    clients = [
        (config.kafka.producer_kwargs(), KafkaProducer),
        (config.kafka.consumer_kwargs("g"), KafkaConsumer),
        (config.kafka.admin_kwargs(), KafkaAdminClient),
    ]
    for kwargs, client in clients:
        assert {k: kwargs.get(k) for k in expected} == expected
        unknown = set(kwargs) - set(client.DEFAULT_CONFIG)
        assert not unknown, f"{client.__name__} does not take {unknown}"
    assert "from-the-environment" not in repr(config)


def test_every_connection_option_is_documented_and_shared_by_serve_and_produce():
    from digitmatch.producer import load

    def flags(configure) -> set[str]:
        parser = argparse.ArgumentParser()
        configure(parser)
        return {s for a in parser._actions for s in a.option_strings}

    connection = flags(add_connection_options)
    assert connection <= flags(add_matcher_options) and connection <= flags(load.configure)
    docs = (REPO / "docs" / "deploy.md").read_text()
    for flag in ("--security-protocol", "--sasl-mechanism", "--sasl-username", "--sasl-password", "--ssl-cafile",
                 "--ssl-certfile", "--ssl-keyfile"):
        assert flag in connection
        variable = "DIGITMATCH_" + flag[2:].replace("-", "_").upper()
        family = re.sub(r"_(MECHANISM|USERNAME|PASSWORD|CAFILE|CERTFILE|KEYFILE)$", "_*", variable)
        assert variable in docs or family in docs, f"{variable} is not documented in docs/deploy.md"
    options = {a[2:].replace("-", "_") for a in connection if a.startswith("--") and a != "--help"}
    assert set(KafkaConnection.model_fields) == options


def test_the_container_runs_as_a_non_root_user():
    lines = [line.strip() for line in (REPO / "deploy" / "Dockerfile").read_text().splitlines()]
    users = [line.split(None, 1)[1] for line in lines if line.upper().startswith("USER ")]
    assert users, "the Dockerfile never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if service.get("image", "").startswith("digitmatch") or "build" in service:
            assert str(service.get("user", user)).split(":")[0] not in ("root", "0"), name
