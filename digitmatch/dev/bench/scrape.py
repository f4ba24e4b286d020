"""The matcher's ``/metrics`` as numbers: a snapshot before and after a run, and what changed."""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Snapshot:
    samples: dict[Key, float]

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def __sub__(self, before: "Snapshot") -> "Snapshot":
        return Snapshot({k: v - before.samples.get(k, 0.0) for k, v in self.samples.items()})


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Snapshot(samples)


def histogram_counts(snap: Snapshot, name: str) -> dict[str, int]:
    """Non-cumulative counts per bucket of histogram ``name``: ``{"<=1": n, "<=2": n, ...}``."""
    buckets = []
    for (sample, labels), value in snap.samples.items():
        if sample == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets.append((le, value))
    buckets.sort()
    out, previous = {}, 0.0
    for le, cumulative in buckets:
        count = int(round(cumulative - previous))
        previous = cumulative
        if count:
            out["+Inf" if math.isinf(le) else f"<={le:g}"] = count
    return out


def labelled_values(snap: Snapshot, name: str, label: str) -> dict[str, float]:
    """``{label value: value}`` of the samples of ``name`` (zeros left out)."""
    return {dict(labels)[label]: value for (sample, labels), value in snap.samples.items() if sample == name and value}


def labelled(snap: Snapshot, name: str, label: str) -> dict[str, int]:
    """``{label value: count}`` of counter ``name`` (zeros left out)."""
    return {key: int(round(value)) for key, value in labelled_values(snap, name, label).items()}
