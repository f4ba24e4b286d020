"""The matcher's HTTP endpoints: ``/metrics`` (Prometheus text format), ``/healthz`` (the process
answers) and ``/readyz`` (200 once the model is loaded and warmed up and partitions are assigned,
503 with the unmet conditions otherwise). Served from a daemon thread."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from digitmatch.consumer.metrics import MatcherMetrics

log = logging.getLogger(__name__)


class HealthServer:
    """``readiness()`` returns ``{condition: bool}``; ready when all are true."""

    def __init__(
        self,
        metrics: MatcherMetrics,
        readiness: Callable[[], dict[str, bool]],
        host: str = "0.0.0.0",
        port: int = 9100,
    ):
        self.metrics = metrics
        self.readiness = readiness
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "HealthServer":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="health-http", daemon=True
        )
        self._thread.start()
        log.info("metrics and health endpoints on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, server.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    conditions = server.readiness()
                    ready = all(conditions.values())
                    body = json.dumps({"ready": ready, **conditions}).encode() + b"\n"
                    self._send(200 if ready else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: keep quiet
                log.debug("%s " + format, self.address_string(), *args)

        return Handler
