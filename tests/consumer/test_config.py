import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from digitmatch.consumer.config import MatcherConfig, add_matcher_options
from digitmatch.kafka.exceptions import InvalidConfiguration
from digitmatch.model.serving import DEFAULT_MODEL_ROOT
from digitmatch import wire


def parse(argv, monkeypatch=None, env=None):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_matcher_options(parser)
    return MatcherConfig.from_args(parser.parse_args(argv))


def test_defaults():
    config = parse([])
    assert config.group_id == "digitmatch-matcher"
    assert (config.input_topic, config.output_topic, config.dlq_topic) == (
        wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ)
    assert config.model == DEFAULT_MODEL_ROOT
    assert (config.max_batch_size, config.max_delay_ms, config.max_queued_batches) == (256, 20, 4)
    assert (config.join_ttl_s, config.max_pending_halves, config.model_poll_s) == (30, 100_000, 10)
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 9100)


def test_flag_beats_environment_beats_default(monkeypatch):
    env = {"DIGITMATCH_MAX_BATCH_SIZE": "64", "DIGITMATCH_JOIN_TTL_S": "5", "DIGITMATCH_MODEL": "/models/dm",
           "DIGITMATCH_BOOTSTRAP_SERVERS": "kafka:9092"}
    config = parse(["--max-batch-size", "8"], monkeypatch, env)
    assert config.max_batch_size == 8
    assert config.join_ttl_s == 5
    assert config.model == Path("/models/dm")
    assert config.kafka.bootstrap_servers == "kafka:9092"


def test_the_partition_check_is_on_unless_turned_off(monkeypatch):
    assert parse([]).partition_check == "murmur2"
    assert parse(["--partition-check", "off"]).partition_check == "off"
    assert parse([], monkeypatch, {"DIGITMATCH_PARTITION_CHECK": "off"}).partition_check == "off"
    with pytest.raises(SystemExit):
        parse(["--partition-check", "crc32"])


def test_security_options_reach_the_connection(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = parse(["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512",
                    "--sasl-username", "u", "--sasl-password", "hunter2-secret", "--ssl-cafile", str(ca)])
    kwargs = config.kafka.consumer_kwargs(config.group_id)
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_plain_password"] == "hunter2-secret"
    assert "hunter2" not in repr(config)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--metrics-port", "70000"], "--metrics-port"),
        (["--join-ttl-s", "0"], "--join-ttl-s"),
        (["--session-timeout-ms", "1000", "--heartbeat-interval-ms", "1000"], "heartbeat"),
        (["--security-protocol", "SASL_PLAINTEXT"], "SASL"),
        (["--lookback-records", "-1"], "--lookback-records"),
        (["--decided-memory", "100", "--lookback-records", "200"], "lookback records must not exceed"),
    ],
)
def test_invalid_settings_are_one_line_errors(argv, message):
    with pytest.raises(InvalidConfiguration, match=message) as info:
        parse(argv)
    assert "\n" not in str(info.value)


def test_cli_reports_bad_settings_without_a_traceback(tmp_path):
    for argv, expected in (
        (["--max-delay-ms", "-1"], "--max-delay-ms"),
        (["--model", str(tmp_path / "missing"), "--metrics-port", "0"], "does not exist"),
    ):
        done = subprocess.run([sys.executable, "-m", "digitmatch.cli", "serve", *argv],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert expected in done.stderr and "Traceback" not in done.stderr
