"""The one feature-extraction function: audio samples -> MFCC frames.

Training, evaluation, the producer and the tests all call :func:`mfcc`, and a trained model stores
the :class:`FeatureParams` it was trained with in its metadata, so the features a model sees in
production are computed by exactly the code and settings it was trained on.

Design choices (see docs/model.md):

* Audio at any sample rate is resampled to ``sample_rate`` (8 kHz, FSDD's rate) with soxr.
* 25 ms Hann windows every 10 ms, 256-point FFT, 40 mel bands (20 Hz - Nyquist), log, DCT,
  the first 13 coefficients. All of it is TensorFlow's ``tf.signal``.
* Per-utterance cepstral mean and variance normalisation (CMVN): removes the speaker's and the
  microphone's constant spectral tilt, which matters most for speakers the model never heard.
* Frame budget: a recording longer than ``max_frames`` frames (93 frames = 0.94 s, longer than 99 %
  of FSDD) keeps its first ``max_frames`` frames; the tail is dropped *before* the STFT and before
  the normalisation, so the statistics describe exactly the frames the model sees. Audio shorter
  than one window is zero-padded to one window (one frame).
"""

from __future__ import annotations

import functools

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

N_MFCC = 13


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


@functools.lru_cache(maxsize=8)
def _compiled(params: FeatureParams):
    import tensorflow as tf

    fmax = params.fmax_hz if params.fmax_hz is not None else params.sample_rate / 2
    mel_matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=params.n_mels,
        num_spectrogram_bins=params.fft_length // 2 + 1,
        sample_rate=params.sample_rate,
        lower_edge_hertz=params.fmin_hz,
        upper_edge_hertz=fmax,
    )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)], autograph=False)
    def compute(signal):
        stft = tf.signal.stft(
            signal,
            frame_length=params.frame_length,
            frame_step=params.frame_step,
            fft_length=params.fft_length,
            window_fn=tf.signal.hann_window,
            pad_end=False,
        )
        power = tf.math.square(tf.math.abs(stft))
        log_mel = tf.math.log(tf.tensordot(power, mel_matrix, 1) + params.log_offset)
        coeffs = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[:, : params.n_mfcc]
        if params.normalization == "cmvn":
            mean, variance = tf.nn.moments(coeffs, axes=[0], keepdims=True)
            coeffs = (coeffs - mean) / tf.math.sqrt(variance + 1e-5)
        return coeffs

    return compute


def to_float_audio(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (int8/16/32, uint8) or float samples -> float32 in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    return samples.astype(np.float32, copy=False)


def mfcc(
    audio: np.ndarray, sample_rate: int, params: FeatureParams = DEFAULT_PARAMS
) -> np.ndarray:
    """MFCC frames of one mono recording: float32 array of shape ``(frames, params.n_mfcc)``.

    ``audio`` may be integer PCM or float samples at any ``sample_rate``; it is resampled to
    ``params.sample_rate``. ``1 <= frames <= params.max_frames`` (see the module docstring).
    """
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

        # Resample at most the audio the frame budget keeps (plus a little for the filter's edge).
        keep = int(np.ceil(params.max_samples() * sample_rate / params.sample_rate)) + 64
        signal = soxr.resample(signal[:keep], sample_rate, params.sample_rate).astype(np.float32)
    signal = signal[: params.max_samples()]
    if signal.size < params.frame_length:
        signal = np.pad(signal, (0, params.frame_length - signal.size))
    return _compiled(params)(signal).numpy()


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
