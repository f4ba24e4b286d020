"""``python -m digitmatch.dev.bench.features``: what ``pcm16`` spoken halves cost the matcher.

The matcher computes a batch's pcm16 features on its inference thread, in one
:func:`digitmatch.features.mfcc_batch` call per model call (``consumer/model_inputs.py``). This
times that call on real held-out recordings (FSDD, resampled beforehand to each rate measured, so
the rate conversion itself is timed as the matcher does it), at the matcher's batch sizes, beside
the model's own call on the same batch; TensorFlow runs with the matcher's default thread pools
(one intra-op thread). Prints one JSON object; docs/benchmarks.md, "pcm16 spoken halves", quotes
it with the conditions it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from digitmatch.dev.bench.proc_cpu import cpu_seconds, machine

BATCH_SIZES = (1, 32, 256)
RATES = (8000, 16000, 44100)


def _timed(call, seconds: float, min_calls: int = 3) -> tuple[int, float, float | None]:
    """(calls, wall seconds, CPU seconds of this process) of ``call`` repeated for ``seconds``."""
    call()  # warm-up: tracing, first allocation of a shape
    calls = 0
    cpu_started = cpu_seconds(os.getpid())
    started = time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < seconds:
        call()
        calls += 1
    wall = time.perf_counter() - started
    cpu = cpu_seconds(os.getpid())
    return calls, wall, None if cpu is None or cpu_started is None else cpu - cpu_started


def measure(model_path=None, data_dir=None, batch_sizes=BATCH_SIZES, rates=RATES, seconds: float = 2.0) -> dict:
    import soxr

    from digitmatch.data.sample import load_heldout
    from digitmatch.features import mfcc_batch, pad_batch
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel, set_cpu_threads

    conditions = machine()  # the load average when the run starts
    threads = set_cpu_threads(1, 0)  # the matcher's defaults (consumer/config.py)
    model = ServingModel.load(model_path or DEFAULT_MODEL_ROOT)
    params = model.features
    recordings, images, source = load_heldout(data_dir)
    audio = [np.asarray(a, np.int16) for a in recordings.audio]
    at_rate = {}
    for rate in rates:
        at_rate[rate] = audio if rate == 8000 else [
            np.round(np.clip(soxr.resample(a.astype(np.float32) / 32768, 8000, rate), -1, 32767 / 32768) * 32768)
            .astype(np.int16) for a in audio]
    rows = []
    for rate in rates:
        for size in batch_sizes:
            batch = [(at_rate[rate][i % len(audio)], rate) for i in range(size)]
            calls, wall, cpu = _timed(lambda: mfcc_batch(batch, params), seconds)
            features = mfcc_batch(batch, params)
            mfcc = pad_batch(features, params.max_frames)
            pixels = np.ascontiguousarray(images.images[[i % len(images.images) for i in range(size)]])
            model_calls, model_wall, _ = _timed(lambda: model.predict_padded(mfcc, pixels), seconds)
            rows.append({
                "sample_rate": rate, "batch_size": size,
                "features_ms_per_batch": round(1000 * wall / calls, 3),
                "features_us_per_pair": round(1e6 * wall / (calls * size), 1),
                "features_cpu_us_per_pair": None if cpu is None else round(1e6 * cpu / (calls * size), 1),
                "model_ms_per_batch": round(1000 * model_wall / model_calls, 3),
                "features_share_of_the_call": round((wall / calls) / (wall / calls + model_wall / model_calls), 3),
            })
    mean_samples = float(np.mean([a.size for a in audio]))
    return {"model": f"{model.name} v{model.version}", "recordings": len(audio), "source": source,
            "mean_seconds_at_8k": round(mean_samples / 8000, 3), "tensorflow_threads": threads,
            "machine": conditions, "results": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a SavedModel root or version (default: the shipped one)")
    parser.add_argument("--data", default=None, help="data directory (default: ../shared/data, else the sample)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.data, seconds=args.seconds), indent=2))


if __name__ == "__main__":
    main()
