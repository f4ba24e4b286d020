import json
import os
import resource
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from digitmatch.consumer import health
from digitmatch.consumer.health import HealthServer
from digitmatch.consumer.metrics import MatcherMetrics


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


@pytest.fixture
def served():
    conditions = {"model_loaded": True, "partitions_assigned": False}
    metrics = MatcherMetrics()
    server = HealthServer(metrics, lambda: dict(conditions), "127.0.0.1", 0).start()
    yield server, metrics, conditions
    server.stop()


def test_ephemeral_port_is_bound(served):
    server, _, _ = served
    assert server.port > 0


def test_metrics_in_prometheus_text_format(served):
    server, metrics, _ = served
    metrics.verdicts.labels(outcome="match").inc(3)
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert b'digitmatch_verdicts_total{outcome="match"} 3.0' in body


def test_healthz_and_readyz(served):
    server, _, conditions = served
    assert get(server.port, "/healthz")[0] == 200
    status, _, body = get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body) == {"ready": False, "model_loaded": True, "partitions_assigned": False}
    conditions["partitions_assigned"] = True
    status, _, body = get(server.port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True


def test_unknown_path(served):
    assert get(served[0].port, "/nope")[0] == 404


def test_port_in_use_is_an_error(served):
    with pytest.raises(OSError):
        HealthServer(MatcherMetrics(), dict, "127.0.0.1", served[0].port)


# ------------------------------------------------------------------ hostile clients

FLOOD = 1_100  # idle connections of the attack that was reported (the process limit was 1,024 fds)


def wait_until(condition, timeout_s=10.0, interval_s=0.02):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def raw(port, data=b"", timeout_s=10.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock, timeout_s=5.0):
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout_s)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_server(sock) -> bool:
    sock.settimeout(0)  # with a timeout, recv would wait for data first
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def timed_get(port, path):
    started = time.monotonic()
    status = get(port, path)[0]
    return status, time.monotonic() - started


@pytest.fixture
def fd_room():
    """As many file descriptors as this process may have (the flood and the server share it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * FLOOD + 512
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or hard > soft):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    yield want if limit == resource.RLIM_INFINITY else limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_head_and_connection_close(served):
    server, _, _ = served
    sock = raw(server.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = read_all(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head and b"Content-Length: 3" in head
    assert body == b""


def test_bare_newlines_and_query_strings(served):
    sock = raw(served[0].port, b"GET /healthz?probe=1 HTTP/1.0\n\n")
    assert read_all(sock).endswith(b"\r\n\r\nok\n")
    sock.close()


def test_other_methods_are_not_allowed(served):
    request = urllib.request.Request(f"http://127.0.0.1:{served[0].port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 405 and caught.value.headers["Allow"] == "GET, HEAD"


def test_a_malformed_request_line_is_a_bad_request(served):
    sock = raw(served[0].port, b"hello\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    sock.close()


def test_a_silent_connection_is_closed_after_the_head_deadline(served, monkeypatch):
    monkeypatch.setattr(health, "HEAD_TIMEOUT_S", 0.3)
    silent, partial = raw(served[0].port), raw(served[0].port, b"GET /metr")
    started = time.monotonic()
    assert read_all(silent, timeout_s=5) == b"" and read_all(partial, timeout_s=5) == b""
    assert time.monotonic() - started < 3
    silent.close()
    partial.close()
    assert get(served[0].port, "/healthz")[0] == 200


def test_an_oversize_request_head_is_refused(served):
    sock = raw(served[0].port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (health.MAX_HEAD_BYTES + 1))
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert get(served[0].port, "/healthz")[0] == 200


def test_metrics_exposition_is_shared_for_a_moment(served, monkeypatch):
    server, metrics, _ = served
    monkeypatch.setattr(health, "METRICS_CACHE_S", 60.0)
    first = get(server.port, "/metrics")[2]
    metrics.verdicts.labels(outcome="match").inc(5)
    assert get(server.port, "/metrics")[2] == first  # within the cache time
    monkeypatch.setattr(server, "_metrics_until", 0.0)
    assert b'digitmatch_verdicts_total{outcome="match"} 5.0' in get(server.port, "/metrics")[2]


def test_a_flood_of_idle_connections_does_not_stop_the_endpoints(served, fd_room):
    server, _, conditions = served
    conditions["partitions_assigned"] = True
    flood_size = min(FLOOD, fd_room - health.MAX_CONNECTIONS - 300)
    if flood_size < health.MAX_CONNECTIONS + 100:
        pytest.skip(f"only {fd_room} file descriptors: too few to flood past the cap")
    threads_before = threads()
    flood: list[socket.socket] = []
    answers: list[tuple[str, int, float]] = []  # (path, status, seconds) while the flood is opened
    opening = threading.Event()

    def scrape_while_opening():
        while not opening.is_set():
            for path in ("/metrics", "/readyz"):
                answers.append((path, *timed_get(server.port, path)))

    scraper = threading.Thread(target=scrape_while_opening)
    scraper.start()
    try:
        for _ in range(flood_size):
            flood.append(raw(server.port, b"GET /metr"))
        opening.set()
        scraper.join()
        # the flood held: the server keeps at most its cap, the endpoints still answer
        assert wait_until(lambda: sum(not closed_by_server(s) for s in flood) <= health.MAX_CONNECTIONS)
        assert server._connections() <= health.MAX_CONNECTIONS
        for _ in range(5):
            for path, want in (("/metrics", 200), ("/readyz", 200)):
                answers.append((path, *timed_get(server.port, path)))
                assert answers[-1][1] == want
        assert threads() <= threads_before + 1  # the scraper thread of this test may still be counted
    finally:
        opening.set()
        scraper.join()
        for sock in flood:
            sock.close()
    assert answers and all(status == 200 for _, status, _ in answers), answers
    assert max(seconds for _, _, seconds in answers) < 2.0
    # once the flood is gone, everything answers at once
    assert timed_get(server.port, "/metrics")[1] < 1.0 and get(server.port, "/readyz")[0] == 200
    assert wait_until(lambda: server._connections() == 0)


def test_at_the_cap_the_oldest_idle_connection_makes_room(served, monkeypatch):
    server, _, _ = served
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 4)
    idle = []
    for _ in range(4):
        idle.append(raw(server.port, b"GET /metr"))
        assert wait_until(lambda: server._connections() == len(idle))
    newest = raw(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert read_all(newest).startswith(b"HTTP/1.1 503 ")  # a scraper still gets in
    assert wait_until(lambda: closed_by_server(idle[0]))
    assert not any(closed_by_server(sock) for sock in idle[1:])
    for sock in idle + [newest]:
        sock.close()


def test_answered_clients_that_never_close_do_not_lock_a_scraper_out(served, monkeypatch):
    server, _, _ = served
    monkeypatch.setattr(health, "MAX_CONNECTIONS", 4)
    lingering = [raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") for _ in range(4)]  # never read, never closed
    assert wait_until(lambda: len(server._closing) == 4)
    assert get(server.port, "/healthz")[0] == 200  # one of them made room
    assert server._connections() <= 4
    for sock in lingering:
        sock.close()
