"""``digitmatch serve`` as a child process: what the demo, the tests and the benchmarks run.

A real process (not a thread) so the matcher is exercised exactly as deployed: its own
interpreter and TensorFlow, its flags, its signal handling and its HTTP endpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from digitmatch.dev.broker import free_port
from digitmatch.dev.child_process import spawn


class MatcherExited(RuntimeError):
    """The matcher process exited (or never became ready)."""


def _flag_args(flags: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if value is True:
            args.append(flag)
        elif value is False:
            args.append("--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


class MatcherProcess:
    """``python -m digitmatch.cli serve --bootstrap-servers B --metrics-port P **flags``.

    ``flags`` are serve's options in Python spelling (``max_batch_size=64`` ->
    ``--max-batch-size 64``). The metrics/health port is picked free unless given. Output goes to
    ``log_path`` (or is discarded). :meth:`stop` is SIGTERM (graceful drain), :meth:`kill` SIGKILL.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        metrics_port: int | None = None,
        log_path: Path | str | None = None,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        **flags: Any,
    ):
        self.bootstrap = bootstrap
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.log_level = log_level
        self.env = env
        self.flags = flags
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "digitmatch.cli", "--log-level", self.log_level, "serve",
            "--bootstrap-servers", self.bootstrap,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.metrics_port),
            *_flag_args(self.flags),
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def start(self) -> "MatcherProcess":
        # TensorFlow's C++ log level is left to the matcher's own --log-level (digitmatch.cli:
        # everything at DEBUG, none of its notices otherwise), not inherited from this process.
        env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
        env = {**env, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        self.process = spawn(self.command, self.log_path, env)
        return self

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_path or not self.log_path.is_file():
            return ""
        return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")

    def get(self, path: str, timeout_s: float = 2.0) -> tuple[int, str]:
        """(status, body) of an HTTP GET on the matcher's endpoint server."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout_s) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")

    def wait_ready(self, timeout_s: float = 180.0) -> "MatcherProcess":
        """Block until ``/readyz`` answers 200 (model loaded, partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.returncode
            if code is not None:
                raise MatcherExited(f"matcher exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                if self.get("/readyz", 1.0)[0] == 200:
                    return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise MatcherExited(f"matcher not ready after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s`` for the graceful exit, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> int | None:
        """SIGKILL the matcher's process group (a crash, as far as Kafka can tell)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal(signal.SIGKILL)
        return self.process.wait()

    def __enter__(self) -> "MatcherProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
