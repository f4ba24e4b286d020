"""The matcher's HTTP endpoints: ``/metrics`` (Prometheus text format), ``/healthz`` (the process
answers) and ``/readyz`` (200 once a model version is loaded, proven and serving, the broker is
connected and partitions are assigned; 503 with the unmet conditions otherwise).

Anyone who can reach the port can open connections to it, so the server is built so that no use
of it costs the data path more than a bounded share of the process:

* One thread (``health-http``) serves every connection from one ``selectors`` loop with
  non-blocking sockets: no thread per connection, so the thread count does not grow with the
  clients, and a connection costs one file descriptor and its request head or answer in memory.
* At most :data:`MAX_CONNECTIONS` connections are open at once (the matcher's Kafka clients,
  model watcher and TensorFlow need file descriptors too). A connection is counted the moment it
  is accepted; when it is one too many, an older one is closed to make room, the first of: the
  oldest already answered (its answer is with the kernel, the client has not closed yet), the
  oldest that has not sent a complete request yet, the oldest whose answer is still being
  written. So a flood of idle or slow ("slowloris") connections, or of requests whose answers
  are never read, cannot lock a real scraper out: a scraper sends its request as soon as it
  connects, and each turn of the loop reads the open connections before it accepts new ones (at
  most :data:`ACCEPT_PER_TURN`), so it is answered before it is the oldest. Connections not
  accepted yet wait in the kernel's listen queue (:data:`LISTEN_BACKLOG`; no file descriptor of
  ours). Should the process run out of file descriptors anyway, accepting pauses for a moment.
* The request head (request line and headers) must arrive within :data:`HEAD_TIMEOUT_S` and fit
  in :data:`MAX_HEAD_BYTES` (431 otherwise); an answer the client does not take within
  :data:`WRITE_TIMEOUT_S` is dropped. Every answer says ``Connection: close``: one request per
  connection; once it is written the server half-closes and waits (as long again at most) for
  the client to close, reading what else it sends, so that the answer is not lost to a reset.
  Only ``GET`` and ``HEAD`` are served (405 otherwise, 400 for what is not HTTP).
* The ``/metrics`` exposition is built at most once per :data:`METRICS_CACHE_S` and shared by the
  scrapes within it (it costs a millisecond or two of Python time, holding the GIL the poll loop
  needs), so a flood of real scrapes cannot take the CPU from the data path either.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST

from digitmatch.consumer.metrics import MatcherMetrics

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256  # open at once: file descriptors the endpoints may hold
ACCEPT_PER_TURN = 64  # new connections accepted per turn of the loop (< MAX_CONNECTIONS)
LISTEN_BACKLOG = 1024  # connections the kernel queues until accepted (capped by net.core.somaxconn)
HEAD_TIMEOUT_S = 5.0  # from accepted to complete request head
MAX_HEAD_BYTES = 8192  # request line and headers
WRITE_TIMEOUT_S = 5.0  # for the client to take the answer
METRICS_CACHE_S = 0.1  # one /metrics exposition serves the scrapes of this long
ACCEPT_PAUSE_S = 0.5  # no accepting for this long when out of file descriptors
TURN_S = 0.1  # longest wait of the loop (how soon stop() and deadlines are seen)

TEXT = "text/plain; charset=utf-8"


@dataclass(slots=True)
class _Connection:
    deadline: float  # monotonic time it is closed at, unless done
    data: bytearray | memoryview  # the request head read so far, or the answer left to write


def _head_end(head: bytearray) -> int:
    """The length of the request head in ``head`` (through its blank line); -1 while incomplete."""
    ends = [at + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (at := head.find(blank)) >= 0]
    return min(ends, default=-1)


class HealthServer:
    """``readiness()`` returns ``{condition: bool}``; ready when all are true.

    The port is bound and listening once constructed (a taken port is an ``OSError`` there);
    :meth:`start` serves it from the ``health-http`` thread."""

    def __init__(
        self,
        metrics: MatcherMetrics,
        readiness: Callable[[], dict[str, bool]],
        host: str = "0.0.0.0",
        port: int = 9100,
    ):
        self.metrics = metrics
        self.readiness = readiness
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        self._socket.setblocking(False)
        self._address = self._socket.getsockname()
        self._selector: selectors.BaseSelector | None = None
        # Open connections by state, each oldest first (so also by deadline):
        self._reading: dict[socket.socket, _Connection] = {}  # still sending their request head
        self._writing: dict[socket.socket, _Connection] = {}  # their answer being written
        self._closing: dict[socket.socket, _Connection] = {}  # answered, until the client closes
        self._accept_again = 0.0  # monotonic time to accept again after running out of descriptors
        self._metrics_body = b""
        self._metrics_until = 0.0  # monotonic time until which _metrics_body is served
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._address[0])

    @property
    def port(self) -> int:
        return int(self._address[1])

    def start(self) -> "HealthServer":
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)
        self._thread.start()
        log.info("metrics and health endpoints on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()

    def _connections(self) -> int:
        """Connections open now (for tests)."""
        return len(self._reading) + len(self._writing) + len(self._closing)

    # ------------------------------------------------------------------ the loop (health-http thread)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            self._selector = selector
            selector.register(self._socket, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    events = selector.select(TURN_S)
                    # Open connections first, new ones last: a request already sent is read
                    # before newcomers can push its connection out.
                    for key, _ in sorted(events, key=lambda event: event[0].fileobj is self._socket):
                        sock = key.fileobj
                        if sock is self._socket:
                            self._accept()
                        elif sock in self._reading:
                            self._read(sock)
                        elif sock in self._writing:
                            self._write(sock)
                        elif sock in self._closing:
                            self._drain(sock)
                    self._expire(time.monotonic())
            except Exception:
                log.exception("the HTTP endpoints stopped")
            finally:
                for sock in [*self._reading, *self._writing, *self._closing]:
                    self._close(sock)

    def _accept(self) -> None:
        for _ in range(ACCEPT_PER_TURN):
            try:
                sock, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors (or memory): the queue waits meanwhile
                log.warning("HTTP endpoints cannot accept connections (%s): pausing %.1f s", exc, ACCEPT_PAUSE_S)
                self._selector.unregister(self._socket)
                self._accept_again = time.monotonic() + ACCEPT_PAUSE_S
                return
            if self._connections() >= MAX_CONNECTIONS:
                self._close(next(iter(self._closing or self._reading or self._writing)))
            sock.setblocking(False)
            self._reading[sock] = _Connection(time.monotonic() + HEAD_TIMEOUT_S, bytearray())
            self._selector.register(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        head = self._reading[sock].data
        try:
            data = sock.recv(MAX_HEAD_BYTES + 1 - len(head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client gave up
            self._close(sock)
            return
        head += data
        end = _head_end(head)
        if 0 <= end <= MAX_HEAD_BYTES:
            self._answer(sock, *self._respond(bytes(head[:end])))
        elif len(head) > MAX_HEAD_BYTES:
            self._answer(sock, 431, b"request head too large\n", TEXT)

    def _respond(self, head: bytes) -> tuple[int, bytes, str, dict[str, str], bool]:
        """(status, body, content type, extra headers, HEAD request) for one request head."""
        words = head.split(b"\n", 1)[0].decode("latin-1").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            return 400, b"bad request\n", TEXT, {}, False
        method, path = words[0], words[1].split("?", 1)[0]
        try:
            status, body, content_type = self._endpoint(method, path)
        except Exception:
            log.exception("answering %s %s", method, path)
            status, body, content_type = 500, b"internal error\n", TEXT
        log.debug("%s %s: %d", method, path, status)
        return status, body, content_type, {"Allow": "GET, HEAD"} if status == 405 else {}, method == "HEAD"

    def _endpoint(self, method: str, path: str) -> tuple[int, bytes, str]:
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed: GET or HEAD\n", TEXT
        if path == "/metrics":
            if time.monotonic() >= self._metrics_until:
                self._metrics_body = self.metrics.exposition()
                self._metrics_until = time.monotonic() + METRICS_CACHE_S
            return 200, self._metrics_body, CONTENT_TYPE_LATEST
        if path == "/healthz":
            return 200, b"ok\n", TEXT
        if path == "/readyz":
            conditions = self.readiness()
            ready = all(conditions.values())
            body = json.dumps({"ready": ready, **conditions}).encode() + b"\n"
            return (200 if ready else 503), body, "application/json"
        return 404, b"not found: try /metrics, /healthz or /readyz\n", TEXT

    def _answer(self, sock: socket.socket, status: int, body: bytes, content_type: str,
                headers: dict[str, str] | None = None, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close",
                 *(f"{name}: {value}" for name, value in (headers or {}).items())]
        answer = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        del self._reading[sock]
        self._writing[sock] = _Connection(time.monotonic() + WRITE_TIMEOUT_S, memoryview(answer))
        self._selector.modify(sock, selectors.EVENT_WRITE)
        self._write(sock)

    def _write(self, sock: socket.socket) -> None:
        answer = self._writing[sock]
        try:
            answer.data = answer.data[sock.send(answer.data):]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sock)  # the client is gone
            return
        if not answer.data:
            del self._writing[sock]
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._close(sock)
                return
            self._closing[sock] = _Connection(time.monotonic() + WRITE_TIMEOUT_S, bytearray())
            self._selector.modify(sock, selectors.EVENT_READ)

    def _drain(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return  # discarded
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(sock)

    def _expire(self, now: float) -> None:
        if self._accept_again and now >= self._accept_again:
            self._accept_again = 0.0
            self._selector.register(self._socket, selectors.EVENT_READ)
        for connections in (self._reading, self._writing, self._closing):  # deadlines in the order set
            while connections and next(iter(connections.values())).deadline <= now:
                self._close(next(iter(connections)))

    def _close(self, sock: socket.socket) -> None:
        for connections in (self._reading, self._writing, self._closing):
            connections.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
