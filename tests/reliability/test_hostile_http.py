"""Hostile HTTP clients: a flood of idle connections to a real matcher's metrics/health port.

The attack that was reported: 1,100 connections that each send half a request line
(``GET /metr``) and hold. With a thread per connection the matcher ran out of file descriptors
(its soft ``RLIMIT_NOFILE`` was 1,024, the usual default), ``/metrics`` and ``/readyz`` timed out,
the model watcher failed with "too many open files", no pair was decided and the process died.

Here the attacker opens 1,100 such connections (500 a second) and keeps that many open for the
whole hold, re-opening once a second those the server closed, while pairs are sent for 30 s.
The matcher runs with a soft limit of 1,024 file descriptors as in that deployment (inherited
from this process at its start; this process then raises its own limit, up to the hard one, for
the flood). Pairs must all get their verdicts during the hold, ``/metrics`` and ``/readyz`` must
keep answering within 2 s, the process must stay up with its threads and file descriptors
bounded, and both endpoints must answer at once when the flood stops."""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from flow import PairStream, latency_percentiles, serve_flags, tally
from matcher_harness import Topics, make_pairs, metric_value
from probe import proc_memory_kib

from digitmatch.procfs import read_stat

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]

FLOOD = 1_100  # idle connections held open at once by the attacker
MATCHER_FDS = 1_024  # the matcher's soft RLIMIT_NOFILE (where the attack was found)
PAIRS = 50
BASELINE = 10  # pairs sent before the flood, for the verdict latency without it
# The pairs are sent over this long from the start of the hold: long enough for a server with a
# thread per connection to run out of descriptors (7 s here) and the model watcher (which polls
# every 10 s) to meet that.
STREAM_S = 30.0
ROUND_S = 1.0  # the attacker re-opens what the server closed this often
ANSWER_S = 2.0  # /metrics and /readyz must answer within this during the flood
# Bounds on the matcher process during the flood: its HTTP server keeps at most 256 connections
# (consumer/health.py, MAX_CONNECTIONS) and runs on one thread, whatever the flood.
MORE_FDS = 256 + 64
MORE_THREADS = 4  # the Kafka clients' and TensorFlow's threads come and go a little


@contextmanager
def soft_nofile(limit: int):
    """This process's soft RLIMIT_NOFILE set to ``limit`` (at most the hard limit) for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process; (0, 0) once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
        return threads, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return 0, 0


def timed_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, float]:
    """(status, seconds) of a GET; status 0 when it failed or timed out."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, time.monotonic() - started


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class IdleFlood:
    """Keeps ``size`` connections open to ``port``, each having sent ``GET /metr`` and nothing more.
    :meth:`top_up` closes those the server closed and opens new ones with non-blocking connects,
    ``OPEN_BATCH`` every ``OPEN_EVERY_S`` (500 a second: what one client does without trying
    hard; a burst far faster than a server accepts mostly waits in TCP retransmissions, which
    is no attack), giving up on those not connected within ``CONNECT_S``."""

    OPEN_BATCH = 5
    OPEN_EVERY_S = 0.01
    CONNECT_S = 5.0

    def __init__(self, port: int, size: int):
        self.port = port
        self.size = size
        self.socks: list[socket.socket] = []
        self.opened = 0
        self.connect_failures = 0
        self.closed_by_server = 0
        self.kept_open_max = 0  # the most still open at the start of a round, as the server left them
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-flood", daemon=True)

    def top_up(self) -> None:
        still = [s for s in self.socks if not closed_by_server(s)]
        for sock in self.socks:
            if sock not in still:
                sock.close()
        self.closed_by_server += len(self.socks) - len(still)
        self.kept_open_max = max(self.kept_open_max, len(still))
        self.socks = still
        to_open = self.size - len(self.socks)
        next_batch = time.monotonic()
        with selectors.DefaultSelector() as connecting:
            while (to_open or connecting.get_map()) and not self._stop.is_set():
                if to_open and time.monotonic() >= next_batch:
                    next_batch += self.OPEN_EVERY_S
                    for _ in range(min(self.OPEN_BATCH, to_open)):
                        to_open -= 1
                        sock = socket.socket()
                        sock.setblocking(False)
                        if sock.connect_ex(("127.0.0.1", self.port)) in (0, errno.EINPROGRESS):
                            connecting.register(sock, selectors.EVENT_WRITE, time.monotonic() + self.CONNECT_S)
                        else:
                            self._failed(sock)
                wait_s = max(0.0, next_batch - time.monotonic()) if to_open else 0.1
                for key, _ in connecting.select(wait_s):
                    connecting.unregister(key.fileobj)
                    self._connected(key.fileobj)
                now = time.monotonic()
                for key in [k for k in connecting.get_map().values() if k.data < now]:
                    connecting.unregister(key.fileobj)
                    self._failed(key.fileobj)
            for key in list(connecting.get_map().values()):
                key.fileobj.close()

    def _connected(self, sock: socket.socket) -> None:
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and sock.send(b"GET /metr") > 0:
                self.socks.append(sock)
                self.opened += 1
                return
        except OSError:
            pass
        self._failed(sock)

    def _failed(self, sock: socket.socket) -> None:
        sock.close()
        self.connect_failures += 1

    def start(self) -> "IdleFlood":
        self.top_up()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(ROUND_S):
            self.top_up()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for sock in self.socks:
            sock.close()
        self.socks = []


class Watch:
    """Every 0.25 s: the matcher's threads and file descriptors, and the answer times of
    ``/metrics`` and ``/readyz``."""

    def __init__(self, process):
        self.process = process
        self.threads_peak = self.fds_peak = 0
        self.answers: dict[str, list[tuple[int, float]]] = {"/metrics": [], "/readyz": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def start(self) -> "Watch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            threads, fds = proc_counts(self.process.pid)
            self.threads_peak, self.fds_peak = max(self.threads_peak, threads), max(self.fds_peak, fds)
            for path, answers in self.answers.items():
                answers.append(timed_get(self.process.metrics_port, path))
            self._stop.wait(0.25)

    def failures(self) -> int:
        return sum(status != 200 or seconds > ANSWER_S for a in self.answers.values() for status, seconds in a)

    def max_ms(self, path: str) -> float | None:
        answers = self.answers[path]
        return round(max(s for _, s in answers) * 1000, 1) if answers else None


def first_answer_ms(port: int, path: str, timeout_s: float = 30.0) -> float | None:
    """Milliseconds until ``path`` answers 200 (None if it does not within ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if timed_get(port, path, 2.0)[0] == 200:
            return round((time.monotonic() - started) * 1000, 1)
        time.sleep(0.05)
    return None


def test_a_flood_of_idle_connections_starves_nothing(broker, start_matcher, figures, clients):
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < FLOOD + 512:
        pytest.skip(f"the hard RLIMIT_NOFILE ({hard}) leaves no room for {FLOOD:,} connections")
    topics = Topics.create(broker.connection, "httpflood")
    with soft_nofile(MATCHER_FDS) as matcher_fds:  # inherited by the matcher for its whole life
        matcher = start_matcher(broker.bootstrap, **serve_flags(topics, DEFAULT_MODEL_ROOT, "httpflood"))
    port = matcher.metrics_port
    threads_before, fds_before = proc_counts(matcher.pid)
    rss_before = proc_memory_kib(matcher.pid).get("VmRSS", 0)
    baseline, pairs = make_pairs(BASELINE, "calm", seed=96), make_pairs(PAIRS, "httpflood", seed=97)
    wanted = {p.pair_id for p in pairs}
    sender, reader = clients(broker.connection, topics)
    PairStream(sender, baseline, [(BASELINE, BASELINE / 2)], lag=0).start().wait(60)  # no flood yet
    got = reader.wait_for(lambda c: {p.pair_id for p in baseline} <= c.verdicts.keys(), timeout_s=60)
    latency_calm = latency_percentiles([got.verdicts[p.pair_id][0] for p in baseline if p.pair_id in got.verdicts])
    cpu_before = read_stat(f"/proc/{matcher.pid}/stat")[1]

    with soft_nofile(FLOOD + 512):
        watch = Watch(matcher).start()
        flood = IdleFlood(port, FLOOD)
        stream = clients.track(PairStream(sender, pairs, [(PAIRS, PAIRS / STREAM_S)], lag=0))
        try:
            started = time.monotonic()
            flood.start()
            opened_in_s = time.monotonic() - started
            stream.start().wait(STREAM_S + 60)
            got = reader.wait_for(lambda c: wanted <= c.verdicts.keys() or matcher.returncode is not None,
                                  timeout_s=60)
            hold_s = time.monotonic() - started
            cpu_during = (read_stat(f"/proc/{matcher.pid}/stat") or ("", cpu_before))[1] - cpu_before
            decided_during_hold = len(wanted & got.verdicts.keys())
            flood.top_up()  # the last round: how many the server kept open
            alive_during = matcher.returncode is None
        finally:
            watch.stop()
            flood.close()
        metrics_after_ms = first_answer_ms(port, "/metrics")
        readyz_after_ms = first_answer_ms(port, "/readyz")
    text = matcher.get("/metrics")[1] if matcher.returncode is None else ""
    log = matcher.log_tail(200_000)
    result = tally(pairs, got.verdicts)
    figures(
        "hostile_http_flood",
        title=f"{FLOOD:,} idle connections held on the metrics/health port",
        injected=f"{FLOOD:,} connections to the matcher's /metrics port, each sending half a request line "
                 f"('GET /metr') and nothing more, held open (those the server closed re-opened every "
                 f"{ROUND_S:g} s) while {PAIRS} pairs are sent over {STREAM_S:g} s and until their verdicts "
                 f"are read; the matcher's soft file-descriptor limit {matcher_fds:,}",
        connections_held=FLOOD,
        connections_opened=flood.opened,
        connect_failures=flood.connect_failures,
        closed_by_the_server=flood.closed_by_server,
        server_kept_open_max=flood.kept_open_max,
        seconds_to_open_the_flood=round(opened_in_s, 2),
        matcher_fd_limit=matcher_fds,
        matcher_threads_before=threads_before,
        matcher_threads_peak=watch.threads_peak,
        matcher_fds_before=fds_before,
        matcher_fds_peak=watch.fds_peak,
        pairs_sent=PAIRS,
        pairs_decided=result.pairs_decided,
        pairs_decided_during_hold=decided_during_hold,
        lost=result.lost,
        seconds_held=round(hold_s, 1),
        verdict_latency_before=latency_calm,
        verdict_latency_during=latency_percentiles([got.verdicts[p][0] for p in wanted if p in got.verdicts]),
        matcher_cpu_share_during=round(cpu_during / hold_s, 2),  # of one core, the whole process
        endpoint_answers_during=sum(len(a) for a in watch.answers.values()),
        endpoint_answers_failed_or_slow_during=watch.failures(),
        metrics_max_ms_during=watch.max_ms("/metrics"),
        readyz_max_ms_during=watch.max_ms("/readyz"),
        metrics_ms_after=metrics_after_ms,
        readyz_ms_after=readyz_after_ms,
        matcher_crashes=0 if matcher.returncode is None else 1,
        rss_mib_before=round(rss_before / 1024, 1),
        peak_rss_mib=round(proc_memory_kib(matcher.pid).get("VmHWM", 0) / 1024, 1),
    )
    answers = {path: (len(a), watch.max_ms(path)) for path, a in watch.answers.items()}
    assert alive_during and matcher.returncode is None, matcher.log_tail()
    assert decided_during_hold == PAIRS and result.lost == 0 and result.wrong_halves == 0
    assert watch.failures() == 0, f"{watch.failures()} answers failed or took over {ANSWER_S:g} s: " \
                                  f"(answers, slowest ms) {answers}"
    assert all(n >= 10 for n, _ in answers.values()), answers
    assert watch.threads_peak <= threads_before + MORE_THREADS, (threads_before, watch.threads_peak)
    assert watch.fds_peak <= fds_before + MORE_FDS, (fds_before, watch.fds_peak)
    assert flood.kept_open_max <= MORE_FDS
    assert metrics_after_ms is not None and metrics_after_ms < 1000
    assert readyz_after_ms is not None and readyz_after_ms < 1000
    assert metric_value(text, "digitmatch_ready") == 1
    assert "Too many open files" not in log
    assert flood.opened >= FLOOD, f"only {flood.opened} connections opened ({flood.connect_failures} failed)"
