"""Data-test fixtures: the real data (skipped with a reason when absent) and writers of small
WAV / IDX files into ``tmp_path``."""

from __future__ import annotations

import gzip
import wave
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def real_data(data_dir: Path) -> Path:
    if not (data_dir / "fsdd" / "recordings").is_dir() or not (data_dir / "mnist").is_dir():
        pytest.skip(f"real data not found at {data_dir} (set DIGITMATCH_DATA)")
    return data_dir


@pytest.fixture(scope="session")
def real_fsdd(real_data):
    from digitmatch.data.fsdd import load_fsdd

    return load_fsdd(real_data / "fsdd")


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int, channels: int = 1) -> Path:
    """Write interleaved integer ``samples`` as a PCM WAV of ``width`` bytes per sample."""
    samples = np.asarray(samples)
    if width == 1:
        raw = samples.astype(np.uint8).tobytes()
    elif width == 3:
        v = samples.astype(np.int64) & 0xFFFFFF
        raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=-1).astype(np.uint8).tobytes()
    else:
        raw = samples.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(raw)
    return path


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = False) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def wav_writer():
    return write_wav


@pytest.fixture
def idx_writer():
    return write_idx
