"""The inference thread (consumer/inference.py): batches scored by one version, combined up to
max_pairs, fallback and backoff when a batch fails."""

import logging
import queue
import shutil
import threading
import time
from unittest import mock

import numpy as np

from digitmatch.consumer.batcher import Batch, FlushReason
from digitmatch.consumer.inference import InferenceWorker
from digitmatch.consumer.models import ModelManager
from test_models import LATE_FAILURE_FRAMES, RNG, export_faulty, make_pair, sample, wait_until
from digitmatch.consumer.metrics import MatcherMetrics

def test_worker_scores_each_batch_with_one_version(root, tiny_model_dir, publish_version):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    manager.load()
    batches = queue.Queue(maxsize=2)
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((b, m.version, v)), metrics).start()
    try:
        batches.put(Batch([make_pair(f"p{i}", frames=5 + 20 * i) for i in range(3)], FlushReason.FULL))
        batches.join()
        publish_version(tiny_model_dir, root, 2)
        manager.check_for_new_version()
        batches.put(Batch([make_pair("q")], FlushReason.DEADLINE))
        batches.join()
    finally:
        worker.stop()
    assert [(len(b), version) for b, version, _ in scored] == [(3, 1), (1, 2)]
    assert all(v["model"]["version"] == version for _, version, vs in scored for v in vs)
    assert [v["pair_id"] for v in scored[0][2]] == ["p0", "p1", "p2"]
    assert sample(metrics, "digitmatch_batch_size_count") == 2
    assert sample(metrics, "digitmatch_batch_size_sum") == 4
    assert sample(metrics, "digitmatch_inference_seconds_count") == 2
    assert sample(metrics, "digitmatch_batch_queue_wait_seconds_count") == 4
    assert not worker.is_alive()


def _queued(sizes, prefix="b"):
    """An unbounded queue holding batches of ``sizes`` pairs, named ``<prefix><batch>-<pair>``."""
    batches = queue.Queue()
    for b, size in enumerate(sizes):
        pairs = [make_pair(f"{prefix}{b}-{i}") for i in range(size)]
        batches.put(Batch(pairs, FlushReason.DEADLINE))
    return batches


def test_batches_waiting_for_the_model_are_scored_together_up_to_max_pairs(root):
    """Four batches already queued when the worker starts: 2 + 2 in one call, the 3 that would
    make it 7 > 5 waits and goes with the 1 in the next call; order is kept throughout."""
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    manager.load()
    batches = _queued([2, 2, 3, 1])
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((b, v)), metrics, max_pairs=5).start()
    try:
        batches.join()  # every batch taken counted as done, the one kept back included
    finally:
        worker.stop()
    assert [len(b) for b, _ in scored] == [4, 4]
    assert [[v["pair_id"] for v in vs] for _, vs in scored] == [
        ["b0-0", "b0-1", "b1-0", "b1-1"], ["b2-0", "b2-1", "b2-2", "b3-0"]]
    assert sample(metrics, "digitmatch_batch_size_count") == 2
    assert sample(metrics, "digitmatch_batch_size_sum") == 8
    assert sample(metrics, "digitmatch_batch_queue_wait_seconds_count") == 8
    assert not worker.is_alive()


def test_a_batch_is_never_split_and_a_full_one_goes_alone(root):
    manager = ModelManager(root)
    manager.load()
    batches = _queued([6, 1, 1])
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append(len(b)), max_pairs=5).start()
    try:
        batches.join()
    finally:
        worker.stop()
    assert scored == [6, 2]


def test_the_stop_sentinel_taken_with_waiting_batches_stops_after_scoring_them(root):
    manager = ModelManager(root)
    manager.load()
    batches = _queued([2, 1])
    batches.put(None)
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append(len(b)), max_pairs=256).start()
    worker.join(60)
    assert scored == [3]
    assert not worker.is_alive()
    assert batches.unfinished_tasks == 0


def test_the_next_batch_is_scored_while_the_verdicts_of_one_are_handed_on(root):
    """The verdicts thread holds batch A's verdicts (on_scored blocked): B is scored meanwhile,
    neither counts as done on the queue before its verdicts are handed on, and the order holds."""
    manager = ModelManager(root)
    manager.load()
    batches = queue.Queue()
    calls, handed_on = [], []
    handing_on, release = threading.Event(), threading.Event()
    real_predict = type(manager.current).predict_padded

    def predict(model, mfcc, images):
        calls.append(len(images))
        return real_predict(model, mfcc, images)

    def on_scored(batch, _model, verdicts):
        handed_on.append([v["pair_id"] for v in verdicts])
        handing_on.set()
        assert release.wait(30)

    with mock.patch.object(type(manager.current), "predict_padded", predict):
        worker = InferenceWorker(manager, batches, on_scored, max_pairs=8).start()
        try:
            batches.put(Batch([make_pair("a0"), make_pair("a1")], FlushReason.FULL))
            assert handing_on.wait(30)
            batches.put(Batch([make_pair("b0")], FlushReason.FULL))
            wait_until(lambda: calls == [2, 1])  # B scored while A's verdicts are still being handed on
            assert batches.unfinished_tasks == 2 and handed_on == [["a0", "a1"]]
            release.set()
            batches.join()
        finally:
            release.set()
            worker.stop()
    assert handed_on == [["a0", "a1"], ["b0"]]
    assert not worker.is_alive()


def test_a_failure_handing_verdicts_on_drops_that_batch_only(root, caplog):
    manager = ModelManager(root)
    manager.load()
    batches = _queued([2, 1])
    handed_on = []

    def on_scored(batch, _model, verdicts):
        if len(batch) == 2:
            raise RuntimeError("the outbox is gone")
        handed_on.append([v["pair_id"] for v in verdicts])

    worker = InferenceWorker(manager, batches, on_scored, max_pairs=2).start()
    try:
        batches.join()  # the dropped batch counts as done too
    finally:
        worker.stop()
    assert handed_on == [["b1-0"]]
    assert "verdicts of a batch of 2 pairs dropped" in caplog.text


def test_padding_beyond_max_frames_is_cut(tiny_model_dir):
    """Frames beyond the model's budget do not change the score (pad_batch keeps the first ones)."""
    model = ModelManager(tiny_model_dir).load()
    pair = make_pair("long", frames=model.max_frames)
    longer = np.concatenate([pair.spoken.array, RNG.normal(size=(50, 13)).astype(np.float32)])
    image = pair.written.array[None]
    a = model.predict([pair.spoken.array], image)["score"]
    b = model.predict([longer], image)["score"]
    np.testing.assert_allclose(a, b, rtol=1e-6)


# --------------------------------------------------------------------------- the proof and fallback


def test_a_version_that_fails_on_a_batch_after_the_swap_falls_back_to_the_previous(root, export_model, caplog):
    """The "fails_later" version passes the proof and is swapped in; the first batch with 33 frames
    fails on it: the previous version is restored, scores that batch, and keeps serving."""
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics, max_batch_size=8)
    manager.load()
    export_faulty(export_model, root, 2, "fails_later")
    assert manager.check_for_new_version() is True
    assert manager.current.version == 2 and manager.previous.version == 1
    batches = queue.Queue()
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((b, m.version, v)), metrics).start()
    try:
        batches.put(Batch([make_pair("before", frames=10)], FlushReason.DEADLINE))
        batches.join()
        with caplog.at_level(logging.ERROR):
            batches.put(Batch([make_pair("long", frames=LATE_FAILURE_FRAMES), make_pair("short", frames=5)],
                              FlushReason.DEADLINE))
            batches.join()
        batches.put(Batch([make_pair("after", frames=LATE_FAILURE_FRAMES)], FlushReason.DEADLINE))
        batches.join()
    finally:
        worker.stop()
    assert [(len(b), version) for b, version, _ in scored] == [(1, 2), (2, 1), (1, 1)]
    assert [v["model"]["version"] for _, _, vs in scored for v in vs] == [2, 1, 1, 1]
    assert manager.current.version == 1 and manager.previous is None and manager.serving
    assert "tiny v2 failed on a batch of 2 pairs after it was swapped in" in caplog.text
    assert "fell back to tiny v1, v2 is skipped until its files change" in caplog.text
    assert sample(metrics, "digitmatch_model_fallbacks_total") == 1
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "1"}) == 1
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "2"}) is None
    assert manager.check_for_new_version() is False  # v2 is not swapped in again
    assert manager._collect  # the watcher's next poll collects what is left of v2


def test_a_batch_that_fails_with_nothing_to_fall_back_to_makes_the_model_not_serving(root, export_model, caplog):
    """v1 fails on a batch and has no previous version: not serving (retried with backoff) until a
    fixed version is swapped in, which scores the batch."""
    shutil.rmtree(root / "1")
    export_faulty(export_model, root, 1, "fails_later")
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics, max_batch_size=8)
    manager.load()
    batches = queue.Queue()
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append(m.version), metrics).start()
    try:
        with caplog.at_level(logging.ERROR):
            batches.put(Batch([make_pair("long", frames=LATE_FAILURE_FRAMES)], FlushReason.DEADLINE))
            wait_until(lambda: not manager.serving)
        assert "tiny v1 failed on a batch of 1 pairs and there is no version to fall back to" in caplog.text
        assert sample(metrics, "digitmatch_model_fallbacks_total") == 0
        export_model(root, 2)
        assert manager.check_for_new_version() is True
        assert manager.serving
        batches.join()
    finally:
        worker.stop()
    assert scored == [2]


def test_serving_resumes_when_a_batch_succeeds_after_the_fallback_failed_too(root, tiny_model_dir, publish_version):
    """Failures injected at the ServingModel level: the batch fails on v2, falls back to v1, fails
    there too (not serving), then succeeds on v1 (serving again)."""
    manager = ModelManager(root, max_batch_size=8)
    v1 = manager.load()
    publish_version(tiny_model_dir, root, 2)
    assert manager.check_for_new_version() is True
    v2 = manager.current
    healed = threading.Event()
    real = v1.predict_padded

    def v1_until_healed(mfcc, images):
        if not healed.is_set():
            raise RuntimeError("injected failure")
        return real(mfcc, images)

    batches = queue.Queue()
    scored = []
    with mock.patch.object(v2, "predict_padded", side_effect=RuntimeError("injected")), \
            mock.patch.object(v1, "predict_padded", v1_until_healed):
        worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append(m.version)).start()
        try:
            batches.put(Batch([make_pair("x")], FlushReason.DEADLINE))
            wait_until(lambda: not manager.serving)
            assert manager.current is v1 and manager.previous is None
            healed.set()
            batches.join()
        finally:
            worker.stop()
    assert scored == [1] and manager.serving


def test_a_batch_failing_with_nothing_to_fall_back_to_backs_off_until_abandoned(root, caplog):
    """Retried after 0.5 s, 1 s, 2 s ...; abandon() ends the wait at once, with no further attempt,
    and the batch is not handed on."""
    manager = ModelManager(root, max_batch_size=8)
    v1 = manager.load()
    calls = []

    def failing(mfcc, images):
        calls.append(time.monotonic())
        raise RuntimeError("injected failure")

    batches = queue.Queue()
    scored = []
    with mock.patch.object(v1, "predict_padded", failing), caplog.at_level(logging.ERROR):
        worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append(b)).start()
        try:
            batches.put(Batch([make_pair("x")], FlushReason.DEADLINE))
            wait_until(lambda: len(calls) == 3)  # the third attempt fails: now waiting 2 s
            abandoned = time.monotonic()
            worker.abandon()
            batches.join()
            assert time.monotonic() - abandoned < 1.0
        finally:
            worker.stop()
    assert len(calls) == 3 and scored == [] and not manager.serving
    waited = [b - a for a, b in zip(calls, calls[1:])]
    assert 0.5 <= waited[0] < 0.9 and 1.0 <= waited[1] < 1.4, waited
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert [r.getMessage() for r in retries] == [
        f"inference failed on a batch of 1 pairs (model v1); retrying in {s} s" for s in ("0.5", "1.0", "2.0")]
    assert all("injected failure" in str(r.exc_info[1]) for r in retries)  # with the traceback


def test_a_failure_reported_for_a_version_already_swapped_out_changes_nothing(root, tiny_model_dir, publish_version):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    v1 = manager.load()
    publish_version(tiny_model_dir, root, 2)
    manager.check_for_new_version()
    assert manager.batch_failed(v1, 3, RuntimeError("on the old version")) is True  # retry on the new one
    assert manager.current.version == 2 and manager.previous is v1 and manager.serving
    assert sample(metrics, "digitmatch_model_fallbacks_total") == 0


def test_the_old_version_keeps_deciding_every_batch_size_after_a_fixed_batch_version_is_refused(
        root, export_model):
    manager = ModelManager(root, max_batch_size=8)
    manager.load()
    export_faulty(export_model, root, 2, batch=2)
    export_faulty(export_model, root, 3, "batch_2_in_graph")
    assert manager.check_for_new_version() is False
    batches = _queued([1, 2, 3, 7])
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((len(b), m.version)), max_pairs=1).start()
    try:
        batches.join()
    finally:
        worker.stop()
    assert scored == [(1, 1), (2, 1), (3, 1), (7, 1)]


def test_pcm16_halves_get_the_features_of_the_version_that_scores_them(root, tiny_model_dir, publish_version):
    """v2 is v1's network with other feature parameters in its metadata: a pcm16 half scored after
    the swap has v2's features, and its verdict names v2."""
    import json

    from digitmatch.consumer.join import HalfRecord
    from digitmatch.features import mfcc, pad_batch
    from digitmatch.wire import Half

    manager = ModelManager(root)
    manager.load()
    samples = RNG.integers(-6000, 6000, size=5000, dtype=np.int16)
    pair = make_pair("pcm")
    pair.spoken = HalfRecord(0, 1, "pcm", Half.SPOKEN, samples, b"d", 10.0, 1000, sample_rate=8000)
    batches = queue.Queue()
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((m, v[0])), max_pairs=4).start()
    try:
        batches.put(Batch([pair], FlushReason.DEADLINE))
        batches.join()
        v2 = publish_version(tiny_model_dir, root, 2)
        meta = json.loads((v2 / "metadata.json").read_text())
        meta["features"].update(n_mels=24, normalization="none")
        (v2 / "metadata.json").write_text(json.dumps(meta))
        assert manager.check_for_new_version()
        batches.put(Batch([pair], FlushReason.DEADLINE))
        batches.join()
    finally:
        worker.stop()
    assert [verdict["model"]["version"] for _, verdict in scored] == [1, 2]
    for model, verdict in scored:
        features = mfcc(samples, 8000, model.features)
        expected = model.predict_padded(pad_batch([features], model.max_frames), pair.written.array[None])
        assert verdict["score"] == round(float(expected["score"][0]), 6)
    assert scored[0][0].features != scored[1][0].features
    assert scored[0][1]["score"] != scored[1][1]["score"]
