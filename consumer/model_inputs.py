"""A batch of joined pairs as the served model's inputs: zero-padded MFCC frames and images.

Rules:

* An ``mfcc`` spoken half goes in as sent (its producer computed it with ``features.mfcc``).
* A ``pcm16`` spoken half (the recording itself, docs/wire-format.md) gets its features here, with
  the ``FeatureParams`` of the model version that scores the batch (its ``metadata.json``): a
  version trained with other feature parameters needs no producer change, and the version named in
  a verdict is the one whose parameters computed its features. A batch retried on another version
  (a fallback) gets its features again with that version's parameters.
* The pcm16 halves of a batch are computed together, in one call of the feature graph
  (``features.mfcc_batch``); each recording's frames are the same bits as ``features.mfcc`` of it
  alone, so a pcm16 pair gets the verdict of its recording sent as MFCC frames.
* This runs on the inference thread, where the batch is built for the model, never on the poll
  loop (docs/benchmarks.md, "pcm16 spoken halves", has its cost). The wire checked each recording
  (length, rate, dtype), so computing its features cannot fail on its data.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from digitmatch.consumer.join import JoinedPair
from digitmatch.features import FeatureParams, mfcc_batch, pad_batch


class ModelInputs:
    """``mfcc`` (B, T, n_mfcc) float32, ``images`` (B, 28, 28) uint8, and what the features cost."""

    __slots__ = ("mfcc", "images", "pcm_halves", "features_s")

    def __init__(self, mfcc: np.ndarray, images: np.ndarray, pcm_halves: int, features_s: float):
        self.mfcc = mfcc
        self.images = images
        self.pcm_halves = pcm_halves  # spoken halves whose features were computed here
        self.features_s = features_s  # seconds spent computing them


def spoken_features(pairs: Sequence[JoinedPair], params: FeatureParams) -> tuple[list[np.ndarray], int]:
    """Each pair's MFCC frames (as sent, or computed from its recording with ``params``), and how
    many were computed."""
    frames: list[np.ndarray | None] = [None if p.spoken.sample_rate is not None else p.spoken.array for p in pairs]
    recordings = [(p.spoken.array, p.spoken.sample_rate) for p in pairs if p.spoken.sample_rate is not None]
    if recordings:
        computed = iter(mfcc_batch(recordings, params))
        frames = [next(computed) if f is None else f for f in frames]
    return frames, len(recordings)


def model_inputs(pairs: Sequence[JoinedPair], params: FeatureParams) -> ModelInputs:
    """The inputs of one model call for ``pairs``, features computed with ``params``."""
    started = time.monotonic()
    frames, computed = spoken_features(pairs, params)
    features_s = time.monotonic() - started if computed else 0.0
    mfcc = pad_batch(frames, params.max_frames)
    images = np.stack([p.written.array for p in pairs])
    return ModelInputs(mfcc, images, computed, features_s)
