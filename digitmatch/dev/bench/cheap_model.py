"""A trivially cheap SavedModel for ``bench ceiling``: the matcher's host-side limit.

The network does next to nothing (the mean of the MFCC frames and of the image rows, one dense
layer per output), but it is a real SavedModel with the serving contract of the shipped one:
inputs ``mfcc`` float32 ``[batch, frames, 13]`` and ``image`` uint8 ``[batch, 28, 28]``, outputs
``score`` and both digit heads, written by the project's own export code
(:func:`digitmatch.model.export.export`) with the feature parameters of the model it stands in
for, so the same pairs are valid for both. Its metadata says what it is
(``architecture: "trivially-cheap"``, ``purpose``); its verdicts mean nothing. Draining a backlog
through it measures everything the matcher does around the model (a GPU deployment's case, where
the model's CPU share disappears), not the model.
"""

from __future__ import annotations

from pathlib import Path

from digitmatch.features import FeatureParams

ARCHITECTURE = "trivially-cheap"
PURPOSE = "benchmark only (digitmatch bench ceiling): the matcher's host-side limit; its scores mean nothing"


def build_cheap():
    """The Keras model: inputs and output names as :func:`digitmatch.model.architecture.build_improved`'s."""
    import keras
    from keras import layers

    from digitmatch.model.architecture import IMAGE_SIZE, N_MFCC, NUM_DIGITS

    keras.utils.set_random_seed(0)
    mfcc = keras.Input(shape=(None, N_MFCC), dtype="float32", name="mfcc")
    image = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="image")
    audio = layers.GlobalAveragePooling1D(name="audio_mean")(mfcc)
    pixels = layers.GlobalAveragePooling1D(name="image_mean")(layers.Rescaling(1.0 / 255.0)(image))
    spoken = layers.Dense(NUM_DIGITS, activation="softmax", name="spoken_digit_probs")(audio)
    written = layers.Dense(NUM_DIGITS, activation="softmax", name="written_digit_probs")(pixels)
    score = layers.Dense(1, activation="sigmoid", name="score")(layers.Concatenate()([audio, pixels]))
    return keras.Model({"mfcc": mfcc, "image": image},
                       {"score": score, "spoken_digit_probs": spoken, "written_digit_probs": written},
                       name="cheap")


def export_cheap(root: Path | str, features: FeatureParams, stands_in_for: str = "") -> Path:
    """Build and export the cheap model as version 1 under ``root``; returns the version directory."""
    from digitmatch.model.export import export

    model = build_cheap()
    metadata = {"name": Path(root).name, "architecture": ARCHITECTURE, "purpose": PURPOSE,
                "stands_in_for": stands_in_for, "parameters": int(model.count_params()), "threshold": 0.5}
    return export(model, root, 1, metadata, features)
