"""An independent MFCC front end in plain NumPy, written from docs/features.md alone.

It imports neither ``digitmatch`` nor TensorFlow: it is what a producer in another language would
write from the spec, and tests/test_features.py checks it (and ``features.mfcc``) against the test
vectors in tests/data/feature_vectors/. Resampling is the one step it does not reimplement: input
at another rate than the model's goes through libsoxr (python-soxr), as the spec prescribes.
Everything else is float64, which is why it agrees with the float32 implementation only to the
spec's tolerance, not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

# docs/features.md, "Parameters": the shipped model's metadata.json "features".
PARAMS = {"sample_rate": 8000, "frame_length": 200, "frame_step": 80, "fft_length": 256, "n_mels": 40,
          "fmin_hz": 20.0, "fmax_hz": None, "n_mfcc": 13, "log_offset": 1e-6, "normalization": "cmvn",
          "max_frames": 93}
CMVN_EPSILON = 1e-5
RESAMPLE_MARGIN = 64


def hz_to_mel(hz):
    """HTK's mel scale with the natural log: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filterbank(p: dict) -> np.ndarray:
    """(fft_length / 2 + 1, n_mels) triangles on the mel scale, peak 1, no area normalisation,
    the DC bin's row zero."""
    bins = p["fft_length"] // 2 + 1
    fmax = p["fmax_hz"] if p["fmax_hz"] is not None else p["sample_rate"] / 2
    bin_mel = hz_to_mel(np.linspace(0.0, p["sample_rate"] / 2, bins)[1:])[:, None]
    edges = np.linspace(hz_to_mel(p["fmin_hz"]), hz_to_mel(fmax), p["n_mels"] + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (centre - lower)
    falling = (upper - bin_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.vstack([np.zeros((1, p["n_mels"])), weights])


def dct_matrix(p: dict) -> np.ndarray:
    """(n_mfcc, n_mels): c_k = sqrt(2 / N) * sum_n x_n cos(pi k (2n + 1) / (2N)), k < n_mfcc."""
    n_mels = p["n_mels"]
    k = np.arange(p["n_mfcc"])[:, None]
    n = np.arange(n_mels)[None, :]
    return math.sqrt(2.0 / n_mels) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels))


def max_samples(p: dict) -> int:
    return (p["max_frames"] - 1) * p["frame_step"] + p["frame_length"]


def signal(pcm: np.ndarray, sample_rate: int, p: dict = PARAMS) -> np.ndarray:
    """Steps 1-3: int16 -> [-1, 1), resampled (libsoxr, HQ, float32) when the rate differs, cut to
    the frame budget, zero-padded to one window."""
    x = np.asarray(pcm, dtype=np.int16).astype(np.float64) / 32768.0
    if sample_rate != p["sample_rate"]:
        import soxr

        keep = math.ceil(max_samples(p) * sample_rate / p["sample_rate"]) + RESAMPLE_MARGIN
        x = soxr.resample(x[:keep].astype(np.float32), sample_rate, p["sample_rate"], quality="HQ")
        x = x.astype(np.float64)
    x = x[: max_samples(p)]
    if x.size < p["frame_length"]:
        x = np.concatenate([x, np.zeros(p["frame_length"] - x.size)])
    return x


def mfcc(pcm: np.ndarray, sample_rate: int, p: dict = PARAMS) -> np.ndarray:
    """Steps 1-9 of docs/features.md: (frames, n_mfcc) float64."""
    x = signal(pcm, sample_rate, p)
    length, step = p["frame_length"], p["frame_step"]
    count = 1 + (x.size - length) // step
    frames = np.stack([x[i * step : i * step + length] for i in range(count)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=p["fft_length"])) ** 2
    log_mel = np.log(power @ mel_filterbank(p) + p["log_offset"])
    coeffs = log_mel @ dct_matrix(p).T
    if p["normalization"] == "cmvn":
        mean = coeffs.mean(axis=0)
        variance = ((coeffs - mean) ** 2).mean(axis=0)
        coeffs = (coeffs - mean) / np.sqrt(variance + CMVN_EPSILON)
    return coeffs
