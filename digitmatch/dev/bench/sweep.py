"""``bench sweep``: the batching knobs (max batch size × max delay) against throughput and latency.

Each configuration gets a fresh matcher and two load points: one above the model limit (its
saturation throughput) and one fixed light load, the same for every configuration (its latency
when not saturated). The chosen default is the configuration with the highest saturation
throughput whose light-load p99 meets the latency target (max delay + 2 × the model's time for a
full batch); configurations within 3 % of the best throughput are ranked by that p99.
"""

from __future__ import annotations

from dataclasses import dataclass

from digitmatch.dev.bench.model_only import ModelResult
from digitmatch.dev.bench.pipeline import LoadPoint, PipelineBench

SWEEP_BATCH_SIZES = (64, 256, 1024)
SWEEP_DELAYS_MS = (5.0, 20.0, 50.0)
THROUGHPUT_TIE = 0.03


def latency_target_ms(model: ModelResult, max_batch_size: int, max_delay_ms: float) -> float:
    """The issue's goal at half load: p99 <= max delay + 2 × the inference time of a full batch."""
    return round(max_delay_ms + 2 * model.ms_per_batch(max_batch_size), 1)


@dataclass
class SweepPoint:
    max_batch_size: int
    max_delay_ms: float
    saturated: LoadPoint
    light: LoadPoint
    target_ms: float

    @property
    def meets_target(self) -> bool:
        return self.light.p99_ms is not None and self.light.p99_ms <= self.target_ms

    def to_dict(self) -> dict:
        return {
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay_ms,
            "saturation_pairs_per_s": self.saturated.achieved_pairs_per_s,
            "saturated_mean_batch_size": self.saturated.mean_batch_size,
            "light_pairs_per_s": self.light.offered_pairs_per_s,
            "light_p50_ms": self.light.p50_ms,
            "light_p99_ms": self.light.p99_ms,
            "target_ms": self.target_ms,
            "meets_target": self.meets_target,
            "saturated": self.saturated.to_dict(),
            "light": self.light.to_dict(),
        }


def run_sweep(
    bench: PipelineBench,
    model: ModelResult,
    *,
    batch_sizes=SWEEP_BATCH_SIZES,
    delays_ms=SWEEP_DELAYS_MS,
    saturating_rate: float,
    light_rate: float,
    seconds: float,
) -> list[SweepPoint]:
    points = []
    for size in batch_sizes:
        for delay in delays_ms:
            bench.start_matchers(1, max_batch_size=size, max_delay_ms=delay)
            saturated = bench.run(saturating_rate, seconds)
            light = bench.run(light_rate, seconds)
            points.append(SweepPoint(size, delay, saturated, light, latency_target_ms(model, size, delay)))
    bench.stop_matchers()
    return points


def choose_default(points: list[SweepPoint]) -> SweepPoint:
    eligible = [p for p in points if p.meets_target] or points
    best = max(p.saturated.achieved_pairs_per_s for p in eligible)
    close = [p for p in eligible if p.saturated.achieved_pairs_per_s >= (1 - THROUGHPUT_TIE) * best]
    return min(close, key=lambda p: (p.light.p99_ms if p.light.p99_ms is not None else float("inf")))
