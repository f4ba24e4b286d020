"""``bench scaleout``: one matcher, then two in the same consumer group, at the same saturating
load on ``pairs.in`` (4 partitions: two each), and each draining the same backlog. The scaling
ratio is two matchers' achieved throughput over one's; the drain ratio the same without the load
generator on the cores (what a second process adds to the matchers' own capacity)."""

from __future__ import annotations

from dataclasses import dataclass

from digitmatch.dev.bench.pipeline import LoadPoint, PipelineBench


@dataclass
class ScaleOut:
    one: LoadPoint
    two: LoadPoint
    drain_one: dict  # PipelineBench.drain's results
    drain_two: dict

    @property
    def ratio(self) -> float:
        return _ratio(self.two.achieved_pairs_per_s, self.one.achieved_pairs_per_s)

    @property
    def drain_ratio(self) -> float:
        return _ratio(self.drain_two["pairs_per_s"], self.drain_one["pairs_per_s"])

    def to_dict(self) -> dict:
        return {
            "one_matcher_pairs_per_s": self.one.achieved_pairs_per_s,
            "two_matchers_pairs_per_s": self.two.achieved_pairs_per_s,
            "scaling_ratio": self.ratio,
            "one_matcher_cpu_percent": self.one.matcher_cpu_percent,
            "two_matchers_cpu_percent": self.two.matcher_cpu_percent,
            "one": self.one.to_dict(),
            "two": self.two.to_dict(),
            "drain_scaling_ratio": self.drain_ratio,
            "drain_one": self.drain_one,
            "drain_two": self.drain_two,
        }


def _ratio(two: float, one: float) -> float:
    return round(two / one, 3) if one else 0.0


def run_scaleout(bench: PipelineBench, rate: float, seconds: float, drain_pairs: int, **flags) -> ScaleOut:
    """One matcher (the running one, if it has these flags), then two in one group: each at
    ``rate`` for ``seconds``, then draining ``drain_pairs`` (every run on empty topics, see
    :meth:`PipelineBench.run`)."""
    if len(bench.matchers) != 1 or bench.flags != flags:
        bench.start_matchers(1, **flags)
    one = bench.run(rate, seconds)
    drain_one = bench.drain(drain_pairs)
    bench.start_matchers(2, **flags)
    two = bench.run(rate, seconds)
    drain_two = bench.drain(drain_pairs)
    return ScaleOut(one, two, drain_one, drain_two)
