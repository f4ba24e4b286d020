"""The trivially cheap SavedModel of ``bench ceiling`` (digitmatch/dev/bench/cheap_model.py): a real
SavedModel with the shipped model's serving contract and features, that the matcher proves and
serves, and whose metadata says what it is."""

from __future__ import annotations

import numpy as np

from digitmatch.consumer.models import ModelManager
from digitmatch.dev.bench.cheap_model import ARCHITECTURE, export_cheap
from digitmatch.features import FeatureParams
from digitmatch.model.metadata import signature_of
from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel, resolve


def test_cheap_model_serves_like_the_shipped_one(tmp_path):
    shipped = ServingModel.load(DEFAULT_MODEL_ROOT)
    features = FeatureParams(**shipped.metadata["features"])
    version_dir = export_cheap(tmp_path / "cheap", features, stands_in_for="digitmatch v1")
    assert resolve(tmp_path / "cheap") == (1, version_dir)

    model = ModelManager(tmp_path / "cheap", max_batch_size=64).load()  # loaded and proven as the matcher does
    assert model.metadata["architecture"] == ARCHITECTURE and "benchmark only" in model.metadata["purpose"]
    assert model.metadata["stands_in_for"] == "digitmatch v1"
    assert model.features == features
    assert signature_of(model) == signature_of(shipped)

    rng = np.random.default_rng(0)
    out = model.predict([rng.normal(size=(n, 13)).astype(np.float32) for n in (1, 40, 93)],
                        rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8))
    assert out["score"].shape == (3,) and out["spoken_digit_probs"].shape == out["written_digit_probs"].shape == (3, 10)
    np.testing.assert_allclose(out["spoken_digit_probs"].sum(axis=1), 1, rtol=1e-5)
