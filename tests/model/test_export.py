"""Export round trip: the SavedModel, loaded with plain ``tf.saved_model.load``, computes what the
Keras model computes, for any batch size and frame count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitmatch.features import FeatureParams
from digitmatch.model import architecture
from digitmatch.model.export import export, next_version, serving_function

FEATURES = FeatureParams()


def _inputs(batch: int, frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mfcc = rng.normal(size=(batch, frames, 13)).astype(np.float32)
    image = rng.integers(0, 256, size=(batch, 28, 28), dtype=np.uint8)
    return mfcc, image


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both architectures with random weights, exported to ``<tmp>/<arch>/1``."""
    import keras

    keras.utils.set_random_seed(7)
    out = {}
    for arch in architecture.ARCHITECTURES:
        model = architecture.build(arch)
        root = tmp_path_factory.mktemp(arch) / "digitmatch"
        fixed = architecture.SEED_FRAMES if arch == "seed" else None
        meta = {"name": "digitmatch", "architecture": arch, "parameters": model.count_params(), "threshold": 0.5}
        out[arch] = (model, export(model, root, None, meta, FEATURES, fixed_frames=fixed))
    return out


def _signature(version_dir):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    return loaded, loaded.signatures["serving_default"]


@pytest.mark.parametrize("batch,frames", [(1, 1), (4, 37), (9, 93)])
def test_improved_savedmodel_agrees_with_keras(exported, batch, frames):
    import tensorflow as tf

    model, version_dir = exported["improved"]
    _keep, fn = _signature(version_dir)
    mfcc, image = _inputs(batch, frames, seed=frames)
    got = fn(mfcc=tf.constant(mfcc), image=tf.constant(image))
    want = model({"mfcc": mfcc, "image": image}, training=False)
    assert got["score"].shape == (batch,)
    np.testing.assert_allclose(got["score"].numpy(), np.asarray(want["score"]).ravel(), atol=1e-5)
    for head in ("spoken_digit_probs", "written_digit_probs"):
        assert got[head].shape == (batch, 10)
        np.testing.assert_allclose(got[head].numpy(), np.asarray(want[head]), atol=1e-5)


@pytest.mark.parametrize("frames", [5, 93, 120])
def test_seed_savedmodel_pads_and_truncates_to_93_frames(exported, frames):
    import tensorflow as tf

    model, version_dir = exported["seed"]
    _keep, fn = _signature(version_dir)
    mfcc, image = _inputs(3, frames, seed=frames)
    fixed = np.zeros((3, 93, 13), np.float32)
    fixed[:, : min(frames, 93)] = mfcc[:, :93]
    got = fn(mfcc=tf.constant(mfcc), image=tf.constant(image))
    want = model({"mfcc": fixed, "image": image}, training=False)
    assert set(got) == {"score"}
    np.testing.assert_allclose(got["score"].numpy(), np.asarray(want["score"]).ravel(), atol=1e-5)


def test_frames_beyond_max_frames_are_ignored(exported):
    import tensorflow as tf

    _model, version_dir = exported["improved"]
    _keep, fn = _signature(version_dir)
    mfcc, image = _inputs(2, FEATURES.max_frames + 30)
    long = fn(mfcc=tf.constant(mfcc), image=tf.constant(image))["score"].numpy()
    cut = fn(mfcc=tf.constant(mfcc[:, : FEATURES.max_frames]), image=tf.constant(image))["score"].numpy()
    np.testing.assert_allclose(long, cut, atol=1e-6)


def test_signature_has_named_dynamic_inputs_and_outputs(exported):
    import tensorflow as tf

    _model, version_dir = exported["improved"]
    _keep, fn = _signature(version_dir)
    _, inputs = fn.structured_input_signature
    assert inputs["mfcc"].dtype == tf.float32 and inputs["mfcc"].shape.as_list() == [None, None, 13]
    assert inputs["image"].dtype == tf.uint8 and inputs["image"].shape.as_list() == [None, 28, 28]
    outputs = fn.structured_outputs
    assert outputs["score"].shape.as_list() == [None]
    assert outputs["spoken_digit_probs"].shape.as_list() == [None, 10]


def test_metadata_is_written_beside_the_savedmodel(exported):
    model, version_dir = exported["improved"]
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert meta["version"] == 1 and version_dir.name == "1"
    assert meta["architecture"] == "improved"
    assert meta["parameters"] == model.count_params()
    assert FeatureParams(**meta["features"]) == FEATURES
    assert set(meta["inputs"]) == {"mfcc", "image"}
    assert set(meta["outputs"]) == {"score", "spoken_digit_probs", "written_digit_probs"}
    assert not [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_versions_count_up(exported, tmp_path):
    model, version_dir = exported["seed"]
    root = version_dir.parent
    assert next_version(root) == 2
    assert next_version(tmp_path / "empty") == 1
    with pytest.raises(ValueError, match="positive"):
        export(model, tmp_path / "x", 0, {}, FEATURES)


def test_serving_function_keeps_keras_outputs(exported):
    model, _ = exported["improved"]
    fn = serving_function(model, max_frames=93)
    mfcc, image = _inputs(2, 10)
    assert set(fn(mfcc, image)) == {"score", "spoken_digit_probs", "written_digit_probs"}
