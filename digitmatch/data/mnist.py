"""MNIST IDX loader (gzip or raw): ``{split}-images-idx3-ubyte[.gz]`` + ``{split}-labels-idx1-ubyte[.gz]``.

The same code reads the full canonical files (60,000 train / 10,000 t10k) and subsets of them.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from digitmatch.data.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
SPLITS = ("train", "t10k")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(path, f"corrupt gzip data ({exc})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 2049 labels / 2051 images) as a uint8 array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(path, "too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise DataError(path, f"wrong IDX magic number {magic} (expected 2049 or 2051)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(path, "truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        raise DataError(path, f"IDX size mismatch: header shape {shape} needs {expected} bytes, file has {body}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


@dataclass(frozen=True)
class Images:
    """Handwritten digits: ``images`` uint8 [N, 28, 28], ``labels`` int64 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "Images":
        idx = np.asarray(idx, dtype=np.int64)
        return Images(images=self.images[idx], labels=self.labels[idx])


def find_file(directory: Path, split: str, kind: str) -> Path:
    """The IDX file of ``split`` ('train'/'t10k') and ``kind`` ('images'/'labels')."""
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{split}-{kind}-{dims}-ubyte", f"{split}-{kind}.{dims}-ubyte"):
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                return directory / name
    raise DataError(directory / f"{split}-{kind}-{dims}-ubyte.gz", "file not found (nor the uncompressed or dotted variant)")


def load_mnist(directory: str | Path, split: str = "t10k") -> Images:
    """Images and labels of one MNIST split from ``directory`` (or its ``mnist/`` subdirectory)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "MNIST directory not found")
    if (directory / "mnist").is_dir():
        directory = directory / "mnist"
    images_path = find_file(directory, split, "images")
    labels_path = find_file(directory, split, "labels")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(images_path, f"expected a 3-D image array, got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(labels_path, f"expected a 1-D label array, got shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(images_path, f"{images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(labels_path, f"label {int(labels.max())} is not a digit")
    return Images(images=images, labels=labels.astype(np.int64))
