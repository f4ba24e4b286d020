"""Verdicts from the model's outputs (consumer/verdicts.py)."""

import numpy as np
import pytest
from test_models import make_pair

from digitmatch.consumer.models import ModelManager
from digitmatch.consumer.verdicts import pair_verdicts, unpaired_verdict
from digitmatch.wire import Half


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


def _validated(pair, score, threshold, spoken_pred, written_pred, started, inference_s, decided_ms):
    """The verdict as the matcher built it before verdict documents: six validated pydantic models."""
    from digitmatch.wire import Latencies, ModelRef, Timestamps, Truth, Verdict

    first, second = (pair.spoken, pair.written) if pair.spoken.seen <= pair.written.seen else (pair.written, pair.spoken)
    stamps = [h.produced_ms for h in (pair.spoken, pair.written) if h.produced_ms is not None]
    produced = min(stamps) if stamps else None
    s, w = pair.spoken.digit, pair.written.digit
    match = score >= threshold
    return Verdict(
        pair_id=pair.pair_id, outcome="match" if match else "no_match", score=score, threshold=threshold,
        model=ModelRef(name="m", version=3),
        predicted=None if spoken_pred is None else Truth(spoken=spoken_pred, written=written_pred),
        truth=None if s is None and w is None else Truth(spoken=s, written=w),
        correct=None if s is None or w is None else match == (s == w),
        timestamps=Timestamps(produced_ms=produced, first_seen_ms=first.seen_ms, joined_ms=second.seen_ms,
                              decided_ms=decided_ms),
        latency_ms=Latencies(join_wait=(second.seen - first.seen) * 1000,
                             queue_wait=max(0.0, started - second.seen) * 1000, inference=inference_s * 1000,
                             end_to_end=None if produced is None else max(0, decided_ms - produced)))


@pytest.mark.parametrize("heads", [True, False])
def test_verdict_bytes_are_those_of_the_validated_verdict(heads):
    """verdict_bytes(document) == Verdict.to_bytes(), byte for byte, over scores near 0 and 1
    (exponent notation), missing digits and produce times in either half, either arrival order."""
    from types import SimpleNamespace

    from digitmatch.consumer.verdicts import verdict_bytes, verdict_documents

    rng = np.random.default_rng(5)
    n = 400
    pairs = []
    for i in range(n):
        digits = [None if rng.random() < 0.2 else int(rng.integers(10)) for _ in range(2)]
        produced = [None if rng.random() < 0.3 else int(rng.integers(0, 2000)) for _ in range(2)]
        pair = make_pair(f"p{i}", digits[0], digits[1], frames=3, produced_ms=produced[0], seen=float(rng.random()))
        pair.written.produced_ms = produced[1]
        pair.written.seen = float(rng.random())  # either half first
        pairs.append(pair)
    raw = np.concatenate([rng.random(n - 6), [0.0, 1.0, 0.5, 1e-7, 3e-6, 0.9999996]]).astype(np.float32)
    outputs = {"score": raw}
    if heads:
        outputs |= {"spoken_digit_probs": rng.random((n, 10)).astype(np.float32),
                    "written_digit_probs": rng.random((n, 10)).astype(np.float32)}
    model = SimpleNamespace(name="m", version=3, threshold=0.5)
    documents = verdict_documents(pairs, outputs, model, started=0.75, inference_s=0.0123, decided_ms=2100)
    scores = [round(x, 6) for x in raw.tolist()]
    for i, (pair, document) in enumerate(zip(pairs, documents)):
        sp = int(outputs["spoken_digit_probs"][i].argmax()) if heads else None
        wp = int(outputs["written_digit_probs"][i].argmax()) if heads else None
        want = _validated(pair, scores[i], 0.5, sp, wp, 0.75, 0.0123, 2100).to_bytes()
        assert verdict_bytes(document) == want, i
    assert pair_verdicts(pairs, outputs, model, 0.75, 0.0123, decided_ms=2100)[0].to_bytes() == verdict_bytes(documents[0])
