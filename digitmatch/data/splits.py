"""Train/test splits that never share a recording or an image.

* :func:`recording_split`: FSDD's convention, recordings with index 0-4 are the test set.
* :func:`speaker_split`: leave one speaker out (all of that speaker's recordings are test).
* MNIST: the ``train`` file versus the ``t10k`` file (writer-disjoint by MNIST's construction);
  load them with :func:`digitmatch.data.mnist.load_mnist`.
* :func:`validation_split`: a fixed, seeded split of a training pool (never re-drawn per epoch).
* :func:`append_training_only`: recordings that may only ever be trained on (the synthetic voices
  of :mod:`digitmatch.data.voices`) are appended after the real ones once the test split is drawn,
  so no test split can hold one and every real recording keeps its position; their speakers must
  not share a name with a real speaker.
"""

from __future__ import annotations

import numpy as np

TEST_INDICES = range(0, 5)


def recording_split(recs) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) into ``recs``: index 0-4 is test, the rest train."""
    test = np.isin(recs.indices, list(TEST_INDICES))
    return np.flatnonzero(~test), np.flatnonzero(test)


def speaker_split(recs, speaker: str) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): every recording of ``speaker`` is test."""
    test = recs.speakers == speaker
    if not test.any():
        known = ", ".join(sorted(set(recs.speakers.tolist())))
        raise ValueError(f"unknown speaker {speaker!r} (known: {known})")
    return np.flatnonzero(~test), np.flatnonzero(test)


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) over ``range(n)``: ``round(n * fraction)`` seeded-random rows for validation."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def append_training_only(recs, extra) -> tuple:
    """(``recs`` followed by ``extra``, the positions of ``extra``'s recordings in it)."""
    shared = sorted(set(recs.speakers.tolist()) & set(extra.speakers.tolist()))
    if shared:
        raise ValueError(f"extra recordings reuse the speaker name(s) {', '.join(shared)} of the data set")
    return recs.concat(extra), np.arange(len(recs), len(recs) + len(extra), dtype=np.int64)
