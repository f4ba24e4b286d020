from __future__ import annotations

import gzip

import numpy as np
import pytest

from digitmatch.data.errors import DataError
from digitmatch.data.mnist import load_mnist, read_idx


@pytest.fixture(scope="module")
def real_mnist(real_data):
    return load_mnist(real_data / "mnist", "train"), load_mnist(real_data / "mnist", "t10k")


def test_real_mnist(real_mnist):
    train, test = real_mnist
    assert train.images.shape == (5000, 28, 28) and test.images.shape == (8000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [500] * 10
    assert set(test.labels.tolist()) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0


def test_data_root_is_accepted(real_data, real_mnist):
    again = load_mnist(real_data, "t10k")
    assert np.array_equal(again.labels, real_mnist[1].labels)


def _fake(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("style", ["dash", "dot"])
def test_written_idx_round_trip(tmp_path, idx_writer, compress, style):
    images, labels = _fake(37)
    gz = ".gz" if compress else ""
    sep = "-" if style == "dash" else "."
    idx_writer(tmp_path / f"train-images{sep}idx3-ubyte{gz}", images, compress=compress)
    idx_writer(tmp_path / f"train-labels{sep}idx1-ubyte{gz}", labels, compress=compress)
    loaded = load_mnist(tmp_path, "train")
    assert np.array_equal(loaded.images, images) and np.array_equal(loaded.labels, labels)
    assert len(loaded) == 37 and len(loaded.subset([3, 1])) == 2
    assert np.array_equal(loaded.subset([3, 1]).images[0], images[3])


def test_canonical_size_file(tmp_path, idx_writer):
    """The same loader reads a file of the canonical 60,000-image size."""
    images = np.zeros((60000, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(60000) % 251
    idx_writer(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    idx_writer(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(60000) % 10, compress=True)
    loaded = load_mnist(tmp_path, "train")
    assert loaded.images.shape == (60000, 28, 28)
    assert np.array_equal(loaded.images[:, 0, 0], images[:, 0, 0])


def test_wrong_magic(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "x-idx3-ubyte", _fake(3)[0], magic=2052)
    with pytest.raises(DataError, match="x-idx3-ubyte.*magic"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx(tmp_path, idx_writer, compress):
    images = _fake(5)[0]
    path = idx_writer(tmp_path / "t10k-images-idx3-ubyte", images)
    data = path.read_bytes()[:-100]
    if compress:
        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match=path.name):
        read_idx(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x08", b"\x00\x00\x08\x03\x00\x00"])
def test_truncated_header(tmp_path, content):
    path = tmp_path / "h-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match="h-idx3-ubyte"):
        read_idx(path)


def test_corrupt_gzip(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(100) % 10, compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(path)


def test_count_mismatch(tmp_path, idx_writer):
    images, labels = _fake(10)
    idx_writer(tmp_path / "t10k-images-idx3-ubyte", images)
    idx_writer(tmp_path / "t10k-labels-idx1-ubyte", labels[:9])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*10 images.*9 labels"):
        load_mnist(tmp_path, "t10k")


def test_images_file_with_label_magic(tmp_path, idx_writer):
    images, labels = _fake(4)
    idx_writer(tmp_path / "t10k-images-idx3-ubyte", labels)  # 1-D array in the images slot
    idx_writer(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, "t10k")


def test_missing_files(tmp_path, idx_writer):
    with pytest.raises(DataError, match="t10k-images"):
        load_mnist(tmp_path, "t10k")
    idx_writer(tmp_path / "t10k-images-idx3-ubyte", _fake(2)[0])
    with pytest.raises(DataError, match="t10k-labels"):
        load_mnist(tmp_path, "t10k")
    with pytest.raises(DataError, match="absent"):
        load_mnist(tmp_path / "absent")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")
