"""Shapes and exact parameter counts of the two networks and the improved network's audio branches."""

from __future__ import annotations

import numpy as np
import pytest

from digitmatch.model import architecture

# The 2019 notebook reports 1,296,273 with the CuDNN LSTM, which keeps two bias vectors per gate
# (4 gates x 50 units = 200 more); Keras 3's LSTM keeps one.
SEED_PARAMETERS = 1_296_073
IMPROVED_PARAMETERS = 263_733
# conv-bilstm's audio branch: Conv1D 13->64 and 64->64 (kernel 5), LSTM(64) each way over 64 inputs.
CONV_BILSTM_AUDIO = (5 * 13 * 64 + 64) + (5 * 64 * 64 + 64) + 2 * 4 * 64 * (64 + 64 + 1)


@pytest.fixture(scope="module")
def models():
    built = {arch: architecture.build(arch) for arch in architecture.ARCHITECTURES}
    built["improved/conv-bilstm"] = architecture.build("improved", "conv-bilstm")
    return built


def test_seed_parameter_count_matches_the_notebook_up_to_cudnn_bias(models):
    seed = models["seed"]
    assert seed.count_params() == SEED_PARAMETERS
    lstm = seed.get_layer("audio_lstm")
    assert lstm.count_params() == 4 * 50 * (13 + 50 + 1)
    assert SEED_PARAMETERS + 4 * 50 == 1_296_273


def test_seed_layers_follow_the_notebook(models):
    seed = models["seed"]
    assert seed.get_layer("image_embedding").count_params() == 12 * 12 * 64 * 128 + 128
    assert seed.get_layer("audio_dense1").units == 256
    assert seed.get_layer("audio_embedding").units == 128
    assert seed.get_layer("image_conv1").filters == 32
    assert seed.get_layer("image_conv2").filters == 64
    assert seed.output_names == ["score"]


def test_improved_parameter_count_and_size(models):
    improved = models["improved"]
    assert improved.count_params() == IMPROVED_PARAMETERS
    assert improved.count_params() * 4 < 5_000_000 / 4  # float32 weights well under 5 MB
    assert sorted(improved.output_names) == ["score", "spoken_digit_probs", "written_digit_probs"]


def test_conv_bilstm_parameter_count(models):
    conv = models["improved/conv-bilstm"]
    lstm_audio = 4 * 64 * (13 + 64 + 1)
    # The rest of the network (BN over 128 instead of 64 features, Dense(128) over 128 inputs) grows too.
    rest = 4 * 64 + 64 * 128  # BN keeps 4 numbers per feature
    assert conv.count_params() == IMPROVED_PARAMETERS - lstm_audio + CONV_BILSTM_AUDIO + rest
    assert sorted(conv.output_names) == ["score", "spoken_digit_probs", "written_digit_probs"]


def test_training_flag_lists_every_audio_branch():
    from digitmatch.model import training

    assert training.AUDIO_BRANCHES == architecture.AUDIO_BRANCHES


@pytest.mark.parametrize("arch", [*architecture.ARCHITECTURES, "improved/conv-bilstm"])
@pytest.mark.parametrize("batch,frames", [(1, 93), (3, 17)])
def test_output_shapes(models, arch, batch, frames):
    rng = np.random.default_rng(0)
    out = models[arch]({
        "mfcc": rng.normal(size=(batch, frames, 13)).astype("float32"),
        "image": rng.integers(0, 256, size=(batch, 28, 28), dtype=np.uint8),
    })
    assert tuple(out["score"].shape) == (batch, 1)
    score = np.asarray(out["score"])
    assert np.all((score >= 0) & (score <= 1))
    if arch.startswith("improved"):
        for head in ("spoken_digit_probs", "written_digit_probs"):
            probs = np.asarray(out[head])
            assert probs.shape == (batch, 10)
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ["improved", "improved/conv-bilstm"])
def test_improved_masking_ignores_trailing_padding(models, arch):
    model = models[arch]
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(2, 30, 13)).astype("float32")
    image = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    padded = np.concatenate([frames, np.zeros((2, 20, 13), np.float32)], axis=1)
    short = model({"mfcc": frames, "image": image}, training=False)
    long = model({"mfcc": padded, "image": image}, training=False)
    for name in short:
        np.testing.assert_allclose(np.asarray(short[name]), np.asarray(long[name]), atol=1e-5)


def test_conv_bilstm_ignores_padding_in_a_batch_of_different_lengths(models):
    # The convolutions read neighbouring frames: a short recording padded by its batch must still
    # score as it does alone.
    model = models["improved/conv-bilstm"]
    rng = np.random.default_rng(2)
    short = rng.normal(size=(1, 12, 13)).astype("float32")
    other = rng.normal(size=(1, 40, 13)).astype("float32")
    image = rng.integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    batch = np.concatenate([np.pad(short, ((0, 0), (0, 28), (0, 0))), other])
    together = model({"mfcc": batch, "image": image}, training=False)
    alone = model({"mfcc": short, "image": image[:1]}, training=False)
    for name in alone:
        np.testing.assert_allclose(np.asarray(alone[name]), np.asarray(together[name])[:1], atol=1e-5)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        architecture.build("resnet")
    with pytest.raises(ValueError, match="unknown audio branch"):
        architecture.build("improved", "transformer")
    with pytest.raises(ValueError, match="seed network"):
        architecture.build("seed", "conv-bilstm")
