"""The model being served: loading, the proof, version hot swap and fallback (the inference
thread that uses it is :mod:`digitmatch.consumer.inference`).

``--model`` is either one version directory or a TF-Serving versioned root (``<root>/<n>/``). For
a root, the highest version that loads and passes the proof is served, and a watcher thread polls
the root every ``--model-poll-s`` seconds: a higher version that appears is loaded and proven off
the hot path, then swapped in by a single reference assignment. The inference thread reads that
reference once per batch, so a batch is computed by exactly one version and its verdicts name
that version. The rules:

* **The proof** (:func:`prove`), for every version before it is served, at start-up or for a swap:
  its signature follows the serving contract (``ServingModel.load`` checks the declared specs:
  any batch size, any frame count), and it scores batches shaped like the worker's: each batch
  size of :func:`proof_batch_sizes` (1, 2, 3, 7 and ``max_batch_size``, the matcher's
  ``--max-batch-size``, the largest call the worker makes) at each frame count of
  :func:`proof_frame_counts` (1, about half and ``max_frames``), rows of mixed lengths of
  non-zero MFCC frames zero-padded by ``pad_batch``, random images; every output has the
  contract's dtype and shape, is finite, and scores and digit probabilities lie in [0, 1]; and one
  batch of ``pcm16`` recordings' features computed with the version's own ``FeatureParams``
  (:func:`proof_recordings`: its parameters must compute, and its model score them). It
  costs ~0.45 s for the shipped model on a CPU (0.25 s more than the one dummy batch it replaced),
  on the thread that loads: the watcher's for a swap.
* A version that fails to load or the proof is logged, counted as
  ``digitmatch_model_loads_total{result="error"}`` and skipped (tried again only if its files
  change); the old version keeps serving.
* The version swapped out stays loaded, as :attr:`ModelManager.previous`. A batch that fails on a
  version swapped in falls back at once: the previous version is served again and the batch
  retried on it; logged as an error, counted as ``digitmatch_model_fallbacks_total``, and the
  failed version is skipped until its files change. One previous version is kept: after a
  fallback there is none until the next swap. The fallback happens on the inference thread (one
  reference assignment); the old version's garbage is collected by the watcher's next poll.
* A batch that fails with no version to fall back to is retried with backoff, and
  :attr:`ModelManager.serving` (the matcher's readiness) is False until a batch succeeds or
  another version is swapped in.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

import numpy as np

from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.features import N_MFCC, FeatureParams, mfcc_batch, pad_batch
from digitmatch.model.serving import ModelError, ServingModel, is_version_dir, versions

log = logging.getLogger(__name__)



def inference_device() -> str:
    """The device TensorFlow places the model on: the first GPU if there is one, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU (no GPU visible to TensorFlow)"


DEFAULT_MAX_BATCH_SIZE = 256  # the matcher's --max-batch-size default
PROOF_BATCH_SIZES = (1, 2, 3, 7)  # and max_batch_size: small, even, odd and prime sizes
PROOF_SEED = 0


def proof_batch_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes the proof scores: :data:`PROOF_BATCH_SIZES` up to ``max_batch_size``, and
    ``max_batch_size`` itself."""
    return sorted({b for b in PROOF_BATCH_SIZES if b <= max_batch_size} | {max_batch_size})


def proof_frame_counts(max_frames: int) -> list[int]:
    """The padded frame counts the proof scores: 1, about half of ``max_frames``, ``max_frames``."""
    return sorted({1, (max_frames + 1) // 2, max_frames})


def proof_batch(batch_size: int, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(mfcc, images)`` as the worker builds them for ``batch_size`` pairs whose longest
    recording has ``frames`` frames: CMVN-like N(0, 1) coefficients, rows of mixed lengths
    zero-padded by ``pad_batch``, uint8 images of random pixels."""
    lengths = [frames] + rng.integers(1, frames + 1, size=batch_size - 1).tolist()
    mfcc = pad_batch([rng.normal(size=(n, N_MFCC)).astype(np.float32) for n in lengths], frames)
    return mfcc, rng.integers(0, 256, size=(batch_size, 28, 28), dtype=np.uint8)


def check_outputs(out: dict[str, np.ndarray], batch_size: int) -> str | None:
    """Why ``out`` breaks the output contract for a batch of ``batch_size``, or None."""
    heads = (batch_size, 10)
    expected = {"score": (batch_size,), "spoken_digit_probs": heads, "written_digit_probs": heads}
    if "score" not in out:
        return "no output 'score'"
    for name, shape in expected.items():
        value = out.get(name)
        if value is None:
            continue
        if value.dtype != np.float32 or value.shape != shape:
            return f"output {name!r} is {value.dtype} {list(value.shape)}, the contract says float32 {list(shape)}"
        if not np.isfinite(value).all():
            return f"output {name!r} is not finite"
        if value.min() < 0 or value.max() > 1:
            return f"output {name!r} leaves [0, 1] ({value.min():.4g} .. {value.max():.4g})"
    return None


def proof_recordings(params: FeatureParams, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """``pcm16`` recordings as the wire brings them: int16 noise at the model's own rate (one
    shorter than a window, one about half the frame budget, one longer than it) and at 16 kHz."""
    lengths = [params.frame_length // 2, params.max_samples() // 2, params.max_samples() + params.frame_step]
    recordings = [(rng.integers(-3000, 3000, size=n, dtype=np.int16), params.sample_rate) for n in lengths]
    other = 16000 if params.sample_rate != 16000 else 8000
    recordings.append((rng.integers(-3000, 3000, size=other // 2, dtype=np.int16), other))
    return recordings


def prove(model: ServingModel, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> int:
    """Score one batch of each size of :func:`proof_batch_sizes` at each frame count of
    :func:`proof_frame_counts`, and one batch of :func:`proof_recordings`' features computed with
    the model's own ``FeatureParams`` (what a batch of ``pcm16`` halves gets), checking each result
    (:func:`check_outputs`); raise :class:`ModelError` at the first that fails. Also the warm-up:
    the first real batch pays no tracing or allocation cost. Returns the number of batches scored."""
    rng = np.random.default_rng(PROOF_SEED)
    calls = 0
    for batch_size in proof_batch_sizes(max_batch_size):
        for frames in proof_frame_counts(model.max_frames):
            mfcc, images = proof_batch(batch_size, frames, rng)
            try:
                out = model.predict_padded(mfcc, images)
            except Exception as exc:
                where = f"{model.path}: fails on a batch of {batch_size} x {frames} frames"
                raise ModelError(f"{where}: {_summary(exc)}") from exc
            problem = check_outputs(out, batch_size)
            if problem is not None:
                raise ModelError(f"{model.path}: on a batch of {batch_size} x {frames} frames, {problem}")
            calls += 1
    params = model.features
    try:
        frames = mfcc_batch(proof_recordings(params, rng), params)
        out = model.predict_padded(pad_batch(frames, model.max_frames),
                                   rng.integers(0, 256, size=(len(frames), 28, 28), dtype=np.uint8))
    except Exception as exc:
        raise ModelError(f"{model.path}: fails on a batch of pcm16 recordings' features: {_summary(exc)}") from exc
    problem = check_outputs(out, len(frames))
    if problem is not None:
        raise ModelError(f"{model.path}: on a batch of pcm16 recordings' features, {problem}")
    calls += 1
    return calls


def warm_up(model: ServingModel, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> None:
    """:func:`prove`, under the name the benchmarks call."""
    prove(model, max_batch_size)


def _summary(exc: BaseException) -> str:
    """The exception's type and the first line of its message (TensorFlow's run to pages)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def freeze_heap() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``), after
    collecting what is garbage already.

    A loaded model is ~350,000 Python objects that live as long as it is served. Without this, each
    full collection walks all of them with the GIL held: 350-450 ms during which no thread of the
    matcher runs, every ~15 s at a steady 900 pairs/s, because the join table and the memory of
    decided pairs keep filling the oldest generation (docs/benchmarks.md). Frozen objects are still
    freed when their last reference goes; only cycles among them wait for the next call, which
    unfreezes first, so a swapped-out model's cycles are collected at the next swap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _fingerprint(directory: Path) -> tuple:
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file()))


class ModelManager:
    """Holds the model being served (:attr:`current`) and the one it replaced (:attr:`previous`),
    swaps in newer versions and falls back (module docstring).

    ``max_batch_size``: the largest batch the worker will send (the matcher's ``--max-batch-size``),
    the largest the proof tries. :attr:`current` is read without a lock (one reference); swaps and
    fallbacks, from the watcher and the inference thread, change the state under ``_lock``."""

    def __init__(
        self,
        path: Path | str,
        metrics: MatcherMetrics | None = None,
        poll_s: float = 10.0,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ):
        self.path = Path(path)
        self.metrics = metrics
        self.poll_s = poll_s
        self.max_batch_size = max_batch_size
        self.current: ServingModel | None = None
        self.previous: ServingModel | None = None  # what a failing swapped-in version falls back to
        self._stuck = False  # a batch failed on current with nothing to fall back to
        self._collect = False  # a fallback left a version's garbage for the watcher to collect
        self._lock = threading.Lock()
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the files that failed
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def versioned(self) -> bool:
        """True when ``path`` is a root whose new versions are picked up."""
        return not is_version_dir(self.path)

    @property
    def serving(self) -> bool:
        """A model is loaded and its last batch did not fail with no version to fall back to
        (what readiness reports)."""
        return self.current is not None and not self._stuck

    def load(self) -> ServingModel:
        """Load and prove the model to serve first: the highest version that passes."""
        if not self.path.exists():
            raise ModelError(f"model path {self.path} does not exist")
        log.info("inference device: %s", inference_device())
        if not self.versioned:
            model = self._load_version(self.path)
            self._serve(model)
            return model
        found = versions(self.path)
        if not found:
            raise ModelError(f"{self.path} holds no SavedModel: expected {self.path}/<version>/saved_model.pb")
        for version in sorted(found, reverse=True):
            try:
                model = self._load_version(found[version])
            except Exception as exc:
                self._record_failure(version, found[version], exc)
                continue
            self._serve(model)
            return model
        raise ModelError(f"no version under {self.path} could be loaded (tried {sorted(found, reverse=True)})")

    def check_for_new_version(self) -> bool:
        """One poll: load, prove and swap in a higher version if one appeared. True on a swap."""
        if not self.versioned or self.current is None:
            return False
        found = versions(self.path)
        for version in sorted((v for v in found if v > self.current.version), reverse=True):
            directory = found[version]
            if self._failed.get(version) == _fingerprint(directory):
                continue
            try:
                model = self._load_version(directory)
            except Exception as exc:
                self._record_failure(version, directory, exc)
                continue
            old = self.current
            self._serve(model)
            log.info("model hot swap: %s v%d -> %s v%d (v%d kept to fall back to)",
                     old.name, old.version, model.name, model.version, old.version)
            return True
        return False

    def batch_failed(self, model: ServingModel, pairs: int, exc: BaseException) -> bool:
        """The inference thread's report that a batch of ``pairs`` failed on ``model``. True when
        another version serves now (retry the batch on it at once): one swapped in meanwhile, or
        :attr:`previous`, restored here. False when there is none (retry later; not serving)."""
        with self._lock:
            if model is not self.current:
                return True
            restored = self.previous
            if restored is None:
                was_serving, self._stuck = not self._stuck, True
            else:
                self.current, self.previous = restored, None
                self._failed[model.version] = _fingerprint_or_empty(model.path)
                self._collect = True
        if restored is None:
            if was_serving:
                log.error("model %s v%d failed on a batch of %d pairs and there is no version to fall back to: "
                          "not ready until a batch succeeds (%s)", model.name, model.version, pairs, _summary(exc))
            return False
        if self.metrics is not None:
            self.metrics.model_fallbacks.inc()
            self.metrics.set_model(restored.name, restored.version)
        log.error("model %s v%d failed on a batch of %d pairs after it was swapped in (%s); fell back to %s v%d, "
                  "v%d is skipped until its files change", model.name, model.version, pairs, _summary(exc),
                  restored.name, restored.version, model.version)
        return True

    def batch_scored(self, model: ServingModel) -> None:
        """The inference thread's report that a batch succeeded on ``model``, made only while not
        :attr:`serving`: serving again if ``model`` is still the current one."""
        with self._lock:
            if model is not self.current or not self._stuck:
                return
            self._stuck = False
        log.info("model %s v%d serves again", model.name, model.version)

    def start_watching(self) -> None:
        if not self.versioned or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                if self._collect:
                    self._collect = False
                    freeze_heap()  # the version a fallback dropped
                self.check_for_new_version()
            except Exception:  # never let the watcher die: the old model keeps serving
                log.exception("model watcher: unexpected error while polling %s", self.path)

    def _load_version(self, directory: Path) -> ServingModel:
        started = time.monotonic()
        model = ServingModel.load(directory)
        model.features  # metadata must describe the features the model was trained on
        loaded = time.monotonic()
        calls = prove(model, self.max_batch_size)
        log.info(
            "loaded model %s v%d from %s (threshold %.4f, max_frames %d) in %.1f s; proven on %d batches "
            "(sizes %s up to --max-batch-size, frames %s) in %.2f s",
            model.name, model.version, directory, model.threshold, model.max_frames, loaded - started, calls,
            proof_batch_sizes(self.max_batch_size), proof_frame_counts(model.max_frames), time.monotonic() - loaded,
        )
        return model

    def _serve(self, model: ServingModel) -> None:
        with self._lock:
            self.previous = self.current
            self.current = model  # the swap: one reference assignment, read once per batch
            self._stuck = False
        freeze_heap()  # after a swap, this also collects what of the version before is garbage
        if self.metrics is not None:
            self.metrics.model_loads.labels(result="ok").inc()
            self.metrics.set_model(model.name, model.version)

    def _record_failure(self, version: int, directory: Path, exc: Exception) -> None:
        self._failed[version] = _fingerprint_or_empty(directory)
        if self.metrics is not None:
            self.metrics.model_loads.labels(result="error").inc()
        serving = f"; still serving v{self.current.version}" if self.current is not None else ""
        log.error("model version %d at %s is broken, skipped%s: %s", version, directory, serving, exc)


def _fingerprint_or_empty(directory: Path) -> tuple:
    try:
        return _fingerprint(directory)
    except OSError:
        return ()
