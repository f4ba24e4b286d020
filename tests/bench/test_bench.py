"""Smoke tests of ``digitmatch bench``: every mode runs end to end on tiny sizes (real broker, real
matcher processes, real SavedModel) and reports sane, self-consistent numbers. No timing
thresholds: how fast is what the benchmark measures, not what the tests assert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from digitmatch.consumer.thread_cpu import ROLES

pytestmark = pytest.mark.slow

# The shipped held-out sample (an empty --data directory falls back to it) keeps pair building quick.
TINY = ["--seconds", "2.5", "--naive-pairs", "12", "--batch-sizes", "1,8,32", "--model-seconds", "0.1",
        "--pool-pairs", "100"]


def bench(tmp_path: Path, *args: str, timeout: float = 240) -> dict:
    empty = tmp_path / "no-data"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "DIGITMATCH_DATA": str(empty), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "digitmatch.cli", "bench", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {done.stdout[:2000]!r}"
    return json.loads(lines[0])


def check_model(r: dict, sizes: list[int]) -> None:
    timings = r["model"]["timings"]
    assert [t["batch_size"] for t in timings] == sizes
    for t in timings:
        assert t["pairs_per_s"] > 0 and t["ms_per_batch"] > 0 and t["batches"] >= 3
        # pairs/s and ms per batch describe the same measurement
        assert t["pairs_per_s"] == pytest.approx(1000 * t["batch_size"] / t["ms_per_batch"], rel=0.01)
    assert r["model_pairs_per_s"] == pytest.approx(max(t["pairs_per_s"] for t in timings), abs=0.1)


def check_point(p: dict, flags: dict) -> None:
    assert p["verdicts"] == p["pairs"] > 0, "every pair sent gets exactly one verdict"
    assert p["unpaired"] == 0
    assert p["achieved_pairs_per_s"] > 0 and p["sent_pairs_per_s"] > 0
    assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= p["max_ms"]
    # (batches cut and batches scored inside one window differ by those still queued at its edges)
    assert sum(p["batch_sizes"].values()) > 0 and sum(p["flushes"].values()) > 0
    assert set(p["flushes"]) <= {"full", "deadline", "drain"}
    assert max(int(float(k.removeprefix("<="))) for k in p["batch_sizes"] if k != "+Inf") <= 2 * flags["max_batch_size"]
    assert all(c is not None and c > 0 for c in p["matcher_cpu_percent"])
    assert set(p["thread_cpu_ms_per_pair"]) <= set(ROLES)
    assert p["config"] == flags


def check_drain(d: dict) -> None:
    assert d["verdicts"] == d["pairs"] and d["pairs_per_s"] > 0
    threads = d["thread_cpu_ms_per_pair"]
    assert set(threads) <= set(ROLES) and threads["poll_loop"] > 0 and threads["inference"] > 0


def check_plain(r: dict, pairs: int) -> None:
    """The plain consumer drained the same backlog as the matcher: one verdict per pair."""
    plain = r["plain"]
    assert plain["pairs"] == plain["verdicts"] == pairs and plain["pairs_per_s"] > 0
    assert r["plain_pairs_per_s"] == plain["pairs_per_s"]
    assert 1 <= plain["mean_batch_size"] <= 256 and plain["model_calls"] >= pairs / 256
    threads = plain["thread_cpu_ms_per_pair"]
    assert set(threads) <= set(ROLES) and threads["poll_loop"] > 0


def test_quick_json_has_the_keys_with_sane_values(tmp_path):
    r = bench(tmp_path, "--quick", *TINY, "--max-batch-size", "64", "--max-delay-ms", "10")
    assert r["matcher_kafka_client"] == "librdkafka"
    for key in ("model_pairs_per_s", "naive_pairs_per_s", "pipeline_pairs_per_s", "pipeline_vs_model",
                "pipeline_vs_naive", "p50_ms", "p95_ms", "p99_ms", "max_batch_size", "max_delay_ms"):
        assert key in r, key
    assert r["max_batch_size"] == 64 and r["max_delay_ms"] == 10
    for key in ("model_pairs_per_s", "naive_pairs_per_s", "pipeline_pairs_per_s", "p50_ms"):
        assert r[key] > 0, key
    assert r["pipeline_vs_model"] == pytest.approx(r["pipeline_pairs_per_s"] / r["model_pairs_per_s"], abs=1e-3)
    assert r["pipeline_vs_naive"] == pytest.approx(r["pipeline_pairs_per_s"] / r["naive_pairs_per_s"], abs=1e-3)
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    check_model(r, [1, 8, 32])
    assert r["naive"]["verdicts"] == r["naive"]["pairs"] == 12
    pipeline = r["pipeline"]
    flags = {"max_batch_size": 64, "max_delay_ms": 10.0}
    assert len(pipeline["points"]) == 1
    for point in pipeline["points"] + [pipeline["half_saturation"]]:
        check_point(point, flags)
    assert r["pipeline_pairs_per_s"] == max(p["achieved_pairs_per_s"] for p in pipeline["points"])
    check_drain(pipeline["drain"])
    assert r["p99_ms"] == pipeline["half_saturation"]["p99_ms"]
    check_plain(r, pipeline["drain"]["pairs"])
    assert r["pipeline_vs_plain"] == pytest.approx(r["drain_pairs_per_s"] / r["plain_pairs_per_s"], abs=1e-3)
    assert "sweep" not in r and "scaleout" not in r and "ceiling" not in r  # --quick leaves them out


def test_every_mode_and_the_report(tmp_path):
    r = bench(tmp_path, "all", *TINY, "--loads", "0.1,1.2", "--sweep-batch-sizes", "16", "--sweep-delays-ms", "5",
              "--report", str(tmp_path / "docs"), timeout=420)
    flags = {"max_batch_size": r["max_batch_size"], "max_delay_ms": r["max_delay_ms"]}
    check_model(r, [1, 8, 32])
    points = r["pipeline"]["points"]
    assert [p["offered_pairs_per_s"] for p in points] == pytest.approx(
        [0.1 * r["model_pairs_per_s"], 1.2 * r["model_pairs_per_s"]], abs=0.1)
    for point in points:
        check_point(point, flags)
    check_drain(r["pipeline"]["drain"])

    scale = r["scaleout"]
    assert scale["one"]["matchers"] == 1 and scale["two"]["matchers"] == 2
    assert len(scale["two_matchers_cpu_percent"]) == 2
    check_point(scale["two"], flags)
    ratio = scale["two_matchers_pairs_per_s"] / scale["one_matcher_pairs_per_s"]
    assert scale["scaling_ratio"] == pytest.approx(ratio, abs=1e-3)
    check_drain(scale["drain_one"])
    check_drain(scale["drain_two"])
    assert scale["drain_two"]["matchers"] == 2 and len(scale["drain_two"]["matcher_cpu_seconds"]) == 2
    drain_ratio = scale["drain_two"]["pairs_per_s"] / scale["drain_one"]["pairs_per_s"]
    assert scale["drain_scaling_ratio"] == pytest.approx(drain_ratio, abs=1e-3)
    assert r["summary"]["scaleout_drain_ratio"] == scale["drain_scaling_ratio"]

    sweep = r["sweep"]
    assert [(p["max_batch_size"], p["max_delay_ms"]) for p in sweep["points"]] == [(16, 5.0)]
    for p in sweep["points"]:
        check_point(p["saturated"], {"max_batch_size": 16, "max_delay_ms": p["max_delay_ms"]})
        assert p["target_ms"] > p["max_delay_ms"]
    assert sweep["chosen"] == {"max_batch_size": 16, "max_delay_ms": 5.0}

    docs = tmp_path / "docs"
    assert json.loads((docs / "benchmarks.json").read_text())["summary"] == r["summary"]
    assert (docs / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (docs / "benchmarks.md").read_text()
    assert "bench:results:start" in page and "### Scale-out" in page and "### Batching knobs" in page
    assert "Matcher CPU ms per pair by thread" in page


def test_the_features_benchmark_times_each_rate_and_batch(tmp_path):
    """``python -m digitmatch.dev.bench.features`` (docs/benchmarks.md, "pcm16 spoken halves")."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "digitmatch.dev.bench.features", "--data", str(empty),
                           "--seconds", "0.05"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert r["source"].endswith("heldout.npz") and r["recordings"] == 250
    assert r["tensorflow_threads"]["intra_op"] == 1
    rows = r["results"]
    assert [(row["sample_rate"], row["batch_size"]) for row in rows] == [
        (rate, size) for rate in (8000, 16000, 44100) for size in (1, 32, 256)]
    for row in rows:
        assert row["features_ms_per_batch"] > 0 and row["model_ms_per_batch"] > 0
        assert row["features_us_per_pair"] == pytest.approx(1000 * row["features_ms_per_batch"] / row["batch_size"],
                                                           rel=0.01, abs=0.1)
        assert 0 < row["features_share_of_the_call"] < 1


def test_plain_and_ceiling_modes(tmp_path):
    """``plain`` alone: the model and the plain consumer (no pipeline, so no pipeline_vs_plain);
    ``ceiling``: one matcher on the trivially cheap SavedModel draining a backlog, labelled so."""
    r = bench(tmp_path, "plain", *TINY)
    check_model(r, [1, 8, 32])
    # the pipeline drain's backlog (seconds × model limit / 4), from the rounded model limit
    drain_pairs = r["plain"]["pairs"]
    assert drain_pairs == pytest.approx(max(50, 2.5 * r["model_pairs_per_s"] / 4), abs=1.01)
    check_plain(r, drain_pairs)
    assert "pipeline" not in r and "pipeline_vs_plain" not in r and "naive" not in r

    r = bench(tmp_path, "ceiling", *TINY, "--max-batch-size", "64", "--max-delay-ms", "10")
    ceiling = r["ceiling"]
    check_drain(ceiling)
    assert ceiling["pairs"] == pytest.approx(3 * max(50, 2.5 * r["model_pairs_per_s"] / 4), abs=3.01)
    assert ceiling["config"] == {"max_batch_size": 64, "max_delay_ms": 10.0}
    assert "trivially cheap model" in ceiling["model"] and r["ceiling_model"] == "trivially cheap model"
    assert r["ceiling_pairs_per_s"] == ceiling["pairs_per_s"]
    assert "pipeline" not in r and "plain" not in r
