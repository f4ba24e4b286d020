"""CPU time per thread role: ``digitmatch_thread_cpu_seconds_total{thread=...}``.

A matcher is bounded by its single threads as much as by its cores: the poll loop reads,
decodes and joins every record on one Python thread, and the inference thread scores one batch at
a time (its verdicts are built on a thread of their own). ``rate()`` of this counter is the share
of a core each role keeps busy: a poll loop near 1 says "add a process", not "add cores"; where the time of a whole pipeline goes, per pair, is in
docs/benchmarks.md. (The inference thread mostly waits for TensorFlow's pools: its saturation shows
as a full inference queue and paused partitions instead.) Roles:

* ``poll_loop``: the thread running the matcher's loop (decode, join, batching, offsets);
* ``inference``: the inference thread: a batch's inputs, and the part of the model's graph
  TensorFlow runs on the calling thread;
* ``verdicts``: the thread building a scored batch's verdicts and handing them to the producer;
* ``tensorflow``: TensorFlow's own thread pools;
* ``kafka_client``: the Kafka client's I/O threads (librdkafka's, kafka-python's);
* ``other``: the rest (HTTP endpoints, model watcher, interpreter start-up).

Read from ``/proc/self/task/<tid>/stat`` at every scrape (Linux; elsewhere the metric has no
samples). A thread that ends keeps its CPU time in its role's total, up to its last scrape.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from digitmatch.procfs import read_stat

ROLES = ("poll_loop", "inference", "verdicts", "tensorflow", "kafka_client", "other")
NAME = "digitmatch_thread_cpu_seconds"
HELP = "CPU seconds used by the matcher's threads, per role"


def library_role(python_name: str | None, comm: str) -> str:
    """The role of a thread the matcher did not assign one: by its Python thread name, or by the
    OS name the native libraries give their threads."""
    if comm.startswith("tf_"):
        return "tensorflow"
    if comm.startswith("rdk:"):
        return "kafka_client"
    if python_name is not None and (
        python_name.startswith(("kafka-", "librdkafka")) or python_name.endswith("-network-thread")
    ):
        return "kafka_client"
    return "other"


class ThreadCpuCollector(Collector):
    def __init__(self, tasks: Path | str = "/proc/self/task"):
        self.tasks = Path(tasks)
        self._assigned: dict[int, str] = {}  # native thread id -> role, set by the thread itself
        self._lock = threading.Lock()
        # Per thread seen: (role, CPU seconds when it took that role, CPU seconds at the last read).
        self._seen: dict[int, tuple[str, float, float]] = {}
        self._ended = dict.fromkeys(ROLES, 0.0)  # CPU of threads gone, or of a role a thread left

    def assign(self, role: str, thread: threading.Thread | None = None) -> None:
        """Count ``thread`` (default: the calling one) as ``role`` from now on; what it used before
        stays with the role it had (the poll loop's thread loads the model first, for one)."""
        if role not in ROLES:
            raise ValueError(f"unknown thread role {role!r}; one of {ROLES}")
        thread = thread or threading.current_thread()
        tid = thread.native_id
        if tid is None:
            return
        stat = read_stat(self.tasks / str(tid) / "stat")
        with self._lock:
            self._assigned[tid] = role
            if stat is None:
                return
            comm, cpu = stat
            before, start, _ = self._seen.get(tid, (library_role(thread.name, comm), 0.0, 0.0))
            self._ended[before] += cpu - start
            self._seen[tid] = (role, cpu, cpu)

    def totals(self) -> dict[str, float]:
        """CPU seconds per role so far (empty where /proc is not available)."""
        try:
            tids = [int(name) for name in os.listdir(self.tasks)]
        except OSError:
            return {}
        python_names = {t.native_id: t.name for t in threading.enumerate()}
        with self._lock:
            current = {}
            for tid in tids:
                stat = read_stat(self.tasks / str(tid) / "stat")
                if stat is None:  # ended since the listing
                    continue
                comm, cpu = stat
                role = self._assigned.get(tid) or library_role(python_names.get(tid), comm)
                seen_role, start, last = self._seen.get(tid, (role, 0.0, 0.0))
                if cpu < last:  # the id was reused by a new thread
                    self._ended[seen_role] += last - start
                    seen_role, start = role, 0.0
                elif seen_role != role:  # the CPU used so far stays with the old role
                    self._ended[seen_role] += last - start
                    seen_role, start = role, last
                current[tid] = (seen_role, start, cpu)
            for tid in self._seen.keys() - current.keys():  # ended
                role, start, last = self._seen[tid]
                self._ended[role] += last - start
                self._assigned.pop(tid, None)
            self._seen = current
            totals = dict(self._ended)
            for role, start, cpu in current.values():
                totals[role] += cpu - start
        return totals

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(NAME, HELP, labels=["thread"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(NAME, HELP, labels=["thread"])
        for role, seconds in self.totals().items():
            family.add_metric([role], seconds)
        yield family
