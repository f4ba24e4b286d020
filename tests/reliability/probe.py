"""Watching matcher processes from outside: their gauges on ``/metrics`` and their memory in
``/proc``, sampled on a thread, keeping the peaks for the report."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from matcher_harness import metric_value

GAUGES = ("digitmatch_pending_halves", "digitmatch_partitions_paused", "digitmatch_inference_queue_batches")


def proc_memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak resident set since start) of a process, in KiB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def scrape(process) -> dict[str, float]:
    """The gauges of one matcher process (and its total consumer lag); empty while it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        status, text = process.get("/metrics", 1.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    found = {name: value for name in GAUGES if (value := metric_value(text, name)) is not None}
    found["consumer_lag_total"] = sum(
        sample.value for family in text_string_to_metric_families(text) if family.name == "digitmatch_consumer_lag"
        for sample in family.samples
    )
    return found


@dataclass
class Peaks:
    gauges: dict[str, float] = field(default_factory=dict)  # highest value seen per gauge (any process)
    rss_kib: int = 0  # highest VmHWM of any watched process
    samples: int = 0

    def pending(self) -> int:
        return int(self.gauges.get("digitmatch_pending_halves", 0))

    def paused(self) -> int:
        return int(self.gauges.get("digitmatch_partitions_paused", 0))

    def peak(self, name: str) -> int:
        return int(self.gauges.get(name, 0))

    def rss_mib(self) -> float:
        return round(self.rss_kib / 1024, 1)


class Sampler:
    """Samples every matcher process in ``processes`` (a list that may grow while it runs)."""

    def __init__(self, processes: list, interval_s: float = 0.25):
        self.processes = processes
        self.interval_s = interval_s
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Peaks:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        return self.peaks

    def sample(self) -> None:
        peaks = self.peaks
        for process in list(self.processes):
            if process.returncode is not None:
                continue
            memory = proc_memory_kib(process.pid)
            peaks.rss_kib = max(peaks.rss_kib, memory.get("VmHWM", 0))
            for name, value in scrape(process).items():
                peaks.gauges[name] = max(peaks.gauges.get(name, value), value)
        peaks.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()
