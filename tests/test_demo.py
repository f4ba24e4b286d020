"""``digitmatch demo`` end to end: broker, matcher process, producer, on the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from digitmatch.model.serving import DEFAULT_MODEL_ROOT

pytestmark = pytest.mark.slow
KEYS = {"pairs_sent", "verdicts", "match", "no_match", "unpaired", "dlq", "accuracy", "pairs_per_s",
        "p50_ms", "p95_ms", "p99_ms"}  # fmt: skip


def demo(*args, timeout=420):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "digitmatch.cli", "demo", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)  # fmt: skip


def test_demo_decides_every_pair_and_prints_one_json_object():
    done = demo("--pairs", "200", "--json", "--invalid", "4", "--partner-missing-ratio", "0.05",
                "--join-ttl-s", "3", "--model", str(DEFAULT_MODEL_ROOT))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert KEYS <= set(result)
    assert result["pairs_sent"] == result["verdicts"] == 200 and result["complete"] is True
    assert result["match"] + result["no_match"] + result["unpaired"] == 200
    assert result["unpaired"] == 10  # exactly round(200 * 0.05) pairs lost their partner
    assert result["dlq"] == 4 and set(result["dlq_reasons"]) == {
        "size_mismatch", "non_finite", "bad_shape", "unsupported_schema"}  # fmt: skip
    assert result["decided"] == 190 and 0.7 <= result["accuracy"] <= 1.0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["pairs_per_s"] > 0 and result["mean_batch_size"] >= 1


def test_demo_without_a_model_fails_in_one_line(tmp_path):
    done = demo("--model", str(tmp_path / "no-model"), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "no-model" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
