from __future__ import annotations

import numpy as np
import pytest

from digitmatch.features import DEFAULT_PARAMS, FeatureError, FeatureParams, mfcc, pad_batch, to_float_audio


def sound(rate: int, seconds: float = 0.6) -> np.ndarray:
    """A vowel-like sound (harmonics of a gliding pitch under an envelope), sampled at ``rate``."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 120 + 80 * t
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 25) if k * 200 < 3800)
    envelope = np.sin(np.pi * t / seconds) ** 2
    return (0.3 * envelope * wave).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    return sound(8000)


def test_shape_dtype_and_determinism(speech):
    a = mfcc(speech, 8000)
    assert a.dtype == np.float32 and a.ndim == 2 and a.shape[1] == 13
    assert a.shape[0] == DEFAULT_PARAMS.num_frames(speech.size) == 1 + (speech.size - 200) // 80
    assert np.isfinite(a).all()
    assert np.array_equal(a, mfcc(speech, 8000))


def test_int16_and_float_input_agree(speech):
    pcm = np.round(speech * 32767).astype(np.int16)
    assert np.allclose(mfcc(pcm, 8000), mfcc(to_float_audio(pcm), 8000))
    assert np.abs(mfcc(pcm, 8000) - mfcc(speech, 8000)).mean() < 0.05


def test_cmvn_normalises_each_coefficient(speech):
    a = mfcc(speech, 8000)
    assert np.allclose(a.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(a.std(axis=0), 1, atol=1e-2)


@pytest.mark.parametrize("n", [1, 50, 199, 200])
def test_shorter_than_a_window_is_one_frame(n):
    out = mfcc(np.random.default_rng(0).normal(size=n).astype(np.float32), 8000)
    assert out.shape == (1, 13)


def test_longer_than_budget_is_truncated():
    rng = np.random.default_rng(1)
    long = rng.normal(scale=0.1, size=DEFAULT_PARAMS.max_samples() + 5000).astype(np.float32)
    out = mfcc(long, 8000)
    assert out.shape == (DEFAULT_PARAMS.max_frames, 13)
    assert np.array_equal(out, mfcc(long[: DEFAULT_PARAMS.max_samples()], 8000))
    assert not np.array_equal(out, mfcc(long[1000 : 1000 + DEFAULT_PARAMS.max_samples()], 8000))


def test_other_sample_rate_gives_close_features(speech):
    at_8k = mfcc(speech, 8000)
    at_16k = mfcc(sound(16000), 16000)
    assert at_16k.shape == at_8k.shape
    assert np.abs(at_16k - at_8k).mean() < 0.1
    unrelated = mfcc(sound(8000, 0.6)[::-1].copy(), 8000)
    assert np.abs(unrelated - at_8k).mean() > 3 * np.abs(at_16k - at_8k).mean()


def test_params_change_the_output(speech):
    params = FeatureParams(normalization="none", max_frames=20)
    out = mfcc(speech, 8000, params)
    assert out.shape == (20, 13)
    assert not np.allclose(out.mean(axis=0), 0, atol=1e-2)


@pytest.mark.parametrize(
    "audio,rate,message",
    [
        (np.zeros(0, dtype=np.float32), 8000, "empty"),
        (np.zeros((2, 400), dtype=np.float32), 8000, "mono"),
        (np.array([0.0, np.nan] * 200, dtype=np.float32), 8000, "NaN"),
        (np.array([0.0, np.inf] * 200, dtype=np.float32), 8000, "NaN or infinite"),
        (np.zeros(400, dtype=np.float32), 0, "sample rate"),
    ],
)
def test_bad_audio(audio, rate, message):
    with pytest.raises(FeatureError, match=message):
        mfcc(audio, rate)


def test_to_float_audio_scales():
    assert np.allclose(to_float_audio(np.array([0, 128, 255], dtype=np.uint8)), [-1, 0, 127 / 128])
    assert np.allclose(to_float_audio(np.array([-32768, 0, 16384], dtype=np.int16)), [-1, 0, 0.5])


def test_pad_batch():
    a = np.ones((3, 13), dtype=np.float32)
    b = np.full((5, 13), 2, dtype=np.float32)
    out = pad_batch([a, b])
    assert out.shape == (2, 5, 13) and out.dtype == np.float32
    assert np.array_equal(out[0, :3], a) and not out[0, 3:].any()
    assert np.array_equal(out[1], b)
    capped = pad_batch([a, b], max_frames=4)
    assert capped.shape == (2, 4, 13) and np.array_equal(capped[1], b[:4])
    with pytest.raises(ValueError):
        pad_batch([])
