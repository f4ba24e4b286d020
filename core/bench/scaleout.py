"""``bench scaleout``: one matcher, then two in the same consumer group, at the same saturating
load on ``pairs.in`` (4 partitions: two each). The scaling ratio is two matchers' achieved
throughput over one's."""

from __future__ import annotations

from dataclasses import dataclass

from digitmatch.bench.pipeline import LoadPoint, PipelineBench


@dataclass
class ScaleOut:
    one: LoadPoint
    two: LoadPoint

    @property
    def ratio(self) -> float:
        return round(self.two.achieved_pairs_per_s / self.one.achieved_pairs_per_s, 3) if self.one.achieved_pairs_per_s else 0.0

    def to_dict(self) -> dict:
        return {
            "one_matcher_pairs_per_s": self.one.achieved_pairs_per_s,
            "two_matchers_pairs_per_s": self.two.achieved_pairs_per_s,
            "scaling_ratio": self.ratio,
            "one_matcher_cpu_percent": self.one.matcher_cpu_percent,
            "two_matchers_cpu_percent": self.two.matcher_cpu_percent,
            "one": self.one.to_dict(),
            "two": self.two.to_dict(),
        }


def run_scaleout(bench: PipelineBench, rate: float, seconds: float, **flags) -> ScaleOut:
    """One matcher (the running one, if it has these flags), then two in one group (each run on
    empty topics, see :meth:`PipelineBench.run`)."""
    if len(bench.matchers) != 1 or bench.flags != flags:
        bench.start_matchers(1, **flags)
    one = bench.run(rate, seconds)
    bench.start_matchers(2, **flags)
    two = bench.run(rate, seconds)
    return ScaleOut(one, two)
