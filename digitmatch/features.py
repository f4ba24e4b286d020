"""The one feature-extraction function: audio samples -> MFCC frames.

Training, evaluation, the producer, the matcher (for ``pcm16`` spoken halves) and the tests all
call this module, and a trained model stores the :class:`FeatureParams` it was trained with in its
metadata, so the features a model sees in production are computed by exactly the code and
settings it was trained on. docs/features.md is the normative description, step by step, with
test vectors (tests/data/feature_vectors/) that an implementation in another language can check
itself against.

Rules (see docs/model.md for why):

* Integer PCM is scaled to [-1, 1) by ``2**(bits-1)`` (int16: / 32768). Audio at another sample
  rate is resampled to ``sample_rate`` (8 kHz, FSDD's rate) with soxr, quality ``HQ``.
* 25 ms Hann windows every 10 ms, 256-point FFT, power spectrum, 40 mel bands (20 Hz - Nyquist,
  TensorFlow's matrix), log, DCT, the first 13 coefficients: TensorFlow's ``tf.signal``.
* Per-utterance cepstral mean and variance normalisation (CMVN): removes the speaker's and the
  microphone's constant spectral tilt, which matters most for speakers the model never heard.
* Frame budget: a recording longer than ``max_frames`` frames (93 frames = 0.94 s, longer than 99 %
  of FSDD) keeps its first ``max_frames`` frames; the tail is dropped *before* the STFT and before
  the normalisation, so the statistics describe exactly the frames the model sees. Audio shorter
  than one window is zero-padded to one window (one frame).
* Batches: :func:`mfcc_batch` computes many recordings in one graph call (the matcher, per batch);
  each recording's frames are the same bits as :func:`mfcc` of it alone (the CMVN sums run in
  NumPy over a fixed length, :func:`_normalise`), so a verdict does not depend on the batch.
* Training only: ``warp`` (default 1, the features above, bit for bit) is vocal-tract-length
  perturbation (Jaitly and Hinton, 2013): the mel filters read the spectrum through the
  piecewise-linear frequency warp of :func:`vtlp_frequencies`, so formants move by the factor
  while duration and pitch stay. No model's metadata has a warp: producers and the matcher never
  pass one.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

N_MFCC = 13
CMVN_EPSILON = 1e-5  # added to each coefficient's variance before the square root
RESAMPLE_MARGIN = 64  # input samples resampled beyond what the frame budget needs


class FeatureError(ValueError):
    """Audio that cannot be turned into features (empty, not 1-D, not finite)."""


class FeatureParams(BaseModel):
    """Every setting of the MFCC front end. Stored in each model's metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(8000, gt=0)
    frame_length: int = Field(200, gt=0, description="window length in samples (25 ms)")
    frame_step: int = Field(80, gt=0, description="hop in samples (10 ms)")
    fft_length: int = Field(256, gt=0)
    n_mels: int = Field(40, gt=0)
    fmin_hz: float = Field(20.0, ge=0)
    fmax_hz: float | None = Field(None, description="upper mel edge; None = Nyquist")
    n_mfcc: int = Field(N_MFCC, gt=0)
    log_offset: float = Field(1e-6, gt=0)
    normalization: str = Field("cmvn", pattern="^(cmvn|none)$")
    max_frames: int = Field(93, gt=0)

    def max_samples(self) -> int:
        """Number of samples that yields exactly ``max_frames`` frames."""
        return (self.max_frames - 1) * self.frame_step + self.frame_length

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples at ``sample_rate``."""
        n = max(min(num_samples, self.max_samples()), self.frame_length)
        return 1 + (n - self.frame_length) // self.frame_step


DEFAULT_PARAMS = FeatureParams()


# Where the VTLP warp (vtlp_frequencies) bends, as a fraction of the Nyquist frequency: frequencies
# up to it move by the warp factor (its 4.8 kHz of 8 kHz in Jaitly and Hinton, 2013).
VTLP_BOUNDARY = 0.6


def vtlp_frequencies(freqs_hz: np.ndarray, warp: float, nyquist_hz: float) -> np.ndarray:
    """The piecewise-linear VTLP warp of ``freqs_hz``: ``f * warp`` up to the knee, then the straight
    line that takes the knee's image to the Nyquist frequency, which stays where it is."""
    if warp <= 0:
        raise ValueError(f"the warp factor must be positive, got {warp}")
    bend = VTLP_BOUNDARY * nyquist_hz * min(warp, 1.0)  # the knee's image
    knee = bend / warp
    above = nyquist_hz - (nyquist_hz - bend) / (nyquist_hz - knee) * (nyquist_hz - freqs_hz)
    return np.where(freqs_hz <= knee, freqs_hz * warp, above)


def warped_mel_matrix(params: FeatureParams, warp: float) -> np.ndarray:
    """The mel filterbank of ``params`` read through the VTLP warp: float32 ``(fft_length // 2 + 1,
    n_mels)``, TensorFlow's ``linear_to_mel_weight_matrix`` (HTK mel scale, triangles in mel,
    the DC bin zero) with each bin's frequency warped first (``warp == 1``: that matrix)."""
    nyquist = params.sample_rate / 2
    fmax = params.fmax_hz if params.fmax_hz is not None else nyquist

    def mel(hz):
        return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)

    bins = vtlp_frequencies(np.linspace(0.0, nyquist, params.fft_length // 2 + 1)[1:], warp, nyquist)
    edges = np.linspace(mel(params.fmin_hz), mel(fmax), params.n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    at = mel(bins)[:, None]
    weights = np.maximum(0.0, np.minimum((at - lower) / (centre - lower), (upper - at) / (upper - centre)))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _compiled(params: FeatureParams, warp: float = 1.0):
    """The TensorFlow graph of ``params``, steps 5-8 of docs/features.md: frames ``(n, frame_length)``
    (of any number of recordings, cut by :func:`mfcc_prepared`) -> log-mel cepstra ``(n, n_mfcc)``.

    Each step works on each frame alone (window, FFT, a matrix product whose rows are frames, log,
    DCT), and measured on this project's CPUs a frame's result is the same bits however many frames
    are computed with it (tests/test_features.py). These are ``tf.signal.stft``'s own steps, on
    frames cut beforehand: the same numbers, without computing frames past a recording's end."""
    import tensorflow as tf

    fmax = params.fmax_hz if params.fmax_hz is not None else params.sample_rate / 2
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=params.n_mels,
        num_spectrogram_bins=params.fft_length // 2 + 1,
        sample_rate=params.sample_rate,
        lower_edge_hertz=params.fmin_hz,
        upper_edge_hertz=fmax,
    ) if warp == 1.0 else tf.constant(warped_mel_matrix(params, warp))

    window = tf.signal.hann_window(params.frame_length)

    @tf.function(input_signature=[tf.TensorSpec([None, params.frame_length], tf.float32)], autograph=False)
    def compute(frames):
        # tf.signal.stft's own steps (frame, window, rfft) on frames cut beforehand
        spectrum = tf.signal.rfft(frames * window, [params.fft_length])
        power = tf.math.square(tf.math.abs(spectrum))
        log_mel = tf.math.log(tf.tensordot(power, mel_matrix, 1) + params.log_offset)
        return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[:, : params.n_mfcc]

    return compute


def to_float_audio(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (int8/16/32, uint8) or float samples -> float32 in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32, copy=False)


def resample_input_samples(sample_rate: int, params: FeatureParams = DEFAULT_PARAMS) -> int:
    """How many samples at ``sample_rate`` are resampled: those the frame budget keeps, plus
    ``RESAMPLE_MARGIN`` for the filter's edge (the rest of a longer recording is never read)."""
    return int(np.ceil(params.max_samples() * sample_rate / params.sample_rate)) + RESAMPLE_MARGIN


def prepare(audio: np.ndarray, sample_rate: int, params: FeatureParams = DEFAULT_PARAMS) -> np.ndarray:
    """One mono recording as the feature graph takes it: float32 in [-1, 1] at
    ``params.sample_rate`` (soxr, quality HQ, when the rate differs), cut to ``max_samples()``, and
    zero-padded to one window when shorter (docs/features.md, steps 1-3)."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise FeatureError(f"audio must be mono (1-D), got shape {audio.shape}")
    if audio.size == 0:
        raise FeatureError("audio is empty (0 samples)")
    if sample_rate <= 0:
        raise FeatureError(f"sample rate must be positive, got {sample_rate}")
    signal = to_float_audio(audio)
    if not np.isfinite(signal).all():
        raise FeatureError("audio contains NaN or infinite samples")
    if sample_rate != params.sample_rate:
        import soxr

        keep = resample_input_samples(sample_rate, params)
        signal = soxr.resample(signal[:keep], sample_rate, params.sample_rate, quality="HQ").astype(np.float32)
    signal = signal[: params.max_samples()]
    if signal.size < params.frame_length:
        signal = np.pad(signal, (0, params.frame_length - signal.size))
    return signal


def mfcc_prepared(signals: Sequence[np.ndarray], params: FeatureParams = DEFAULT_PARAMS,
                  warp: float = 1.0) -> list[np.ndarray]:
    """MFCC frames of many recordings already :func:`prepare`-d, in one call of the feature graph
    (vectorised over all their frames): one float32 ``(frames, n_mfcc)`` array per signal, each
    the same bits as the recording's alone (:func:`_compiled`, :func:`_normalise`). ``warp``:
    training only (module docstring)."""
    if not signals:
        return []
    counts = [1 + (s.size - params.frame_length) // params.frame_step for s in signals]
    # Only each signal's own frames are computed (no padding to the batch's longest), all together.
    cut = np.concatenate([
        np.lib.stride_tricks.sliding_window_view(s, params.frame_length)[:: params.frame_step][:n]
        for s, n in zip(signals, counts)])
    coeffs = _compiled(params, warp)(np.ascontiguousarray(cut, dtype=np.float32)).numpy()
    frames = np.array(counts, dtype=np.int64)
    rows = np.zeros((len(signals), params.max_frames, params.n_mfcc), dtype=np.float32)
    rows[np.repeat(np.arange(len(signals)), frames), np.concatenate([np.arange(n) for n in counts])] = coeffs
    out = _normalise(rows, frames, params)
    return [out[row, :count] for row, count in enumerate(counts)]


def _normalise(coeffs: np.ndarray, frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """CMVN of each row of ``coeffs`` ``(B, max_frames, n_mfcc)`` over its own ``frames``, zero
    past them. In NumPy, along the innermost axis of ``(B, n_mfcc, max_frames)``: NumPy sums each
    row of a fixed length in a fixed (pairwise) order, so a recording's statistics are the same
    bits in any batch (TensorFlow's reductions were not: 1-2 ulp apart between batch sizes)."""
    mask = np.arange(params.max_frames)[None, :] < frames[:, None]  # (B, max_frames)
    rows = np.ascontiguousarray(coeffs.transpose(0, 2, 1)) * mask[:, None, :].astype(np.float32)
    if params.normalization == "cmvn":
        count = frames.astype(np.float32)[:, None, None]
        mean = rows.sum(axis=2, keepdims=True) / count
        centred = (rows - mean) * mask[:, None, :]
        variance = np.square(centred).sum(axis=2, keepdims=True) / count
        rows = centred / np.sqrt(variance + np.float32(CMVN_EPSILON))
    return rows.transpose(0, 2, 1)


def mfcc_batch(recordings: Sequence[tuple[np.ndarray, int]], params: FeatureParams = DEFAULT_PARAMS) -> list[np.ndarray]:
    """:func:`mfcc` of each ``(audio, sample_rate)`` of ``recordings``, computed together."""
    return mfcc_prepared([prepare(audio, rate, params) for audio, rate in recordings], params)


def mfcc(
    audio: np.ndarray, sample_rate: int, params: FeatureParams = DEFAULT_PARAMS, warp: float = 1.0
) -> np.ndarray:
    """MFCC frames of one mono recording: float32 array of shape ``(frames, params.n_mfcc)``.

    ``audio`` may be integer PCM or float samples at any ``sample_rate``; it is resampled to
    ``params.sample_rate``. ``1 <= frames <= params.max_frames`` (see the module docstring).
    ``warp``: training only (module docstring).
    """
    return mfcc_prepared([prepare(audio, sample_rate, params)], params, warp)[0]


def pad_batch(frames: list[np.ndarray], max_frames: int | None = None) -> np.ndarray:
    """Stack variable-length MFCC arrays into ``float32 (batch, T, n_mfcc)``, zero-padded at the end.

    ``T`` is the longest input, capped at ``max_frames`` (longer inputs keep their first frames,
    the same rule :func:`mfcc` applies to audio).
    """
    if not frames:
        raise ValueError("pad_batch needs at least one array")
    longest = max(f.shape[0] for f in frames)
    width = longest if max_frames is None else min(longest, max_frames)
    out = np.zeros((len(frames), width, frames[0].shape[1]), dtype=np.float32)
    for row, f in enumerate(frames):
        n = min(f.shape[0], width)
        out[row, :n] = f[:n]
    return out
