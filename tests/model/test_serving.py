"""digitmatch.model.serving: TensorFlow's CPU thread pools (in fresh interpreters: the pools can
only be sized before TensorFlow runs its first operation)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
import numpy as np
from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel, set_cpu_threads
first = set_cpu_threads(1, 2)
model = ServingModel.load(DEFAULT_MODEL_ROOT)
scores = model.predict([np.zeros((20, 13), np.float32)], np.zeros((1, 28, 28), np.uint8))["score"]
again = set_cpu_threads(2, 2)  # too late for a different size: kept, with a warning
print(json.dumps({"first": first, "again": again, "scores": len(scores)}))
"""


def test_thread_pools_are_sized_before_the_first_operation_and_kept_after():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"first": {"intra_op": 1, "inter_op": 2}, "again": {"intra_op": 1, "inter_op": 2}, "scores": 1}
    assert "keeping its intra-op threads at 1 (wanted 2)" in done.stderr
