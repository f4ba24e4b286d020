"""KafkaConnection: flags and environment variables -> kafka-python keyword arguments."""

from __future__ import annotations

import argparse

import pytest

from digitmatch.kafka.configuration import KafkaConnection, add_connection_options
from digitmatch.kafka.exceptions import InvalidConfiguration


def parse(argv, monkeypatch=None, env=None):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_connection_options(parser)
    return KafkaConnection.from_args(parser.parse_args(argv))


def test_defaults_are_plaintext_localhost():
    conn = parse([])
    kwargs = conn.common_kwargs()
    assert kwargs["bootstrap_servers"] == ["localhost:9092"]
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not any(k.startswith(("sasl", "ssl")) for k in kwargs)


def test_producer_is_durable_and_overridable():
    conn = KafkaConnection(bootstrap_servers="a:1, b:2")
    kwargs = conn.producer_kwargs(linger_ms=0)
    assert kwargs["bootstrap_servers"] == ["a:1", "b:2"]
    assert kwargs["acks"] == "all" and kwargs["enable_idempotence"] is True
    assert kwargs["max_in_flight_requests_per_connection"] == 5
    assert kwargs["compression_type"] is None and kwargs["linger_ms"] == 0


def test_consumer_commits_explicitly_from_earliest():
    kwargs = KafkaConnection().consumer_kwargs("g", max_poll_records=7)
    assert kwargs["group_id"] == "g" and kwargs["enable_auto_commit"] is False
    assert kwargs["auto_offset_reset"] == "earliest" and kwargs["max_poll_records"] == 7


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_maps_to_kafka_python_names(tmp_path, mechanism):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    conn = parse(["--security-protocol", "SASL_SSL", "--sasl-mechanism", mechanism,
                  "--sasl-username", "alice", "--sasl-password", "s3cret", "--ssl-cafile", str(ca)])
    kwargs = conn.admin_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "alice" and kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_cafile"] == str(ca)
    assert "s3cret" not in repr(conn) and "s3cret" not in str(conn.model_dump())


def test_mutual_tls_files(tmp_path):
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("pem")
    conn = KafkaConnection(security_protocol="SSL", ssl_cafile=files["ca"], ssl_certfile=files["cert"],
                           ssl_keyfile=files["key"])
    kwargs = conn.consumer_kwargs()
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (str(files["cert"]), str(files["key"]))
    assert "sasl_mechanism" not in kwargs


def test_environment_variables_configure_and_flags_win(monkeypatch):
    env = {
        "DIGITMATCH_BOOTSTRAP_SERVERS": "kafka-1:9093,kafka-2:9093",
        "DIGITMATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DIGITMATCH_SASL_MECHANISM": "SCRAM-SHA-512",
        "DIGITMATCH_SASL_USERNAME": "matcher",
        "DIGITMATCH_SASL_PASSWORD": "from-env",
        "DIGITMATCH_REQUEST_TIMEOUT_MS": "12000",
    }
    conn = parse(["--client-id", "flag-wins", "--sasl-username", "flagged"], monkeypatch, env)
    kwargs = conn.producer_kwargs()
    assert kwargs["bootstrap_servers"] == ["kafka-1:9093", "kafka-2:9093"]
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512" and kwargs["sasl_plain_password"] == "from-env"
    assert kwargs["sasl_plain_username"] == "flagged" and kwargs["client_id"] == "flag-wins"
    assert kwargs["request_timeout_ms"] == 12000


def test_password_from_environment_stays_out_of_help(monkeypatch):
    monkeypatch.setenv("DIGITMATCH_SASL_PASSWORD", "hunter2")
    parser = argparse.ArgumentParser()
    add_connection_options(parser)
    assert "hunter2" not in parser.format_help()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"bootstrap_servers": "no-port"}, "host:port"),
        ({"bootstrap_servers": " , "}, "at least one"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "username and password"),
        ({"sasl_username": "u"}, "security protocol is PLAINTEXT"),
        ({"ssl_cafile": __file__}, "TLS files"),
        ({"security_protocol": "SSL", "ssl_certfile": __file__}, "both"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "does not exist"),
        ({"security_protocol": "KERBEROS"}, "security_protocol"),
    ],
)
def test_contradictory_settings_are_one_line_errors(fields, message):
    with pytest.raises(InvalidConfiguration, match=message) as caught:
        KafkaConnection.create(**fields)
    assert "\n" not in str(caught.value)
