"""``digitmatch demo`` end to end: broker, matcher process, producer, on the shipped model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from digitmatch.model.serving import DEFAULT_MODEL_ROOT

pytestmark = pytest.mark.slow
KEYS = {"pairs_sent", "verdicts", "match", "no_match", "unpaired", "dlq", "accuracy", "pairs_per_s",
        "p50_ms", "p95_ms", "p99_ms"}


# What a newcomer used to read as errors: TensorFlow's C++ start-up lines (absl's notice, oneDNN's,
# any line in absl's or TensorFlow's own log format), absl's Python logs, Python warnings.
NOISE = re.compile(r"absl|oneDNN|^[IWEF]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\]|^\S+: [IWEF] \S+\.cc:\d+\]"
                   r"|\w+Warning: ", re.M)
# Environment of a user's shell: none of TensorFlow's log settings (conftest sets one for the tests).
USER_ENV = {name: value for name, value in os.environ.items() if not name.startswith("TF_CPP_")}


def demo(*args, timeout=420, log_level=None):
    level = ["--log-level", log_level] if log_level else []
    return subprocess.run([sys.executable, "-m", "digitmatch.cli", *level, "demo", *args],
                          capture_output=True, text=True, timeout=timeout, env=USER_ENV)


def test_demo_decides_every_pair_and_prints_one_json_object():
    done = demo("--pairs", "200", "--json", "--invalid", "4", "--partner-missing-ratio", "0.05",
                "--join-ttl-s", "3", "--model", str(DEFAULT_MODEL_ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    assert KEYS <= set(result)
    assert result["pairs_sent"] == result["verdicts"] == 200 and result["complete"] is True
    assert result["match"] + result["no_match"] + result["unpaired"] == 200
    assert result["unpaired"] == 10  # exactly round(200 * 0.05) pairs lost their partner
    assert result["dlq"] == 4 and set(result["dlq_reasons"]) == {
        "size_mismatch", "non_finite", "bad_shape", "unsupported_schema"}
    assert result["decided"] == 190 and 0.7 <= result["accuracy"] <= 1.0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["pairs_per_s"] > 0 and result["mean_batch_size"] >= 1


def test_demo_without_a_model_fails_in_one_line(tmp_path):
    done = demo("--model", str(tmp_path / "no-model"), timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "no-model" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_demo_prints_no_start_up_noise_at_the_default_level():
    done = demo("--pairs", "20", "--join-ttl-s", "3", "--timeout-s", "120")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdicts      20 / 20" in done.stdout
    assert not NOISE.findall(done.stdout + done.stderr), done.stderr


def _tensorflow_notices(stderr: str) -> set[str]:
    """The file:line tags of TensorFlow's C++ log lines and absl's notice in ``stderr``."""
    tags = set(re.findall(r"^[IWEF]\d{4} [\d:.]+ +\d+ ([\w.-]+:\d+)\]", stderr, re.M))
    return tags | ({"absl"} if "before absl::InitializeLog() is called" in stderr else set())


def test_tensorflow_start_up_notices_are_shown_at_debug_only():
    """Whatever ``import tensorflow`` prints on this machine (the oneDNN notice where the CPU has
    the instructions for it) appears with --log-level DEBUG and not at the default level."""
    model = ["inspect", "--model", str(DEFAULT_MODEL_ROOT)]
    bare = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                          timeout=300, env=USER_ENV)
    quiet = subprocess.run([sys.executable, "-m", "digitmatch.cli", *model], capture_output=True, text=True,
                           timeout=300, env=USER_ENV)
    debug = subprocess.run([sys.executable, "-m", "digitmatch.cli", "--log-level", "DEBUG", *model],
                           capture_output=True, text=True, timeout=300, env=USER_ENV)
    assert quiet.returncode == debug.returncode == 0, quiet.stderr + debug.stderr
    assert "signature  serving_default" in quiet.stdout
    assert not _tensorflow_notices(quiet.stderr), quiet.stderr
    assert _tensorflow_notices(bare.stderr) <= _tensorflow_notices(debug.stderr), debug.stderr


def test_the_load_filter_drops_notices_only_and_survives_an_abort():
    """Lines written while TensorFlow loads go through a process of their own: the notices are
    dropped, warnings and errors pass in order, and what was written before an abort still
    arrives."""
    script = r"""
import os, sys
from digitmatch.tf_logging import TF_LOAD_NOTICE, _filter_stderr
restore = _filter_stderr(TF_LOAD_NOTICE)
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796161752.930929   30319 port.cc:153] oneDNN custom operations are on.\n")
os.write(2, b"W0000 00:00:1796161752.930930   30319 a.cc:1] a warning\nE0000 00:00:1796161752.930931   30319 b.cc:2] an error\n")
print("from Python", file=sys.stderr)
if sys.argv[1] == "abort":
    os.write(2, b"F0000 00:00:1796161752.930932   30319 c.cc:3] fatal\n")
    os.abort()
restore()
print("after", file=sys.stderr)
"""
    expected = ("W0000 00:00:1796161752.930930   30319 a.cc:1] a warning\n"
                "E0000 00:00:1796161752.930931   30319 b.cc:2] an error\nfrom Python\n")
    done = subprocess.run([sys.executable, "-c", script, "restore"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == expected + "after\n", done.stderr
    aborted = subprocess.run([sys.executable, "-c", script, "abort"], capture_output=True, text=True, timeout=60)
    assert aborted.returncode != 0
    assert aborted.stderr == expected + "F0000 00:00:1796161752.930932   30319 c.cc:3] fatal\n", aborted.stderr
