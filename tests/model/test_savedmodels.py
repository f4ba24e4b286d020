"""The shipped model (model/savedmodels/digitmatch): current feature settings, serving contract,
and quality on held-out pairs (inference only)."""

from __future__ import annotations

import numpy as np
import pytest

from digitmatch.features import FeatureParams
from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel, resolve

# Measured on the shipped v1 (docs/model.md): ~0.99 balanced accuracy on 2,000 held-out 50/50 pairs.
MIN_BALANCED_ACCURACY = 0.95
MIN_DIGIT_ACCURACY = 0.93


@pytest.fixture(scope="module")
def shipped() -> ServingModel:
    return ServingModel.load(DEFAULT_MODEL_ROOT)


def test_shipped_model_uses_the_current_feature_code(shipped):
    assert shipped.features == FeatureParams()
    meta = shipped.metadata
    assert meta["architecture"] == "improved"
    assert meta["training"]["split"] == "recording"
    assert resolve(DEFAULT_MODEL_ROOT)[1] == shipped.path


def test_shipped_model_is_small(shipped):
    size = sum(p.stat().st_size for p in shipped.path.rglob("*") if p.is_file())
    assert size < 5_000_000


def test_shipped_model_quality_on_heldout_pairs(shipped):
    from digitmatch.data.pairs import make_pairs
    from digitmatch.data.sample import load_heldout
    from digitmatch.model.evaluation import pair_metrics, score_pairs

    recs, images, _source = load_heldout()
    frames = recs.mfcc(shipped.features)
    pairs = make_pairs(recs.digits, images.labels, 2000, 0.5, 11)
    outputs = score_pairs(shipped, frames, images.images, pairs)
    metrics = pair_metrics(outputs, pairs, recs.digits, images.labels, shipped.threshold)
    assert metrics["balanced_accuracy"] >= MIN_BALANCED_ACCURACY, metrics
    assert metrics["spoken_digit_accuracy"] >= MIN_DIGIT_ACCURACY, metrics
    assert metrics["written_digit_accuracy"] >= MIN_DIGIT_ACCURACY, metrics
    assert outputs["score"].dtype == np.float32 and outputs["score"].shape == (2000,)
