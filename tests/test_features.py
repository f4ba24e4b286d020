"""features.py: the MFCC front end, its batches, and the spec's test vectors (docs/features.md),
which it and an independent NumPy reference (tests/feature_reference.py) must both reproduce."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import feature_reference as reference
from digitmatch.features import (DEFAULT_PARAMS, VTLP_BOUNDARY, FeatureError, FeatureParams, mfcc, mfcc_batch,
                                 pad_batch, to_float_audio, vtlp_frequencies, warped_mel_matrix)

VECTORS = Path(__file__).resolve().parent / "data" / "feature_vectors"
MANIFEST = json.loads((VECTORS / "vectors.json").read_text())
TOLERANCE = MANIFEST["tolerance"]


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


# --------------------------------------------------------------------------- batches


def test_a_batch_gives_each_recording_the_bits_of_it_alone():
    """The matcher computes a batch's pcm16 halves together: each must be features.mfcc of it alone,
    exactly, whatever else is in the batch (lengths, rates, how many)."""
    rng = np.random.default_rng(7)
    recordings = [(rng.integers(-9000, 9000, size=int(n), dtype=np.int16), int(rate))
                  for n, rate in zip(rng.integers(50, 12000, size=40), rng.choice([8000, 8000, 16000, 44100], 40))]
    alone = [mfcc(audio, rate) for audio, rate in recordings]
    for take in (slice(0, 1), slice(0, 2), slice(3, 10), slice(0, 40), slice(39, 40)):
        together = mfcc_batch(recordings[take])
        assert len(together) == len(alone[take])
        for got, want in zip(together, alone[take]):
            assert got.dtype == np.float32 and np.array_equal(got, want)
    assert mfcc_batch([]) == []


# --------------------------------------------------------------------------- the spec's vectors


def _vector(entry):
    pcm = np.frombuffer((VECTORS / entry["input"]).read_bytes(), dtype="<i2")
    expected = np.frombuffer((VECTORS / entry["expected"]).read_bytes(), dtype="<f4").reshape(-1, 13)
    assert pcm.size == entry["samples"] and expected.shape[0] == entry["frames"]
    return pcm, entry["sample_rate"], expected


def test_the_vectors_are_small_and_cover_what_the_spec_names():
    entries = MANIFEST["vectors"]
    assert sum(p.stat().st_size for p in VECTORS.iterdir()) < 200_000
    assert {p.name for p in VECTORS.iterdir()} == {"vectors.json", "generate.py"} | {
        e[k] for e in entries for k in ("input", "expected")}
    rates = {e["sample_rate"] for e in entries}
    assert {8000, 16000} <= rates
    frames = {e["frames"] for e in entries}
    assert 1 in frames and DEFAULT_PARAMS.max_frames in frames  # one window; the budget's cut
    assert any(e["samples"] > DEFAULT_PARAMS.max_samples() for e in entries)
    assert any(e["name"].startswith("fsdd-") for e in entries)


def test_the_vectors_use_the_shipped_models_parameters():
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel

    shipped = ServingModel.load(DEFAULT_MODEL_ROOT).features
    assert FeatureParams(**MANIFEST["params"]) == shipped == DEFAULT_PARAMS
    assert MANIFEST["params"] == reference.PARAMS  # the reference is written for these


def test_the_stored_inputs_are_what_the_generator_makes():
    spec = importlib.util.spec_from_file_location("generate_vectors", VECTORS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    made = {**generate.inputs(), f"fsdd-{generate.FSDD_RECORDING}": generate.fsdd_excerpt()}
    entries = {e["name"]: e for e in MANIFEST["vectors"]}
    assert made.keys() == entries.keys()
    for name, (rate, description, samples) in made.items():
        assert (rate, description) == (entries[name]["sample_rate"], entries[name]["description"])
        assert samples.astype("<i2").tobytes() == (VECTORS / entries[name]["input"]).read_bytes(), name
    assert generate.TOLERANCE == TOLERANCE


@pytest.mark.parametrize("entry", MANIFEST["vectors"], ids=[e["name"] for e in MANIFEST["vectors"]])
def test_features_mfcc_reproduces_the_vector(entry):
    pcm, rate, expected = _vector(entry)
    got = mfcc(pcm, rate)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("entry", MANIFEST["vectors"], ids=[e["name"] for e in MANIFEST["vectors"]])
def test_the_numpy_reference_reproduces_the_vector(entry):
    pcm, rate, expected = _vector(entry)
    got = reference.mfcc(pcm, rate)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE / 10  # well inside what the spec allows


def test_the_vectors_tell_a_wrong_step_apart():
    """The tolerance is tight enough that each choice the spec pins down shows when it is changed."""
    pcm, rate, expected = _vector(next(e for e in MANIFEST["vectors"] if e["name"].startswith("fsdd-")))
    variants = [
        {"log_offset": 1e-3}, {"n_mels": 39}, {"fmin_hz": 0.0}, {"fft_length": 512}, {"frame_step": 81},
    ]
    for change in variants:
        other = reference.mfcc(pcm, rate, {**reference.PARAMS, **change})
        assert other.shape != expected.shape or np.abs(other - expected).max() > 10 * TOLERANCE, change


def test_the_reference_filterbank_and_dct_are_tensorflows():
    """The spec's mel matrix and DCT, as the reference writes them, against TensorFlow's own."""
    import tensorflow as tf

    p = reference.PARAMS
    tf_mel = tf.signal.linear_to_mel_weight_matrix(p["n_mels"], p["fft_length"] // 2 + 1, p["sample_rate"],
                                                   p["fmin_hz"], p["sample_rate"] / 2).numpy()
    assert np.abs(reference.mel_filterbank(p) - tf_mel).max() < 1e-5
    eye = np.eye(p["n_mels"], dtype=np.float32)
    tf_dct = tf.signal.mfccs_from_log_mel_spectrograms(eye).numpy()[:, : p["n_mfcc"]].T
    assert np.abs(reference.dct_matrix(p) - tf_dct).max() < 1e-6


def test_the_unwarped_vtlp_filterbank_is_tensorflows():
    import tensorflow as tf

    p = DEFAULT_PARAMS
    tf_mel = tf.signal.linear_to_mel_weight_matrix(p.n_mels, p.fft_length // 2 + 1, p.sample_rate, p.fmin_hz,
                                                   p.sample_rate / 2).numpy()
    assert np.abs(warped_mel_matrix(p, 1.0) - tf_mel).max() < 1e-5


@pytest.mark.parametrize("warp", [0.8, 0.9, 1.0, 1.1, 1.25])
def test_the_vtlp_warp_is_monotonic_keeps_the_ends_and_scales_below_the_knee(warp):
    nyquist = 4000.0
    freqs = np.linspace(0.0, nyquist, 1001)
    warped = vtlp_frequencies(freqs, warp, nyquist)
    assert warped[0] == 0.0 and warped[-1] == pytest.approx(nyquist)
    assert np.all(np.diff(warped) > 0)
    knee = VTLP_BOUNDARY * nyquist * min(warp, 1.0) / warp
    below = freqs <= knee
    assert np.allclose(warped[below], freqs[below] * warp)
    assert np.max(np.abs(np.diff(warped))) < 2 * warp * (freqs[1] - freqs[0])  # no jump at the knee


def test_a_vtlp_warp_moves_a_tone_up_the_filterbank_by_its_factor():
    """Energy at 1 kHz, warped by 1.1, lands in the filters that 1.1 kHz reaches unwarped."""
    p = DEFAULT_PARAMS
    bin_hz = p.sample_rate / p.fft_length
    at_1000, at_1100 = round(1000 / bin_hz), round(1100 / bin_hz)
    assert np.argmax(warped_mel_matrix(p, 1.1)[at_1000]) == np.argmax(warped_mel_matrix(p, 1.0)[at_1100])
    assert np.argmax(warped_mel_matrix(p, 0.9)[at_1100]) == np.argmax(warped_mel_matrix(p, 1.0)[at_1000])


def test_warped_features_differ_and_the_default_warp_is_the_features(speech):
    audio, rate = speech, 8000
    plain = mfcc(audio, rate)
    assert np.array_equal(mfcc(audio, rate, DEFAULT_PARAMS, 1.0), plain)
    warped = mfcc(audio, rate, DEFAULT_PARAMS, 1.1)
    assert warped.shape == plain.shape and np.abs(warped - plain).max() > 0.1
    with pytest.raises(ValueError, match="positive"):
        vtlp_frequencies(np.array([1.0]), 0.0, 4000.0)
