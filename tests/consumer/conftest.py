"""Fixtures for the matcher's tests: a tiny but real Keras model exported with the serving contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from digitmatch.features import FeatureParams

TINY_FEATURES = FeatureParams(max_frames=40)


def export_tiny_model(root: Path, version: int, *, heads: bool = True, seed: int = 0, threshold: float = 0.5) -> Path:
    """A small two-branch Keras model (mean-pooled MFCC + flattened image), exported through the
    project's own exporter into ``root/<version>/``."""
    import keras
    from keras import layers

    from digitmatch.model.export import export

    keras.utils.set_random_seed(seed)
    mfcc = keras.Input(shape=(None, 13), dtype="float32", name="mfcc")
    image = keras.Input(shape=(28, 28), dtype="uint8", name="image")
    audio = layers.Dense(8, activation="tanh")(layers.GlobalAveragePooling1D()(mfcc))
    written = layers.Dense(8, activation="tanh")(layers.Flatten()(layers.Rescaling(1 / 255)(image)))
    outputs = {"score": layers.Dense(1, activation="sigmoid", name="score")(layers.Concatenate()([audio, written]))}
    if heads:
        outputs["spoken_digit_probs"] = layers.Dense(10, activation="softmax", name="spoken_digit_probs")(audio)
        outputs["written_digit_probs"] = layers.Dense(10, activation="softmax", name="written_digit_probs")(written)
    model = keras.Model({"mfcc": mfcc, "image": image}, outputs, name="tiny")
    metadata = {"name": "tiny", "architecture": "tiny", "threshold": threshold}
    return export(model, root, version, metadata, TINY_FEATURES)


def copy_version(source: Path, root: Path, version: int) -> Path:
    """Publish ``source`` (a version directory) as ``root/<version>`` the way an exporter does:
    written beside the root, then renamed into place."""
    staging = root / f".staging-{version}"
    shutil.copytree(source, staging)
    meta = json.loads((staging / "metadata.json").read_text())
    meta["version"] = version
    (staging / "metadata.json").write_text(json.dumps(meta))
    target = root / str(version)
    staging.rename(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One exported version directory (read-only: copy it with the ``publish_version`` fixture)."""
    return export_tiny_model(tmp_path_factory.mktemp("tiny-model"), 1)


@pytest.fixture(scope="session")
def publish_version():
    return copy_version


@pytest.fixture(scope="session")
def export_model():
    return export_tiny_model


@pytest.fixture(scope="session")
def serving_model(tiny_model_dir) -> Path:
    """The shipped model when it has been trained, else the tiny one."""
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, versions

    return DEFAULT_MODEL_ROOT if versions(DEFAULT_MODEL_ROOT) else tiny_model_dir


@pytest.fixture
def root(tmp_path, tiny_model_dir, publish_version):
    publish_version(tiny_model_dir, tmp_path, 1)
    return tmp_path
