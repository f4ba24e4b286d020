import gc
import logging
import queue
import shutil
import time
import weakref

import numpy as np
import pytest

from digitmatch.consumer.batcher import Batch, FlushReason
from digitmatch.consumer.inference import InferenceWorker, ModelManager, freeze_heap, pair_verdicts, unpaired_verdict
from digitmatch.consumer.join import HalfRecord, JoinedPair, digest
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.model.serving import ModelError
from digitmatch.wire import Half

RNG = np.random.default_rng(0)


def make_pair(pair_id, spoken_digit=None, written_digit=None, frames=30, produced_ms=None, seen=10.0):
    mfcc = RNG.normal(size=(frames, 13)).astype(np.float32)
    image = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
    spoken = HalfRecord(0, 1, pair_id, Half.SPOKEN, mfcc, digest(mfcc.tobytes()), seen, 1000, spoken_digit, produced_ms)
    written = HalfRecord(0, 2, pair_id, Half.WRITTEN, image, digest(image.tobytes()), seen + 0.5, 1500,
                         written_digit, None)
    return JoinedPair(spoken, written)


def sample(metrics, name, labels=None):
    return metrics.registry.get_sample_value(name, labels or {})


@pytest.fixture
def root(tmp_path, tiny_model_dir, publish_version):
    publish_version(tiny_model_dir, tmp_path, 1)
    return tmp_path


def test_serves_the_highest_version(root, tiny_model_dir, publish_version):
    publish_version(tiny_model_dir, root, 3)
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    model = manager.load()
    assert model.version == 3 and manager.current is model
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "3"}) == 1
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "ok"}) == 1


def test_a_single_version_directory_is_served_without_watching(tiny_model_dir):
    manager = ModelManager(tiny_model_dir)
    assert manager.load().version == 1
    assert not manager.versioned
    assert manager.check_for_new_version() is False


def test_the_served_model_is_kept_out_of_full_collections():
    """freeze_heap: garbage is collected first, and what was frozen is collectable again after the
    next call (a swapped-out model's cycles)."""

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    try:
        garbage = cycle()
        freeze_heap()
        assert garbage() is None and gc.get_freeze_count() > 0
        kept = Node()
        kept.self = kept
        ref = weakref.ref(kept)
        freeze_heap()
        del kept  # a frozen cycle becomes garbage: a full collection cannot see it ...
        gc.collect()
        assert ref() is not None
        freeze_heap()  # ... until the next freeze, which unfreezes first
        assert ref() is None
    finally:
        gc.unfreeze()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ModelManager(tmp_path / "nope").load()
    with pytest.raises(ModelError, match="holds no SavedModel"):
        ModelManager(tmp_path).load()


def test_hot_swap_to_a_new_version(root, tiny_model_dir, publish_version):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    old = manager.load()
    assert manager.check_for_new_version() is False
    publish_version(tiny_model_dir, root, 2)
    assert manager.check_for_new_version() is True
    assert manager.current.version == 2 and manager.current is not old
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "2"}) == 1
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "1"}) is None
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "ok"}) == 2


def test_broken_new_version_keeps_the_old_one(root, tiny_model_dir, publish_version, caplog):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    manager.load()
    broken = publish_version(tiny_model_dir, root, 2)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    with caplog.at_level(logging.ERROR):
        assert manager.check_for_new_version() is False
    assert "version 2" in caplog.text and "still serving v1" in caplog.text
    assert manager.current.version == 1
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1
    # not retried while its files are unchanged
    assert manager.check_for_new_version() is False
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1
    # fixed in place: picked up
    shutil.copy(tiny_model_dir / "saved_model.pb", broken / "saved_model.pb")
    assert manager.check_for_new_version() is True
    assert manager.current.version == 2


def test_startup_falls_back_below_a_broken_highest_version(root, tiny_model_dir, publish_version):
    broken = publish_version(tiny_model_dir, root, 2)
    shutil.rmtree(broken / "variables")
    metrics = MatcherMetrics()
    assert ModelManager(root, metrics).load().version == 1
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1


def test_watcher_thread_swaps_between_batches(root, tiny_model_dir, publish_version):
    manager = ModelManager(root, poll_s=0.05)
    manager.load()
    manager.start_watching()
    try:
        publish_version(tiny_model_dir, root, 5)
        deadline = time.monotonic() + 30
        while manager.current.version != 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.current.version == 5
    finally:
        manager.stop()


def test_verdicts_of_a_batch(tiny_model_dir):
    model = ModelManager(tiny_model_dir).load()
    pairs = [make_pair("a", 3, 3, frames=10, produced_ms=900), make_pair("b", 3, 4, frames=70), make_pair("c")]
    mfcc = [p.spoken.array for p in pairs]
    outputs = model.predict(mfcc, np.stack([p.written.array for p in pairs]))
    verdicts = pair_verdicts(pairs, outputs, model, started=10.7, inference_s=0.004)
    assert [v.pair_id for v in verdicts] == ["a", "b", "c"]
    for v, raw in zip(verdicts, outputs["score"]):
        assert v.score == round(float(raw), 6)
        assert v.outcome == ("match" if v.score >= 0.5 else "no_match")
        assert v.threshold == 0.5 and v.model.name == "tiny" and v.model.version == 1
        assert 0 <= v.predicted.spoken <= 9 and 0 <= v.predicted.written <= 9
        assert v.latency_ms.join_wait == pytest.approx(500)
        assert v.latency_ms.queue_wait == pytest.approx(200)
        assert v.latency_ms.inference == pytest.approx(4)
        assert v.timestamps.first_seen_ms == 1000 and v.timestamps.joined_ms == 1500
    a, b, c = verdicts
    assert a.truth.spoken == 3 and a.truth.written == 3 and a.correct == (a.outcome == "match")
    assert b.correct == (b.outcome == "no_match")
    assert a.timestamps.produced_ms == 900 and a.latency_ms.end_to_end > 0
    assert c.truth is None and c.correct is None and c.latency_ms.end_to_end is None


def test_unpaired_verdict(tiny_model_dir):
    model = ModelManager(tiny_model_dir).load()
    pair = make_pair("x", spoken_digit=7, produced_ms=5)
    v = unpaired_verdict(pair.spoken, model)
    assert v.outcome == "unpaired" and v.score is None and v.missing_half is Half.WRITTEN
    assert v.truth.spoken == 7 and v.truth.written is None and v.correct is None
    assert v.latency_ms.inference is None


def test_model_without_digit_heads(tmp_path, export_model):
    model = ModelManager(export_model(tmp_path, 1, heads=False)).load()
    pairs = [make_pair("a")]
    outputs = model.predict([pairs[0].spoken.array], pairs[0].written.array[None])
    assert pair_verdicts(pairs, outputs, model, 0.0, 0.0)[0].predicted is None


def test_worker_scores_each_batch_with_one_version(root, tiny_model_dir, publish_version):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics)
    manager.load()
    batches = queue.Queue(maxsize=2)
    scored = []
    worker = InferenceWorker(manager, batches, lambda b, m, v: scored.append((b, m.version, v)), metrics).start()
    try:
        batches.put(Batch([make_pair(f"p{i}", frames=5 + 20 * i) for i in range(3)], FlushReason.FULL, 0.0, 0.0))
        batches.join()
        publish_version(tiny_model_dir, root, 2)
        manager.check_for_new_version()
        batches.put(Batch([make_pair("q")], FlushReason.DEADLINE, 0.0, 0.0))
        batches.join()
    finally:
        worker.stop()
    assert [(len(b), version) for b, version, _ in scored] == [(3, 1), (1, 2)]
    assert all(v.model.version == version for _, version, vs in scored for v in vs)
    assert [v.pair_id for v in scored[0][2]] == ["p0", "p1", "p2"]
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
        batches.put(Batch(pairs, FlushReason.DEADLINE, float(b), float(b) + 0.02))
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
    assert [[v.pair_id for v in vs] for _, vs in scored] == [
        ["b0-0", "b0-1", "b1-0", "b1-1"], ["b2-0", "b2-1", "b2-2", "b3-0"]]
    assert [(b.opened, b.flushed) for b, _ in scored] == [(0.0, 1.02), (2.0, 3.02)]
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
    worker._thread.join(60)
    assert scored == [3]
    assert not worker.is_alive()
    assert batches.unfinished_tasks == 0


def test_padding_beyond_max_frames_is_cut(tiny_model_dir):
    """Frames beyond the model's budget do not change the score (pad_batch keeps the first ones)."""
    model = ModelManager(tiny_model_dir).load()
    pair = make_pair("long", frames=model.max_frames)
    longer = np.concatenate([pair.spoken.array, RNG.normal(size=(50, 13)).astype(np.float32)])
    image = pair.written.array[None]
    a = model.predict([pair.spoken.array], image)["score"]
    b = model.predict([longer], image)["score"]
    np.testing.assert_allclose(a, b, rtol=1e-6)
