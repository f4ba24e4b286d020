from __future__ import annotations

import hashlib

import numpy as np
import pytest

from digitmatch.data.mnist import load_mnist
from digitmatch.data.splits import recording_split, speaker_split, validation_split

SPEAKERS = ["george", "jackson", "nicolas", "theo", "yweweler"]


def _assert_partition(n, train, test):
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_recording_split(real_fsdd):
    train, test = recording_split(real_fsdd)
    _assert_partition(len(real_fsdd), train, test)
    assert len(test) == 250 and len(train) == 2250
    assert set(real_fsdd.indices[test].tolist()) == set(range(5))
    assert real_fsdd.indices[train].min() == 5
    names_train = {real_fsdd.names[i] for i in train}
    names_test = {real_fsdd.names[i] for i in test}
    assert not names_train & names_test
    # every speaker x digit is in the test set
    assert len({(real_fsdd.speakers[i], real_fsdd.digits[i]) for i in test}) == 50


@pytest.mark.parametrize("speaker", SPEAKERS)
def test_speaker_split(real_fsdd, speaker):
    train, test = speaker_split(real_fsdd, speaker)
    _assert_partition(len(real_fsdd), train, test)
    assert set(real_fsdd.speakers[test].tolist()) == {speaker}
    assert speaker not in set(real_fsdd.speakers[train].tolist())
    assert not {real_fsdd.names[i] for i in train} & {real_fsdd.names[i] for i in test}
    assert len(test) == 500


def test_speaker_split_unknown(real_fsdd):
    with pytest.raises(ValueError, match="unknown speaker 'bob'"):
        speaker_split(real_fsdd, "bob")


def test_mnist_files_share_no_image(real_data):
    """train vs t10k: no image with identical bytes appears in both files."""
    train = load_mnist(real_data / "mnist", "train").images
    test = load_mnist(real_data / "mnist", "t10k").images
    digest = lambda img: hashlib.blake2b(img.tobytes(), digest_size=16).digest()  # noqa: E731
    train_hashes = {digest(img) for img in train}
    assert not any(digest(img) in train_hashes for img in test)


def test_validation_split_fixed_and_disjoint():
    train, val = validation_split(1000, 0.2, seed=3)
    _assert_partition(1000, train, val)
    assert len(val) == 200
    again_train, again_val = validation_split(1000, 0.2, seed=3)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, validation_split(1000, 0.2, seed=4)[1])


@pytest.mark.parametrize("n,fraction", [(0, 0.1), (7, 0.0), (10, 0.55)])
def test_validation_split_sizes(n, fraction):
    train, val = validation_split(n, fraction, 0)
    _assert_partition(n, train, val)
    assert len(val) == round(n * fraction)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_split_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        validation_split(10, fraction, 0)
