"""Writes the feature test vectors of docs/features.md: each input as the value of a ``pcm16``
spoken half (``NAME.pcm16``: mono int16 little-endian) and its expected features as the value of
an MFCC spoken half (``NAME.mfcc``: float32 little-endian, frames x 13, C order), computed by
``digitmatch.features.mfcc`` with the shipped model's parameters; ``vectors.json`` lists them.

Run from the repository root after a deliberate change to the features (then the model must be
retrained): ``.venv/bin/python tests/data/feature_vectors/generate.py``. The inputs are made by
:func:`inputs` (synthetic, fixed seeds) and taken from the shipped held-out sample (one FSDD
recording, CC BY-SA 4.0: digitmatch/data/sample/LICENSE.md); tests/test_features.py checks that
the stored inputs are still what it makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "vectors.json"
# |expected - computed| allowed per coefficient, for any implementation of the spec in float32 or
# float64 (the float64 NumPy reference in tests/feature_reference.py stays below a tenth of it).
TOLERANCE = 1e-3
FSDD_RECORDING = "0_jackson_0"  # the shipped sample's recording used as the real excerpt


def _pcm(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _chirp(rate: int, seconds: float, f0: float, f1: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))


def inputs() -> dict[str, tuple[int, str, np.ndarray]]:
    """name -> (sample rate, description, int16 samples), the synthetic ones."""
    rate = 8000
    t = np.arange(4000) / rate
    long_t = np.arange(9000) / rate
    noise = np.random.default_rng(0)
    return {
        "tone-440hz-8k": (rate, "0.5 s sine, 440 Hz, amplitude 0.5 sin^2(pi t / 0.5 s), over white noise of sigma "
                          "0.01 (default_rng(4)); docs/features.md, 'Precision', says why not a bare tone",
                          _pcm(0.5 * np.sin(np.pi * t / 0.5) ** 2 * np.sin(2 * np.pi * 440 * t)
                               + np.random.default_rng(4).normal(0, 0.01, t.size))),
        "chirp-8k": (rate, "0.8 s linear chirp 100 -> 3500 Hz, amplitude 0.4",
                     _pcm(_chirp(rate, 0.8, 100, 3500, 0.4))),
        "noise-8k": (rate, "0.3 s white Gaussian noise, sigma 0.1, numpy default_rng(0)",
                     _pcm(noise.normal(0, 0.1, 2400))),
        "short-8k": (rate, "150 samples of noise (default_rng(1), sigma 0.2): shorter than one window, one frame",
                     _pcm(np.random.default_rng(1).normal(0, 0.2, 150))),
        "long-8k": (rate, "1.125 s: 300 + 1200 Hz tones and noise (default_rng(2)); beyond the 93-frame budget",
                    _pcm(0.3 * np.sin(2 * np.pi * 300 * long_t) + 0.2 * np.sin(2 * np.pi * 1200 * long_t)
                         + np.random.default_rng(2).normal(0, 0.02, long_t.size))),
        "silence-8k": (rate, "0.25 s of zeros: every coefficient 0 after CMVN", np.zeros(2000, np.int16)),
        "chirp-16k": (16000, "0.6 s linear chirp 100 -> 7000 Hz at 16 kHz, amplitude 0.4 (resampled)",
                      _pcm(_chirp(16000, 0.6, 100, 7000, 0.4))),
        "noise-44k1": (44100, "0.2 s white Gaussian noise at 44.1 kHz, sigma 0.1, default_rng(3) (resampled)",
                       _pcm(np.random.default_rng(3).normal(0, 0.1, 8820))),
    }


def fsdd_excerpt() -> tuple[int, str, np.ndarray]:
    from digitmatch.data.sample import load_sample

    recordings, _ = load_sample()
    i = list(recordings.names).index(f"{FSDD_RECORDING}.wav")
    return (int(recordings.sample_rates[i]), f"FSDD recording {FSDD_RECORDING} (a spoken 0), whole",
            np.asarray(recordings.audio[i], np.int16))


def main() -> None:
    from digitmatch.features import mfcc
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT, ServingModel

    params = ServingModel.load(DEFAULT_MODEL_ROOT).features
    vectors = {**inputs(), f"fsdd-{FSDD_RECORDING}": fsdd_excerpt()}
    listed = []
    for name, (rate, description, samples) in vectors.items():
        features = mfcc(samples, rate, params)
        (HERE / f"{name}.pcm16").write_bytes(samples.astype("<i2").tobytes())
        (HERE / f"{name}.mfcc").write_bytes(features.astype("<f4").tobytes())
        listed.append({"name": name, "description": description, "sample_rate": rate, "samples": int(samples.size),
                       "frames": int(features.shape[0]), "input": f"{name}.pcm16", "expected": f"{name}.mfcc"})
    MANIFEST.write_text(json.dumps({"params": params.model_dump(), "tolerance": TOLERANCE, "vectors": listed},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
