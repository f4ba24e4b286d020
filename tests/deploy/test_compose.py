"""docker-compose.yml: accepted by docker-compose, and consistent with the code it runs.

`docker-compose config` validates the file against the Compose schema, interpolates the
variables and merges the GPU override; its output is what these checks read. The DIGITMATCH_*
variables and flags are checked against the real argparse parsers of `digitmatch serve` and
`digitmatch produce`, by parsing them the way the container will.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from deploy_files import COMPOSE_FILE, DOCKERFILE, GPU_OVERRIDE, PROMETHEUS_CONFIG, REPO, load_yaml, require_binary
from digitmatch import wire
from digitmatch.cli import build_parser
from digitmatch.settings import ENV_PREFIX, env_name

SERVICES = {"kafka", "topics", "matcher", "producer", "prometheus", "grafana"}
DIGITMATCH_SERVICES = {"matcher": "serve", "producer": "produce"}


def compose(*args: str, files=(COMPOSE_FILE,), env: dict | None = None) -> subprocess.CompletedProcess:
    binary = require_binary("docker-compose")
    # A clean environment: the defaults in the file, not this shell's variables, are under test.
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    command = [binary, "--project-directory", str(REPO)]
    for f in files:
        command += ["-f", str(f)]
    return subprocess.run(
        command + list(args), cwd=REPO, env=base | (env or {}), capture_output=True, text=True, timeout=60
    )


def config(files=(COMPOSE_FILE,), env: dict | None = None) -> dict:
    result = compose("config", files=files, env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def resolved() -> dict:
    return config()


@pytest.fixture(scope="module")
def resolved_gpu() -> dict:
    return config(files=(COMPOSE_FILE, GPU_OVERRIDE))


def subcommand_options(command: str) -> dict[str, str]:
    """option string -> dest for every option of `digitmatch <command>` (the real parser)."""
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {opt: action.dest for action in sub._actions for opt in action.option_strings}


def test_compose_file_is_valid():
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_gpu_override_is_valid():
    result = compose("config", "--quiet", files=(COMPOSE_FILE, GPU_OVERRIDE))
    assert result.returncode == 0, result.stderr


def test_services(resolved):
    assert set(resolved["services"]) == SERVICES
    result = compose("config", "--services")
    assert set(result.stdout.split()) == SERVICES


def test_matcher_can_scale(resolved):
    """--scale matcher=N needs no fixed name and no host port; Prometheus finds replicas by DNS."""
    matcher = resolved["services"]["matcher"]
    assert "container_name" not in matcher
    assert "ports" not in matcher
    assert "hostname" not in matcher
    assert [str(p) for p in matcher["expose"]] == [matcher["environment"]["DIGITMATCH_METRICS_PORT"]]


def test_host_ports(resolved):
    published = {}
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            assert int(port["published"]) not in published, f"{name} and {published.get(port['published'])}"
            published[int(port["published"])] = name
    assert published == {3000: "grafana", 9090: "prometheus", 9094: "kafka"}


def test_host_ports_follow_variables():
    env = {"GRAFANA_PORT": "3300", "PROMETHEUS_PORT": "9190", "KAFKA_HOST_PORT": "19094"}
    services = config(env=env)["services"]
    assert services["grafana"]["ports"][0]["published"] in (3300, "3300")
    assert services["prometheus"]["ports"][0]["published"] in (9190, "9190")
    assert services["kafka"]["ports"][0]["published"] in (19094, "19094")
    # Host clients are told the published port.
    assert "EXTERNAL://localhost:19094" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


@pytest.mark.parametrize("service", sorted(DIGITMATCH_SERVICES))
def test_digitmatch_variables_are_real_options(resolved, service):
    spec = resolved["services"][service]
    command = DIGITMATCH_SERVICES[service]
    assert spec["command"][0] == command
    options = subcommand_options(command)
    known = {env_name(opt) for opt in options if opt.startswith("--")}
    used = {key for key in spec["environment"] if key.startswith(ENV_PREFIX)}
    assert used, f"{service} sets no {ENV_PREFIX}* variable"
    assert used <= known, f"{service}: not options of `digitmatch {command}`: {sorted(used - known)}"
    flags = [arg.split("=", 1)[0] for arg in spec["command"][1:] if arg.startswith("-")]
    assert set(flags) <= set(options), f"{service}: unknown flags {sorted(set(flags) - set(options))}"


@pytest.mark.parametrize("service", sorted(DIGITMATCH_SERVICES))
def test_digitmatch_variables_parse(resolved, service, monkeypatch):
    """The container's environment, fed to the real parser, gives the intended settings."""
    spec = resolved["services"][service]
    command = DIGITMATCH_SERVICES[service]
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    env = {k: str(v) for k, v in spec["environment"].items() if v is not None and k.startswith(ENV_PREFIX)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser(only=command).parse_args([command, *spec["command"][1:]])
    options = subcommand_options(command)
    by_env = {env_name(opt): dest for opt, dest in options.items() if opt.startswith("--")}
    for key, value in env.items():
        parsed = getattr(args, by_env[key])
        assert str(parsed) == value or parsed == type(parsed)(value), (key, value, parsed)


def test_security_variables_pass_through(resolved):
    """SASL/TLS settings for an existing cluster come from the shell; unset ones stay unset."""
    for service in DIGITMATCH_SERVICES:
        env = resolved["services"][service]["environment"]
        for flag in ("--security-protocol", "--sasl-mechanism", "--sasl-username", "--sasl-password",
                     "--ssl-cafile", "--ssl-certfile", "--ssl-keyfile"):
            assert env_name(flag) in env and env[env_name(flag)] is None, (service, flag)
    secret = {"DIGITMATCH_SASL_PASSWORD": "s3cret", "DIGITMATCH_SECURITY_PROTOCOL": "SASL_SSL"}
    env = config(env=secret)["services"]["matcher"]["environment"]
    assert env["DIGITMATCH_SASL_PASSWORD"] == "s3cret"
    assert env["DIGITMATCH_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_external_kafka_variable(resolved):
    env = {"KAFKA_BOOTSTRAP_SERVERS": "broker-1.example:9093,broker-2.example:9093"}
    services = config(env=env)["services"]
    for service in DIGITMATCH_SERVICES:
        assert services[service]["environment"]["DIGITMATCH_BOOTSTRAP_SERVERS"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    # By default both talk to the compose broker's internal listener.
    kafka_env = resolved["services"]["kafka"]["environment"]
    for service in DIGITMATCH_SERVICES:
        bootstrap = resolved["services"][service]["environment"]["DIGITMATCH_BOOTSTRAP_SERVERS"]
        assert f"INTERNAL://{bootstrap}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_kafka_is_single_node_kraft(resolved):
    kafka = resolved["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and re.fullmatch(r"\d+\.\d+\.\d+", tag), kafka["image"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"
    assert kafka["healthcheck"]["test"][0] == "CMD"


def test_topics_created_with_wire_names(resolved):
    topics = resolved["services"]["topics"]
    script = "\n".join(topics["command"])
    created = re.search(r"for topic in ([^;]+);", script).group(1).split()
    assert set(created) == {wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ}
    assert int(topics["environment"]["PARTITIONS"]) >= 1
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    for service in DIGITMATCH_SERVICES:
        depends = resolved["services"][service]["depends_on"]
        assert depends["topics"]["condition"] == "service_completed_successfully"
    assert config(env={"PARTITIONS": "12"})["services"]["topics"]["environment"]["PARTITIONS"] in ("12", 12)


def test_topics_script_is_valid_bash(resolved):
    topics = resolved["services"]["topics"]
    assert topics["entrypoint"] == ["/bin/bash", "-ceu"]
    script = topics["command"][0].replace("$$", "$")  # compose's escape for a literal $
    result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for variable in re.findall(r"\$(\w+)", script):
        assert variable in topics["environment"] or variable == "topic", variable


def test_matcher_defaults_match_the_code(resolved):
    """Topic names and the metrics port in the compose file agree with the matcher's own."""
    options = subcommand_options("serve")
    parser = build_parser(only="serve")
    sub = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    defaults = {a.dest: a.default for a in sub._actions}
    assert "--input-topic" in options and defaults["input_topic"] == wire.TOPIC_PAIRS
    port = int(resolved["services"]["matcher"]["environment"]["DIGITMATCH_METRICS_PORT"])
    assert port == int(defaults["metrics_port"])
    scrape = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    dns = next(job for job in scrape if job["job_name"] == "digitmatch-matcher")["dns_sd_configs"][0]
    assert dns["names"] == ["matcher"] and dns["type"] == "A" and dns["port"] == port
    assert f"EXPOSE {port}" in DOCKERFILE.read_text()


def test_images_are_pinned(resolved):
    for name, service in resolved["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest") or name in DIGITMATCH_SERVICES, (name, image)


def test_bind_mounts_exist(resolved):
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source.startswith("/"):
                assert os.path.exists(source), f"{name} mounts missing {source}"


def test_grafana_home_dashboard_is_mounted(resolved):
    grafana = resolved["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if home.startswith(target + "/"):
            assert os.path.isfile(source + home[len(target):])
            break
    else:
        pytest.fail(f"{home} is not under a mounted directory")


def test_producer_runs_without_healthcheck(resolved):
    """The image's HEALTHCHECK probes /readyz, which only the matcher serves."""
    check = resolved["services"]["producer"]["healthcheck"]
    # `disable: true`; docker-compose v1 prints it as the equivalent `test: [NONE]`.
    assert check.get("disable") is True or check.get("test") == ["NONE"], check
    assert "healthcheck" not in resolved["services"]["matcher"]


def test_gpu_override(resolved_gpu, resolved):
    matcher = resolved_gpu["services"]["matcher"]
    assert matcher["build"]["args"]["VARIANT"] == "gpu"
    assert matcher["image"] != resolved["services"]["matcher"]["image"]
    devices = matcher["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # The producer keeps the CPU image.
    assert resolved_gpu["services"]["producer"]["build"]["args"]["VARIANT"] == "cpu"
    assert resolved_gpu["services"]["producer"]["image"] == resolved["services"]["producer"]["image"]
