"""Loading, proving, swapping and falling back between model versions (consumer/models.py)."""

import gc
import json
import logging
import shutil
import time
import weakref
from unittest import mock

import numpy as np
import pytest

from digitmatch.consumer.models import (
    ModelManager,
    check_outputs,
    freeze_heap,
    proof_batch_sizes,
    proof_frame_counts,
    prove,
)
from digitmatch.consumer.join import HalfRecord, JoinedPair, digest
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.model.serving import ModelError, ServingModel
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


def wait_until(condition, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- faulty versions
# Real SavedModels that break the serving contract in one way each: the tiny model exported by the
# project's exporter, whose serving function (digitmatch.model.export.serving_function) is wrapped
# in one that declares a fixed batch (``batch``) and/or changes what the graph computes (``fault``).

LATE_FAILURE_FRAMES = 33  # the frame count on which the "fails_later" version fails


def _faults():
    import tensorflow as tf

    def assert_op(check):
        def fault(mfcc, result):
            with tf.control_dependencies([check(mfcc)]):
                return {name: tf.identity(value) for name, value in result.items()}
        return fault

    def score(change):
        def fault(mfcc, result):
            return {**result, "score": change(mfcc, result["score"])}
        return fault

    return {
        # what an attacker exported: the batch dimension hidden in the graph, spec left open
        "batch_2_in_graph": score(lambda mfcc, s: tf.reshape(s, [2])),
        "fails_on_one_frame": assert_op(lambda mfcc: tf.debugging.assert_greater(tf.shape(mfcc)[1], 1)),
        "nan_at_max_frames": score(lambda mfcc, s: tf.where(tf.shape(mfcc)[1] >= 40, s * float("nan"), s)),  # TINY
        "one_score_per_batch": score(lambda mfcc, s: tf.reduce_mean(s, keepdims=True)),
        "score_out_of_range": score(lambda mfcc, s: s + 1.5),
        "nan_on_non_zero_input": score(lambda mfcc, s: s / tf.cast(tf.reduce_all(mfcc == 0), tf.float32)
                                       * tf.cast(tf.reduce_all(mfcc == 0), tf.float32)),
        # passes the proof (which never tries 33 frames), fails on a real batch that has them
        "fails_later": assert_op(
            lambda mfcc: tf.debugging.assert_none_equal(tf.shape(mfcc)[1], LATE_FAILURE_FRAMES)),
    }


def export_faulty(export_model, root, version, fault: str | None = None, *, batch: int | None = None):
    """The tiny model (``export_model``: the fixture) as ``root/<version>``, with ``fault`` (a key
    of ``_faults()``) in its graph and its inputs declared ``[batch, ...]``."""
    import tensorflow as tf

    import digitmatch.model.export as exporter

    real = exporter.serving_function

    def serving_function(model, max_frames, fixed_frames=None):
        inner = real(model, max_frames, fixed_frames)
        change = _faults()[fault] if fault else (lambda mfcc, result: result)

        @tf.function(input_signature=[tf.TensorSpec([batch, None, 13], tf.float32, name="mfcc"),
                                      tf.TensorSpec([batch, 28, 28], tf.uint8, name="image")])
        def serve(mfcc, image):
            return change(mfcc[:, :max_frames, :], inner(mfcc, image))

        return serve

    with mock.patch.object(exporter, "serving_function", serving_function):
        return export_model(root, version)


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


def test_the_proof_tries_small_odd_prime_and_largest_batches_at_short_middle_and_full_length():
    assert proof_batch_sizes(256) == [1, 2, 3, 7, 256]
    assert proof_batch_sizes(5) == [1, 2, 3, 5]
    assert proof_batch_sizes(1) == [1]
    assert proof_frame_counts(93) == [1, 47, 93]
    assert proof_frame_counts(40) == [1, 20, 40]
    assert proof_frame_counts(1) == [1]
    assert LATE_FAILURE_FRAMES not in proof_frame_counts(40)  # what "fails_later" relies on


def test_outputs_are_checked_for_dtype_shape_finiteness_and_range():
    good = {"score": np.full(3, 0.5, np.float32), "spoken_digit_probs": np.full((3, 10), 0.1, np.float32)}
    assert check_outputs(good, 3) is None
    assert check_outputs({"score": np.full(3, 0.5, np.float32)}, 3) is None  # no digit heads
    assert "no output 'score'" in check_outputs({}, 3)
    assert "float64 [3]" in check_outputs({"score": np.full(3, 0.5)}, 3)
    assert "float32 [1]" in check_outputs({"score": np.full(1, 0.5, np.float32)}, 3)
    assert "[3, 9]" in check_outputs({**good, "spoken_digit_probs": np.zeros((3, 9), np.float32)}, 3)
    assert "not finite" in check_outputs({"score": np.array([0.5, np.nan, 0.5], np.float32)}, 3)
    assert "leaves [0, 1]" in check_outputs({"score": np.array([0.5, 1.5, 0.5], np.float32)}, 3)


def test_the_proof_scores_every_size_at_every_frame_count_with_non_zero_input(tiny_model_dir):
    model = ModelManager(tiny_model_dir).load()
    calls = []
    real = model.predict_padded

    def spy(mfcc, images):
        calls.append((mfcc.shape, images.shape, bool(mfcc.any()), bool(images.any())))
        return real(mfcc, images)

    with mock.patch.object(model, "predict_padded", spy):
        assert prove(model, max_batch_size=16) == 16
    # the last: the features of 4 pcm16 recordings (the longest beyond the budget: 40 frames)
    assert {(m[0], m[1]) for m, _, _, _ in calls} == {(b, f) for b in (1, 2, 3, 7, 16) for f in (1, 20, 40)} | {(4, 40)}
    assert calls[-1][0] == (4, 40, 13)
    assert all(i == (m[0], 28, 28) and m[2] == 13 and non_zero and pixels for m, i, non_zero, pixels in calls)


def test_the_proof_rejects_a_version_whose_feature_parameters_do_not_compute(tiny_model_dir, tmp_path):
    broken = tmp_path / "1"
    shutil.copytree(tiny_model_dir, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    meta["features"]["fmin_hz"] = 5000.0  # above Nyquist (4 kHz): no mel filterbank
    (broken / "metadata.json").write_text(json.dumps(meta))
    model = ServingModel.load(broken)
    with pytest.raises(ModelError, match="fails on a batch of pcm16 recordings' features"):
        prove(model, max_batch_size=4)


FAULTS = [  # (fault, declared batch, what the error says)
    (None, 2, "'mfcc' is declared [2, None, 13]"),  # the attacker's version: rejected at load
    ("batch_2_in_graph", None, "fails on a batch of 1 x 1 frames"),  # the same, hidden: the proof
    ("fails_on_one_frame", None, "fails on a batch of 1 x 1 frames"),
    ("nan_at_max_frames", None, "on a batch of 1 x 40 frames, output 'score' is not finite"),
    ("one_score_per_batch", None, "on a batch of 2 x 1 frames, output 'score' is float32 [1]"),
    ("score_out_of_range", None, "output 'score' leaves [0, 1]"),
    ("nan_on_non_zero_input", None, "output 'score' is not finite"),  # a dummy batch of zeros passes
]


@pytest.mark.parametrize("fault,batch,error", FAULTS, ids=[f[0] or "batch_2_declared" for f in FAULTS])
def test_a_new_version_that_cannot_serve_every_batch_is_never_swapped_in(
        root, export_model, fault, batch, error, caplog):
    metrics = MatcherMetrics()
    manager = ModelManager(root, metrics, max_batch_size=16)
    old = manager.load()
    export_faulty(export_model, root, 2, fault, batch=batch)
    with caplog.at_level(logging.ERROR):
        assert manager.check_for_new_version() is False
    assert manager.current is old and manager.previous is None and manager.serving
    assert "model version 2" in caplog.text and "still serving v1" in caplog.text and error in caplog.text
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "ok"}) == 1
    assert sample(metrics, "digitmatch_model_info", {"name": "tiny", "version": "1"}) == 1
    assert manager.check_for_new_version() is False  # not tried again while its files are unchanged
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1


def test_start_up_serves_the_highest_version_that_passes_the_proof(root, export_model):
    export_faulty(export_model, root, 2, "batch_2_in_graph")
    metrics = MatcherMetrics()
    assert ModelManager(root, metrics).load().version == 1
    assert sample(metrics, "digitmatch_model_loads_total", {"result": "error"}) == 1
