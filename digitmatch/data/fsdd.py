"""Free Spoken Digit Dataset loader: ``{digit}_{speaker}_{index}.wav`` files.

WAV files are read with the standard-library :mod:`wave` module (8/16/24/32-bit PCM, any sample
rate). Multi-channel audio is averaged to mono (the mean of the channels, kept in the file's
integer type).
"""

from __future__ import annotations

import re
import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from digitmatch.data.errors import DataError

NAME_PATTERN = re.compile(r"^([0-9])_([A-Za-z0-9-]+)_([0-9]+)\.wav$")


def parse_filename(name: str) -> tuple[int, str, int]:
    """``"3_theo_12.wav"`` -> ``(3, "theo", 12)``; :class:`DataError` for other names."""
    base = Path(name).name
    match = NAME_PATTERN.match(base)
    if match is None:
        raise DataError(name, "file name does not match {digit}_{speaker}_{index}.wav")
    return int(match.group(1)), match.group(2), int(match.group(3))


def _pcm_to_array(raw: bytes, width: int, channels: int, path: Path) -> np.ndarray:
    if width == 1:
        samples = np.frombuffer(raw, dtype=np.uint8)
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2")
    elif width == 3:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.int32)
        samples = samples << 8  # 24-bit in the top bits of int32: same [-1, 1) scale
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4")
    else:
        raise DataError(path, f"unsupported sample width {width * 8} bits")
    if channels > 1:
        frames = samples.size // channels
        samples = samples[: frames * channels].reshape(frames, channels)
        if samples.dtype == np.uint8:
            samples = np.round(samples.astype(np.float64).mean(axis=1)).astype(np.uint8)
        else:
            samples = np.round(samples.astype(np.float64).mean(axis=1)).astype(samples.dtype)
    return np.ascontiguousarray(samples.astype(samples.dtype.newbyteorder("=")))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (1-D integer array: uint8 for 8-bit, int16, int32 for 24/32-bit) and sample rate."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            count = wav.getnframes()
            raw = wav.readframes(count)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (wave.Error, EOFError, OSError, RuntimeError, struct.error) as exc:
        raise DataError(path, f"not a readable PCM WAV file ({exc or type(exc).__name__})") from None
    if channels < 1 or rate <= 0:
        raise DataError(path, f"invalid WAV header ({channels} channels, {rate} Hz)")
    expected = count * channels * width
    if count == 0:
        raise DataError(path, "WAV file holds no audio samples")
    if len(raw) != expected:
        raise DataError(path, f"truncated WAV: header says {expected} data bytes, file has {len(raw)}")
    return _pcm_to_array(raw, width, channels, path), rate


@dataclass(frozen=True)
class Recordings:
    """Spoken-digit recordings and their labels (parallel arrays)."""

    digits: np.ndarray  # int64 [N]
    speakers: np.ndarray  # str [N]
    indices: np.ndarray  # int64 [N]
    audio: list  # list of 1-D integer arrays
    sample_rates: np.ndarray  # int64 [N]
    names: list  # file names

    def __len__(self) -> int:
        return len(self.audio)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Recordings":
        idx = np.asarray(idx, dtype=np.int64)
        return Recordings(
            digits=self.digits[idx],
            speakers=self.speakers[idx],
            indices=self.indices[idx],
            audio=[self.audio[i] for i in idx],
            sample_rates=self.sample_rates[idx],
            names=[self.names[i] for i in idx],
        )

    def concat(self, other: "Recordings") -> "Recordings":
        """These recordings followed by ``other``'s (the positions of these stay as they are)."""
        return Recordings(
            digits=np.concatenate([self.digits, other.digits]),
            speakers=np.concatenate([self.speakers, other.speakers]),
            indices=np.concatenate([self.indices, other.indices]),
            audio=self.audio + other.audio,
            sample_rates=np.concatenate([self.sample_rates, other.sample_rates]),
            names=self.names + other.names,
        )

    def mfcc(self, params=None) -> list[np.ndarray]:
        """MFCC frames of every recording, via :func:`digitmatch.features.mfcc`."""
        from digitmatch.features import DEFAULT_PARAMS, mfcc

        params = DEFAULT_PARAMS if params is None else params
        return [mfcc(a, int(r), params) for a, r in zip(self.audio, self.sample_rates)]


def recordings_dir(directory: str | Path) -> Path:
    """An FSDD root (holding ``recordings/``) or the recordings directory itself."""
    directory = Path(directory)
    if (directory / "recordings").is_dir():
        return directory / "recordings"
    if not directory.is_dir():
        raise DataError(directory, "FSDD directory not found")
    return directory


def load_fsdd(directory: str | Path) -> Recordings:
    """Every ``*.wav`` in an FSDD recordings directory, sorted by (digit, speaker, index)."""
    folder = recordings_dir(directory)
    files = [p for p in folder.iterdir() if p.suffix.lower() == ".wav"]
    if not files:
        raise DataError(folder, "no .wav recordings found")
    keyed = sorted((parse_filename(p.name), p) for p in files)
    audio, rates = [], []
    for _, path in keyed:
        samples, rate = read_wav(path)
        audio.append(samples)
        rates.append(rate)
    return Recordings(
        digits=np.array([k[0] for k, _ in keyed], dtype=np.int64),
        speakers=np.array([k[1] for k, _ in keyed], dtype=str),
        indices=np.array([k[2] for k, _ in keyed], dtype=np.int64),
        audio=audio,
        sample_rates=np.array(rates, dtype=np.int64),
        names=[p.name for _, p in keyed],
    )
