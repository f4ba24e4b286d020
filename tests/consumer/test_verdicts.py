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
