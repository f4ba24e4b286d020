"""The two-branch networks: an LSTM branch for MFCC frames, a CNN branch for the 28x28 image,
joined into one sigmoid "same digit" score.

Both Keras models take the same inputs:

* ``mfcc``: float32 ``(batch, frames, 13)``, zero-padded at the end;
* ``image``: uint8 ``(batch, 28, 28)``; cast and rescaled to [0, 1] inside the model.

``seed`` is the 2019 notebook's network, layer for layer. ``improved`` is this project's default
(see docs/model.md for the measurements behind each choice). The improved network's audio branch
comes in two kinds (``AUDIO_BRANCHES``): ``lstm`` (the shipped one) and ``conv-bilstm``, a
convolutional front end under a bidirectional LSTM.

Every audio branch keeps one rule: a recording's outputs do not depend on how much zero padding
its batch adds after it (the matcher batches recordings of different lengths).
"""

from __future__ import annotations

import keras
from keras import layers, ops

N_MFCC = 13
IMAGE_SIZE = 28
NUM_DIGITS = 10
SEED_FRAMES = 93  # the notebook padded every recording to 93 frames

ARCHITECTURES = ("improved", "seed")


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    mfcc = keras.Input(shape=(None, N_MFCC), dtype="float32", name="mfcc")
    image = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="image")
    return mfcc, image


def _image_to_float(image: keras.KerasTensor) -> keras.KerasTensor:
    x = layers.Rescaling(1.0 / 255.0, name="image_rescale")(image)  # casts uint8 -> float32
    return layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1), name="image_channel")(x)


# --------------------------------------------------------------------------------------- seed (2019)


def seed_audio_branch(mfcc: keras.KerasTensor) -> keras.KerasTensor:
    """LSTM(50) -> BN -> ReLU -> Dropout -> Dense(256) -> BN -> ReLU -> Dropout -> Dense(128)."""
    x = layers.LSTM(50, name="audio_lstm")(mfcc)
    x = layers.BatchNormalization(name="audio_bn1")(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(256, name="audio_dense1")(x)
    x = layers.BatchNormalization(name="audio_bn2")(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.2)(x)
    return layers.Dense(128, activation="relu", name="audio_embedding")(x)


def seed_image_branch(image: keras.KerasTensor) -> keras.KerasTensor:
    """Conv(32) -> BN -> ReLU -> Dropout -> Conv(64) -> BN -> ReLU -> MaxPool -> Dropout ->
    Flatten -> BN -> Dense(128) -> Dropout."""
    x = _image_to_float(image)
    x = layers.Conv2D(32, 3, name="image_conv1")(x)
    x = layers.BatchNormalization(name="image_bn1")(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Conv2D(64, 3, name="image_conv2")(x)
    x = layers.BatchNormalization(name="image_bn2")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.BatchNormalization(name="image_bn3")(x)
    x = layers.Dense(128, activation="relu", name="image_embedding")(x)
    return layers.Dropout(0.5)(x)


def build_seed() -> keras.Model:
    """The 2019 notebook's network: concat(audio, image) -> Dense(1, sigmoid)."""
    mfcc, image = _inputs()
    joined = layers.Concatenate()([seed_audio_branch(mfcc), seed_image_branch(image)])
    score = layers.Dense(1, activation="sigmoid", name="score")(joined)
    return keras.Model({"mfcc": mfcc, "image": image}, {"score": score}, name="seed")


# ---------------------------------------------------------------------------------------- improved


def improved_audio_branch(mfcc: keras.KerasTensor) -> keras.KerasTensor:
    """Masking (padding frames are skipped, any length) -> LSTM(64) -> Dense(128) embedding."""
    x = layers.Masking(mask_value=0.0, name="audio_mask")(mfcc)
    x = layers.LSTM(64, name="audio_lstm")(x)
    x = layers.BatchNormalization(name="audio_bn")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(128, activation="relu", name="audio_dense")(x)
    return layers.Dropout(0.2, name="audio_embedding")(x)


def conv_bilstm_audio_branch(mfcc: keras.KerasTensor) -> keras.KerasTensor:
    """Two Conv1D(64, 5, ReLU) over time -> bidirectional LSTM(64) -> Dense(128) embedding.

    The convolutions see a few neighbouring frames (local spectral change, like delta features,
    learned). The padding mask is taken from the input frames (a frame of 13 zeros is padding, as
    for ``Masking``); each convolution's output is zeroed at padding frames, so the next one reads
    zeros beyond a recording's end whether they are "same" padding or the batch's, and the mask
    is handed to the LSTM, which skips those frames.
    """
    mask = layers.Masking(mask_value=0.0, name="audio_mask").compute_mask(mfcc)
    keep = ops.expand_dims(ops.cast(mask, "float32"), -1)
    x = layers.Conv1D(64, 5, padding="same", activation="relu", name="audio_conv1")(mfcc) * keep
    x = layers.Conv1D(64, 5, padding="same", activation="relu", name="audio_conv2")(x) * keep
    x = layers.Bidirectional(layers.LSTM(64), name="audio_bilstm")(x, mask=mask)
    x = layers.BatchNormalization(name="audio_bn")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(128, activation="relu", name="audio_dense")(x)
    return layers.Dropout(0.2, name="audio_embedding")(x)


AUDIO_BRANCH = {"lstm": improved_audio_branch, "conv-bilstm": conv_bilstm_audio_branch}
AUDIO_BRANCHES = tuple(AUDIO_BRANCH)


def improved_image_branch(image: keras.KerasTensor) -> keras.KerasTensor:
    """Two Conv-BN-ReLU-MaxPool blocks -> Flatten (5x5x64) -> Dense(128) embedding."""
    x = _image_to_float(image)
    x = layers.Conv2D(32, 3, use_bias=False, name="image_conv1")(x)
    x = layers.BatchNormalization(name="image_bn1")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, use_bias=False, name="image_conv2")(x)
    x = layers.BatchNormalization(name="image_bn2")(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(128, activation="relu", name="image_dense")(x)
    return layers.Dropout(0.25, name="image_embedding")(x)


def digit_head(embedding: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Softmax over the ten digits, trained with its own (auxiliary) loss."""
    return layers.Dense(NUM_DIGITS, activation="softmax", name=name)(embedding)


def build_improved(audio_branch: str = "lstm") -> keras.Model:
    """Branch embeddings + per-branch digit heads; the match head (Dense(32) -> Dense(1)) sees
    concat(audio_emb, image_emb, p_audio * p_image)."""
    mfcc, image = _inputs()
    audio = AUDIO_BRANCH[audio_branch](mfcc)
    written = improved_image_branch(image)
    p_audio = digit_head(audio, "spoken_digit_probs")
    p_image = digit_head(written, "written_digit_probs")
    agreement = layers.Multiply(name="digit_agreement")([p_audio, p_image])
    joined = layers.Concatenate()([audio, written, agreement])
    hidden = layers.Dense(32, activation="relu", name="match_dense")(joined)
    score = layers.Dense(1, activation="sigmoid", name="score")(hidden)
    return keras.Model(
        {"mfcc": mfcc, "image": image},
        {"score": score, "spoken_digit_probs": p_audio, "written_digit_probs": p_image},
        name="improved",
    )


def build(arch: str, audio_branch: str = "lstm") -> keras.Model:
    """The ``arch`` network; ``audio_branch`` picks the improved network's (the seed has one)."""
    if audio_branch not in AUDIO_BRANCHES:
        raise ValueError(f"unknown audio branch {audio_branch!r}; choose from {', '.join(AUDIO_BRANCHES)}")
    if arch == "seed":
        if audio_branch != "lstm":
            raise ValueError("the seed network has only its own LSTM audio branch")
        return build_seed()
    if arch == "improved":
        return build_improved(audio_branch)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")


def has_digit_heads(model: keras.Model) -> bool:
    return "spoken_digit_probs" in model.output_names if hasattr(model, "output_names") else False
