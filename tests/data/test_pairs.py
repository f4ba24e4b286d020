from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitmatch.data.pairs import make_pairs

AUDIO = np.repeat(np.arange(10), 7)  # 70 recordings, 7 per digit
IMAGES = np.tile(np.arange(10), 12)  # 120 images, 12 per digit


def _check(pairs, audio_digits, image_digits, n, ratio):
    assert len(pairs) == n
    assert pairs.audio.dtype == np.int64 and pairs.image.dtype == np.int64 and pairs.label.dtype == np.uint8
    same = audio_digits[pairs.audio] == image_digits[pairs.image]
    assert np.array_equal(same.astype(np.uint8), pairs.label)
    assert int(pairs.label.sum()) == round(n * ratio)
    counts = np.bincount(pairs.audio, minlength=len(audio_digits))
    assert counts.max() - counts.min() <= 1


def test_exact_counts_labels_evenness():
    pairs = make_pairs(AUDIO, IMAGES, 1000, 0.5, seed=1)
    _check(pairs, AUDIO, IMAGES, 1000, 0.5)


def test_deterministic_for_seed():
    a = make_pairs(AUDIO, IMAGES, 300, 0.3, seed=9)
    b = make_pairs(AUDIO, IMAGES, 300, 0.3, seed=9)
    c = make_pairs(AUDIO, IMAGES, 300, 0.3, seed=10)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("audio", "image", "label"))
    assert not np.array_equal(a.audio, c.audio)


def test_order_is_shuffled():
    pairs = make_pairs(AUDIO, IMAGES, 200, 0.5, seed=0)
    assert 0 < pairs.label[:100].sum() < 100  # matches are not all at the front


def test_non_matches_cover_other_digits():
    pairs = make_pairs(AUDIO, IMAGES, 5000, 0.0, seed=2)
    written = IMAGES[pairs.image[AUDIO[pairs.audio] == 0]]
    assert set(written.tolist()) == set(range(1, 10))


def test_real_sized(real_fsdd):
    from digitmatch.data.splits import recording_split

    train, _ = recording_split(real_fsdd)
    images = np.tile(np.arange(10), 500)
    pairs = make_pairs(real_fsdd.digits[train], images, 4500, 0.5, seed=0)
    _check(pairs, real_fsdd.digits[train], images, 4500, 0.5)
    assert np.bincount(pairs.audio).tolist() == [2] * 2250


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    ratio=st.floats(0.0, 1.0, allow_nan=False),
    n_audio=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_property(n, ratio, n_audio, seed):
    audio = np.random.default_rng(seed).integers(0, 10, n_audio)
    _check(make_pairs(audio, IMAGES, n, ratio, seed), audio, IMAGES, n, ratio)


@pytest.mark.parametrize("n,ratio,match", [(0, 0.5, "n must"), (-3, 0.5, "n must"), (2.5, 0.5, "n must"), (10, 1.5, "match_ratio"), (10, -0.1, "match_ratio"), (10, float("nan"), "match_ratio")])
def test_bad_arguments(n, ratio, match):
    with pytest.raises(ValueError, match=match):
        make_pairs(AUDIO, IMAGES, n, ratio, 0)


def test_digit_without_images():
    images = IMAGES[IMAGES != 4]
    with pytest.raises(ValueError, match="no images of digit 4"):
        make_pairs(AUDIO, images, 500, 0.5, 0)
    only = np.array([4, 4, 4])
    with pytest.raises(ValueError, match="other than 4"):
        make_pairs(np.array([4]), only, 10, 0.0, 0)
    with pytest.raises(ValueError, match="no images"):
        make_pairs(AUDIO, np.array([], dtype=int), 10, 0.5, 0)


def test_matches_draw_from_all_images_of_the_digit():
    pairs = make_pairs(AUDIO, IMAGES, 3000, 1.0, seed=5)
    chosen = set(pairs.image[AUDIO[pairs.audio] == 3].tolist())
    assert chosen == set(np.flatnonzero(IMAGES == 3).tolist())


def test_image_labels_outside_digits_are_never_drawn():
    images = np.concatenate([IMAGES, [-1, 12, 255]])
    pairs = make_pairs(AUDIO, images, 2000, 0.5, seed=1)
    assert pairs.image.max() < len(IMAGES)
