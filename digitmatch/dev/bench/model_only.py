"""``bench model``: the SavedModel alone on pre-built batches (no Kafka, no Python per pair).

For each batch size, the padded MFCC and image arrays are built once from real pairs, then pushed
through :meth:`ServingModel.predict_padded` (the matcher's own call) repeatedly for a fixed time.
The best pairs/s over the sweep is the limit the pipeline is compared with.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from digitmatch.dev.bench.proc_cpu import cpu_seconds
from digitmatch.features import pad_batch
from digitmatch.model.serving import ServingModel
from digitmatch.producer.load import PairSet

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_BATCH_SIZES = (1, 16, 128, 256, 512)


@dataclass(frozen=True)
class BatchTiming:
    batch_size: int
    batches: int
    seconds: float
    pairs_per_s: float
    ms_per_batch: float
    cpu_ms_per_pair: float | None  # CPU time of this process (all TensorFlow threads) per pair


@dataclass
class ModelResult:
    model: str
    device: str
    timings: list[BatchTiming] = field(default_factory=list)

    @property
    def best(self) -> BatchTiming:
        return max(self.timings, key=lambda t: t.pairs_per_s)

    def ms_per_batch(self, batch_size: int) -> float:
        """Time of a batch of ``batch_size``: that of the smallest measured size at or above it
        (an upper bound), else the largest measured one scaled linearly."""
        sizes = sorted(self.timings, key=lambda t: t.batch_size)
        for t in sizes:
            if t.batch_size >= batch_size:
                return t.ms_per_batch
        return sizes[-1].ms_per_batch * batch_size / sizes[-1].batch_size

    def to_dict(self) -> dict:
        best = self.best
        return {
            "model": self.model,
            "device": self.device,
            "best_pairs_per_s": round(best.pairs_per_s, 1),
            "best_batch_size": best.batch_size,
            "best_cpu_ms_per_pair": best.cpu_ms_per_pair,
            "timings": [asdict(t) for t in self.timings],
        }


def build_batch(pairs: PairSet, size: int, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``size`` pairs (cycling through ``pairs``), padded as the matcher pads it."""
    idx = [i % len(pairs) for i in range(size)]
    return pad_batch([pairs.mfcc[i] for i in idx], max_frames), np.ascontiguousarray(pairs.images[idx])


def measure_model(
    model: ServingModel,
    pairs: PairSet,
    batch_sizes=BATCH_SIZES,
    seconds_per_size: float = 2.0,
    min_batches: int = 3,
) -> ModelResult:
    from digitmatch.consumer.models import inference_device

    result = ModelResult(f"{model.name} v{model.version}", inference_device())
    for size in batch_sizes:
        mfcc, images = build_batch(pairs, size, model.max_frames)
        model.predict_padded(mfcc, images)  # warm-up: first call of a shape
        batches = 0
        cpu_started = cpu_seconds(os.getpid())
        started = time.perf_counter()
        while True:
            model.predict_padded(mfcc, images)
            batches += 1
            seconds = time.perf_counter() - started
            if batches >= min_batches and seconds >= seconds_per_size:
                break
        cpu_used = cpu_seconds(os.getpid())
        cpu_ms = None if cpu_used is None or cpu_started is None else round(1000 * (cpu_used - cpu_started) / (size * batches), 4)
        result.timings.append(
            BatchTiming(size, batches, round(seconds, 4), round(size * batches / seconds, 1),
                        round(1000 * seconds / batches, 3), cpu_ms)
        )
    return result
