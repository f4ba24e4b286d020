"""Which measurements a ``digitmatch bench`` mode makes, in which order, and the summary of them."""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import asdict, dataclass

from digitmatch.dev.bench.model_only import BATCH_SIZES, QUICK_BATCH_SIZES, measure_model
from digitmatch.dev.bench.naive import run_naive
from digitmatch.dev.bench.pipeline import saturation_and_knee
from digitmatch.dev.bench.plain import run_plain
from digitmatch.dev.bench.proc_cpu import machine
from digitmatch.dev.bench.scaleout import run_scaleout
from digitmatch.dev.bench.session import BenchSession
from digitmatch.dev.bench.sweep import choose_default, latency_target_ms, run_sweep
from digitmatch.producer.load import new_run_id

log = logging.getLogger(__name__)

SATURATING_LOAD = 1.2  # × the model-only best: more than the pipeline can take
QUICK_LOAD = 1.25  # × the backlog-drain rate (quick mode's one saturating load point)
SWEEP_LOAD = 1.5  # × the backlog-drain rate of the default configuration
SWEEP_SECONDS = 6.0
CEILING_FACTOR = 3  # × the drain's backlog: the cheap model drains it several times faster


@dataclass(frozen=True)
class Plan:
    mode: str
    quick: bool
    max_batch_size: int
    max_delay_ms: float
    seconds: float
    naive_pairs: int
    batch_sizes: tuple[int, ...]
    model_seconds: float
    loads: tuple[float, ...]
    sweep_batch_sizes: tuple[int, ...]
    sweep_delays_ms: tuple[float, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Plan":
        quick = bool(args.quick)
        return cls(
            mode=args.mode,
            quick=quick,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            seconds=args.seconds or (6.0 if quick else 10.0),
            naive_pairs=args.naive_pairs or (150 if quick else 400),
            batch_sizes=QUICK_BATCH_SIZES if quick and tuple(args.batch_sizes) == BATCH_SIZES else tuple(args.batch_sizes),
            model_seconds=args.model_seconds or (0.5 if quick else 2.0),
            loads=tuple(args.loads),
            sweep_batch_sizes=tuple(args.sweep_batch_sizes),
            sweep_delays_ms=tuple(args.sweep_delays_ms),
        )

    def wants(self, part: str) -> bool:
        if self.mode == part:
            return True
        if self.mode != "all":
            return False
        return part in ("naive", "pipeline", "plain") or not self.quick


def run_plan(session: BenchSession, plan: Plan) -> dict:
    results: dict = {"mode": plan.mode, "quick": plan.quick, "machine": machine(), "plan": asdict(plan),
                     "tensorflow_threads": session.threads,
                     "matcher_kafka_client": "librdkafka"}
    flags = {"max_batch_size": plan.max_batch_size, "max_delay_ms": plan.max_delay_ms}
    bench = None
    if plan.wants("pipeline") or plan.wants("scaleout") or plan.wants("plain") or plan.wants("ceiling"):
        # The matcher loads its model while the pairs are built in parallel.
        threading.Thread(target=lambda: session.pool, name="build-pairs", daemon=True).start()
        bench = session.pipeline
        log.info("starting the matcher (%s)", flags)
        bench.start_matchers(1, **flags)

    log.info("model alone: batch sizes %s", plan.batch_sizes)
    model = measure_model(session.model, session.pairs, plan.batch_sizes, plan.model_seconds)
    results["model"] = model.to_dict()
    best = model.best.pairs_per_s
    summary: dict = {"model_pairs_per_s": round(best, 1), "model_best_batch_size": model.best.batch_size}

    if plan.wants("naive"):
        log.info("naive consumer: %d pairs", plan.naive_pairs)
        naive = run_naive(session.broker.connection, session.model, session.pool, new_run_id(), plan.naive_pairs,
                          partitions=session.partitions)
        results["naive"] = naive.to_dict()
        summary["naive_pairs_per_s"] = round(naive.pairs_per_s, 1)

    saturation = drain_rate = None
    drain_pairs = max(50, int(plan.seconds * best / 4))
    if plan.wants("pipeline"):
        log.info("matcher alone draining a backlog of %d pairs", drain_pairs)
        drain = bench.drain(drain_pairs)
        drain_rate = drain["pairs_per_s"]
        log.info("  -> %s pairs/s", drain_rate)
        # Quick: one load just past the matcher's own capacity, so the load generator takes no more
        # CPU than it must. Full: the fractions of the model limit.
        rates = [QUICK_LOAD * drain["pairs_per_s"]] if plan.quick else [f * best for f in plan.loads]
        points = []
        for rate in rates:
            log.info("pipeline at %.0f pairs/s offered (%.0f %% of the model limit)", rate, 100 * rate / best)
            points.append(bench.run(rate, plan.seconds))
            log.info("  -> %s", _brief(points[-1]))
        analysis = saturation_and_knee(points)
        saturation = analysis["saturation_pairs_per_s"]
        log.info("pipeline at half its saturation (%.0f pairs/s)", saturation / 2)
        half = bench.run(saturation / 2, plan.seconds)
        log.info("  -> %s", _brief(half))
        target = latency_target_ms(model, plan.max_batch_size, plan.max_delay_ms)
        results["pipeline"] = {
            "config": flags,
            "points": [p.to_dict() for p in points],
            "analysis": analysis,
            "half_saturation": half.to_dict(),
            "latency_target_ms": target,
            "drain": drain,
        }
        summary |= {
            "pipeline_pairs_per_s": saturation,
            "pipeline_vs_model": _ratio(saturation, summary["model_pairs_per_s"]),
            "p50_ms": half.p50_ms,
            "p95_ms": half.p95_ms,
            "p99_ms": half.p99_ms,
            "latency_at_pairs_per_s": half.achieved_pairs_per_s,
            "drain_pairs_per_s": drain["pairs_per_s"],
            "drain_vs_model": _ratio(drain["pairs_per_s"], summary["model_pairs_per_s"]),
            "latency_target_ms": target,
            "latency_target_met": half.p99_ms is not None and half.p99_ms <= target,
            "knee_offered_pairs_per_s": analysis["knee_offered_pairs_per_s"],
            "matcher_cpu_percent_at_saturation": max(points, key=lambda p: p.achieved_pairs_per_s).matcher_cpu_percent,
        }
        if "naive_pairs_per_s" in summary:
            summary["pipeline_vs_naive"] = _ratio(saturation, summary["naive_pairs_per_s"])
        summary |= {"max_batch_size": plan.max_batch_size, "max_delay_ms": plan.max_delay_ms}

    if plan.wants("plain"):
        log.info("plain batched consumer draining a backlog of %d pairs", drain_pairs)
        plain = run_plain(session.broker.connection, session.model, session.pool, new_run_id(), drain_pairs,
                          partitions=session.partitions)
        results["plain"] = plain.to_dict()
        log.info("  -> %s pairs/s", results["plain"]["pairs_per_s"])
        summary["plain_pairs_per_s"] = results["plain"]["pairs_per_s"]
        summary["plain_vs_model"] = _ratio(summary["plain_pairs_per_s"], summary["model_pairs_per_s"])
        if drain_rate is not None:
            summary["pipeline_vs_plain"] = _ratio(drain_rate, summary["plain_pairs_per_s"])

    if plan.wants("ceiling"):
        bench = session.pipeline
        pairs = CEILING_FACTOR * drain_pairs
        log.info("ceiling: the matcher on a trivially cheap model draining %d pairs", pairs)
        ceiling = bench.drain_with_model(session.cheap_model_path, pairs, **flags)
        ceiling["model"] = "trivially cheap model (digitmatch/dev/bench/cheap_model.py)"
        results["ceiling"] = ceiling
        log.info("  -> %s pairs/s (trivially cheap model)", ceiling["pairs_per_s"])
        summary["ceiling_pairs_per_s"] = ceiling["pairs_per_s"]
        summary["ceiling_model"] = "trivially cheap model"

    if plan.wants("scaleout"):
        log.info("scale-out: one matcher, then two, at %.0f pairs/s offered and draining %d pairs",
                 SATURATING_LOAD * best, drain_pairs)
        scale = run_scaleout(bench, SATURATING_LOAD * best, plan.seconds, drain_pairs, **flags)
        results["scaleout"] = scale.to_dict()
        summary |= {"scaleout_one_pairs_per_s": scale.one.achieved_pairs_per_s,
                    "scaleout_two_pairs_per_s": scale.two.achieved_pairs_per_s,
                    "scaleout_ratio": scale.ratio,
                    "scaleout_drain_ratio": scale.drain_ratio}

    if plan.wants("sweep"):
        bench = session.pipeline
        light = (saturation or best) / 2
        # Saturating, but not so far past the matcher's capacity that draining the backlog after
        # each run dominates the sweep's time.
        saturating = SWEEP_LOAD * drain_rate if drain_rate else SATURATING_LOAD * best
        seconds = min(plan.seconds, SWEEP_SECONDS)
        log.info("batching sweep: sizes %s x delays %s; %.0f and %.0f pairs/s offered, %g s each",
                 plan.sweep_batch_sizes, plan.sweep_delays_ms, saturating, light, seconds)
        points = run_sweep(bench, model, batch_sizes=plan.sweep_batch_sizes, delays_ms=plan.sweep_delays_ms,
                           saturating_rate=saturating, light_rate=light, seconds=seconds)
        chosen = choose_default(points)
        results["sweep"] = {"points": [p.to_dict() for p in points],
                            "chosen": {"max_batch_size": chosen.max_batch_size, "max_delay_ms": chosen.max_delay_ms}}
        summary |= {"sweep_chosen_max_batch_size": chosen.max_batch_size,
                    "sweep_chosen_max_delay_ms": chosen.max_delay_ms}
    results["summary"] = summary
    return results | summary


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _brief(p) -> str:
    return (f"achieved {p.achieved_pairs_per_s} pairs/s (sent {p.sent_pairs_per_s}), p50 {p.p50_ms} ms, "
            f"p99 {p.p99_ms} ms, mean batch {p.mean_batch_size}, flushes {p.flushes}, cpu {p.matcher_cpu_percent} %, "
            f"stages {p.stages_ms}")
