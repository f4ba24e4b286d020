"""Serving the SavedModel: loading, the proof, version hot swap, fallback, and the inference thread.

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
  contract's dtype and shape, is finite, and scores and digit probabilities lie in [0, 1]. It
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
import queue
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from digitmatch.consumer.batcher import Batch, combine
from digitmatch.consumer.join import HalfRecord, JoinedPair
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.features import N_MFCC, pad_batch
from digitmatch.model.serving import ModelError, ServingModel, is_version_dir, versions
from digitmatch.wire import Half, Latencies, ModelRef, Timestamps, Truth, Verdict, now_ms

log = logging.getLogger(__name__)

SCORE_DECIMALS = 6


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


def prove(model: ServingModel, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> int:
    """Score one batch of each size of :func:`proof_batch_sizes` at each frame count of
    :func:`proof_frame_counts`, checking each result (:func:`check_outputs`); raise
    :class:`ModelError` at the first that fails. Also the warm-up: the first real batch pays no
    tracing or allocation cost. Returns the number of batches scored."""
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


# --------------------------------------------------------------------------- verdicts


def _truth(spoken: int | None, written: int | None) -> Truth | None:
    return None if spoken is None and written is None else Truth(spoken=spoken, written=written)


def _produced_ms(*halves: HalfRecord) -> int | None:
    stamps = [h.produced_ms for h in halves if h.produced_ms is not None]
    return min(stamps) if stamps else None


def pair_verdicts(
    pairs: list[JoinedPair],
    outputs: dict[str, np.ndarray],
    model: ServingModel,
    started: float,
    inference_s: float,
) -> list[Verdict]:
    """One verdict per scored pair. ``started``: monotonic time the batch entered the model.
    (Scores and predicted digits are read from the arrays once per batch, not per pair.)"""
    decided_ms = now_ms()
    threshold = model.threshold
    ref = ModelRef(name=model.name, version=model.version)
    scores = [round(score, SCORE_DECIMALS) for score in outputs["score"].tolist()]
    spoken_pred = _argmax_rows(outputs.get("spoken_digit_probs"), len(pairs))
    written_pred = _argmax_rows(outputs.get("written_digit_probs"), len(pairs))
    has_predictions = "spoken_digit_probs" in outputs or "written_digit_probs" in outputs
    inference_ms = inference_s * 1000
    verdicts = []
    for i, pair in enumerate(pairs):
        score = scores[i]
        match = score >= threshold
        spoken_digit, written_digit = pair.spoken.digit, pair.written.digit
        correct = None
        if spoken_digit is not None and written_digit is not None:
            correct = match == (spoken_digit == written_digit)
        produced = _produced_ms(pair.spoken, pair.written)
        first, second = pair.first, pair.second
        verdicts.append(Verdict(
            pair_id=pair.pair_id,
            outcome="match" if match else "no_match",
            score=score,
            threshold=threshold,
            model=ref,
            predicted=Truth(spoken=spoken_pred[i], written=written_pred[i]) if has_predictions else None,
            truth=_truth(spoken_digit, written_digit),
            correct=correct,
            timestamps=Timestamps(
                produced_ms=produced, first_seen_ms=first.seen_ms, joined_ms=second.seen_ms, decided_ms=decided_ms
            ),
            latency_ms=Latencies(
                join_wait=(second.seen - first.seen) * 1000,
                queue_wait=max(0.0, started - pair.joined) * 1000,
                inference=inference_ms,
                end_to_end=None if produced is None else max(0, decided_ms - produced),
            ),
        ))
    return verdicts


def _argmax_rows(probs: np.ndarray | None, n: int) -> list[int | None]:
    """The predicted digit of each row, or None for each pair when the model has no such head."""
    return [None] * n if probs is None else probs.argmax(axis=1).tolist()


def unpaired_verdict(half: HalfRecord, model: ServingModel) -> Verdict:
    """The verdict for a half whose partner never came (TTL, or evicted at the pending bound)."""
    decided_ms = now_ms()
    return Verdict(
        pair_id=half.pair_id,
        outcome="unpaired",
        score=None,
        threshold=model.threshold,
        model=ModelRef(name=model.name, version=model.version),
        missing_half=half.half.other,
        truth=_truth(
            half.digit if half.half is Half.SPOKEN else None, half.digit if half.half is Half.WRITTEN else None
        ),
        timestamps=Timestamps(produced_ms=half.produced_ms, first_seen_ms=half.seen_ms, decided_ms=decided_ms),
        latency_ms=Latencies(end_to_end=None if half.produced_ms is None else max(0, decided_ms - half.produced_ms)),
    )


# --------------------------------------------------------------------------- the inference thread

OnScored = Callable[[Batch[JoinedPair], ServingModel, list[Verdict]], None]


class InferenceWorker:
    """Takes batches from a bounded queue, scores them, hands the verdicts to ``on_scored``.

    Batches that are already waiting when the model becomes free are scored in one call, as long
    as together they hold at most ``max_pairs`` pairs (the matcher passes ``--max-batch-size``);
    ``on_scored`` then gets the combined batch. A batch that would not fit waits for the next call.
    ``max_pairs`` should not exceed the manager's ``max_batch_size`` (the largest batch proven).

    A call that fails is reported to the manager (:meth:`ModelManager.batch_failed`): retried at
    once on the version it fell back to, else after a backoff (0.5 s doubling to 30 s) until it
    succeeds or :meth:`abandon` is called.

    ``None`` in the queue stops the worker (after the batches taken before it). ``queue.join()``
    waits until every batch put so far has been scored and handed on (the matcher uses it to drain
    on a rebalance and at shutdown).
    """

    def __init__(
        self,
        manager: ModelManager,
        batches: "queue.Queue[Batch[JoinedPair] | None]",
        on_scored: OnScored,
        metrics: MatcherMetrics | None = None,
        max_pairs: int = 1,
    ):
        self.manager = manager
        self.batches = batches
        self.on_scored = on_scored
        self.metrics = metrics
        self.max_pairs = max_pairs
        if max_pairs > manager.max_batch_size:
            log.warning("the inference worker sends up to %d pairs a call, the model is proven up to %d",
                        max_pairs, manager.max_batch_size)
        self._next: Batch[JoinedPair] | None = None  # taken from the queue, did not fit the last call
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    def start(self) -> "InferenceWorker":
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 60) -> None:
        """Finish the batches already queued, then stop."""
        self.batches.put(None)
        self._thread.join(timeout)

    def abandon(self) -> None:
        """Stop retrying a failing batch (its pairs stay uncommitted and are read again later)."""
        self._abandon.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        if self.metrics is not None:
            self.metrics.threads.assign("inference")
        stopping = False
        while not stopping:
            taken = self._take()
            stopping = taken[-1] is None  # the stop sentinel only ever ends the list
            call = taken[:-1] if stopping else taken
            try:
                if call:
                    self._score(combine(call))
            except Exception:
                log.exception("inference thread: batch of %d pairs dropped", sum(map(len, call)))
            finally:
                for _ in taken:
                    self.batches.task_done()

    def _take(self) -> "list[Batch[JoinedPair] | None]":
        """What the next model call scores, as got from the queue (the stop sentinel included, so
        that each gets its ``task_done``): the next batch, waiting for it, then those already
        queued while they fit in ``max_pairs``. One that does not fit is kept for the next call."""
        first = self._next if self._next is not None else self.batches.get()
        self._next = None
        taken = [first]
        size = 0 if first is None else len(first)
        while first is not None and size < self.max_pairs:
            try:
                more = self.batches.get_nowait()
            except queue.Empty:
                break
            if more is None:
                taken.append(more)
                break
            if size + len(more) > self.max_pairs:
                self._next = more
                break
            taken.append(more)
            size += len(more)
        return taken

    def _score(self, batch: Batch[JoinedPair]) -> None:
        """Score ``batch`` on one version (retried as the class docstring says) and hand it on."""
        delay = 0.5
        while True:
            model = self.manager.current  # one version for the whole batch
            started = time.monotonic()
            try:
                mfcc = pad_batch([p.spoken.array for p in batch.items], model.max_frames)
                images = np.stack([p.written.array for p in batch.items])
                outputs = model.predict_padded(mfcc, images)
                break
            except Exception as exc:
                if self.manager.batch_failed(model, len(batch), exc):
                    continue
                log.exception("inference failed on a batch of %d pairs (model v%d); retrying in %.1f s",
                              len(batch), model.version, delay)
                if self._abandon.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
        inference_s = time.monotonic() - started
        if not self.manager.serving:
            self.manager.batch_scored(model)
        verdicts = pair_verdicts(batch.items, outputs, model, started, inference_s)
        if self.metrics is not None:
            m = self.metrics
            m.inference.observe(inference_s)
            m.batch_size.observe(len(batch))
            for pair, verdict in zip(batch.items, verdicts):
                m.queue_wait.observe(max(0.0, started - pair.joined))
                if verdict.latency_ms.end_to_end is not None:
                    m.end_to_end.observe(verdict.latency_ms.end_to_end / 1000)
        self.on_scored(batch, model, verdicts)
