"""A real Prometheus server (the Debian binary) for the tests: deploy/prometheus/prometheus.yml
with the matcher job pointed at given targets instead of Docker's DNS, faster intervals, and
deploy/prometheus/alerts.yml loaded as is."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from deploy_files import ALERT_RULES, MATCHER_JOB, PROMETHEUS_CONFIG, load_yaml


class PrometheusError(RuntimeError):
    pass


def test_config(targets: list[str], self_address: str, interval: str = "1s") -> dict:
    """The compose config with the matcher job's DNS discovery replaced by ``targets``."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str(ALERT_RULES)]
    for job in config["scrape_configs"]:
        if job["job_name"] == MATCHER_JOB:
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": targets}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [self_address]}]
    return config


class PrometheusServer:
    def __init__(self, binary: str, workdir: Path, port: int, targets: list[str]):
        self.binary = binary
        self.workdir = Path(workdir)
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(test_config(targets, self.address)))
        self.log_path = self.workdir / "prometheus.log"
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> "PrometheusServer":
        log = open(self.log_path, "wb")
        self._process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout_s}s: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        data = self.api("query", query=expr, time=at)
        assert data["resultType"] == "vector", data["resultType"]
        return data["result"]

    def wait_for(self, expr: str, timeout_s: float, predicate=lambda result: bool(result)) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr} still {result} after {timeout_s}s")
            time.sleep(0.5)
