"""A batch as the model's inputs (consumer/model_inputs.py): pcm16 halves' features computed with the
parameters given (the scoring version's), together, each the bits of features.mfcc of it alone."""

from __future__ import annotations

import numpy as np
import pytest

from digitmatch.consumer.join import HalfRecord, JoinedPair, digest
from digitmatch.consumer.model_inputs import model_inputs
from digitmatch.data.sample import load_sample
from digitmatch.features import DEFAULT_PARAMS, FeatureParams, mfcc
from digitmatch.wire import Half

RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def recordings():
    """Real held-out recordings (8 kHz int16), the first 12 of the shipped sample."""
    rec, _ = load_sample()
    return [(np.asarray(a, np.int16), int(r)) for a, r in zip(rec.audio[:12], rec.sample_rates[:12])]


def pcm_pair(pair_id: str, samples: np.ndarray, rate: int) -> JoinedPair:
    image = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)
    spoken = HalfRecord(0, 1, pair_id, Half.SPOKEN, samples, digest(samples.tobytes()), 1.0, 1000, sample_rate=rate)
    written = HalfRecord(0, 2, pair_id, Half.WRITTEN, image, digest(image.tobytes()), 1.5, 1500)
    return JoinedPair(spoken, written)


def mfcc_pair(pair_id: str, frames: np.ndarray) -> JoinedPair:
    pair = pcm_pair(pair_id, np.zeros(1, np.int16), 8000)
    pair.spoken = HalfRecord(0, 1, pair_id, Half.SPOKEN, frames, digest(frames.tobytes()), 1.0, 1000)
    return pair


def test_pcm16_halves_get_the_features_of_their_recording_alone_in_a_mixed_batch(recordings):
    at_16k = (RNG.integers(-8000, 8000, size=9000, dtype=np.int16), 16000)
    sent = [mfcc_pair("m0", RNG.normal(size=(7, 13)).astype(np.float32))]
    sent += [pcm_pair(f"p{i}", a, r) for i, (a, r) in enumerate([*recordings, at_16k])]
    sent += [mfcc_pair("m1", RNG.normal(size=(200, 13)).astype(np.float32))]  # beyond the budget
    inputs = model_inputs(sent, DEFAULT_PARAMS)
    assert inputs.pcm_halves == len(recordings) + 1 and inputs.features_s > 0
    assert inputs.mfcc.shape == (len(sent), DEFAULT_PARAMS.max_frames, 13) and inputs.mfcc.dtype == np.float32
    assert np.array_equal(inputs.images, np.stack([p.written.array for p in sent]))
    for row, pair in enumerate(sent):
        if pair.spoken.sample_rate is None:
            expected = pair.spoken.array[: DEFAULT_PARAMS.max_frames]
        else:
            expected = mfcc(pair.spoken.array, pair.spoken.sample_rate, DEFAULT_PARAMS)
        n = expected.shape[0]
        assert np.array_equal(inputs.mfcc[row, :n], expected), pair.pair_id  # the same bits
        assert not inputs.mfcc[row, n:].any()


def test_the_features_follow_the_parameters_given(recordings):
    other = FeatureParams(n_mels=24, max_frames=50, normalization="none")
    pairs = [pcm_pair(f"p{i}", a, r) for i, (a, r) in enumerate(recordings[:3])]
    inputs = model_inputs(pairs, other)
    default = model_inputs(pairs, DEFAULT_PARAMS)
    longest = max(DEFAULT_PARAMS.num_frames(a.size) for a, _ in recordings[:3])  # under both budgets
    assert 50 < longest < DEFAULT_PARAMS.max_frames
    assert inputs.mfcc.shape[1] == 50 and default.mfcc.shape[1] == longest
    for row, (audio, rate) in enumerate(recordings[:3]):
        expected = mfcc(audio, rate, other)
        assert np.array_equal(inputs.mfcc[row, : expected.shape[0]], expected)
        assert not np.allclose(inputs.mfcc[row, :50], default.mfcc[row, :50], atol=0.1)


def test_a_batch_without_pcm16_halves_computes_nothing():
    pairs = [mfcc_pair("a", np.ones((3, 13), np.float32)), mfcc_pair("b", np.ones((5, 13), np.float32))]
    inputs = model_inputs(pairs, DEFAULT_PARAMS)
    assert inputs.pcm_halves == 0 and inputs.features_s == 0.0
    assert inputs.mfcc.shape == (2, 5, 13) and not inputs.mfcc[0, 3:].any()
