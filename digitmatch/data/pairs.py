"""Pairs of (recording, image) with a "same digit" label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pairs:
    """Indices into a Recordings (``audio``) and an Images (``image``), ``label`` 1 = same digit."""

    audio: np.ndarray  # int64 [N]
    image: np.ndarray  # int64 [N]
    label: np.ndarray  # uint8 [N]

    def __len__(self) -> int:
        return int(self.label.shape[0])


def make_pairs(audio_digits, image_digits, n: int, match_ratio: float, seed: int) -> Pairs:
    """``n`` shuffled pairs, exactly ``round(n * match_ratio)`` of them matches.

    Recordings are used as evenly as possible (a seeded permutation, cycled). A match takes a
    random image of the recording's digit; a non-match a random image of a uniformly random other
    digit. Deterministic for a given ``seed``.
    """
    audio_digits = np.asarray(audio_digits, dtype=np.int64)
    image_digits = np.asarray(image_digits, dtype=np.int64)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if not (0.0 <= float(match_ratio) <= 1.0) or np.isnan(match_ratio):
        raise ValueError(f"match_ratio must be in [0, 1], got {match_ratio!r}")
    if audio_digits.size == 0:
        raise ValueError("no recordings to pair")
    if image_digits.size == 0:
        raise ValueError("no images to pair")
    by_digit = {d: np.flatnonzero(image_digits == d) for d in range(10)}
    available = [d for d in range(10) if by_digit[d].size]
    n_match = int(round(n * float(match_ratio)))
    spoken = sorted(set(audio_digits.tolist()))
    if n_match > 0:
        for digit in spoken:
            if by_digit.get(digit, np.empty(0)).size == 0:
                raise ValueError(f"no images of digit {digit} to make a matching pair")
    if n_match < n:
        for digit in spoken:
            if not any(d != digit for d in available):
                raise ValueError(f"no images of a digit other than {digit} to make a non-matching pair")
    rng = np.random.default_rng(seed)

    reps = -(-n // audio_digits.size)
    audio = np.concatenate([rng.permutation(audio_digits.size) for _ in range(reps)])[:n]
    is_match = np.zeros(n, dtype=bool)
    is_match[rng.permutation(n)[:n_match]] = True

    digits = audio_digits[audio]
    avail = np.array(available, dtype=np.int64)
    # A non-match digit: uniform over the available digits other than the spoken one.
    has_own = np.isin(digits, avail)
    draw = (rng.random(n) * (avail.size - has_own)).astype(np.int64)
    own_pos = np.searchsorted(avail, digits)
    draw = draw + (has_own & (draw >= own_pos))
    target = np.where(is_match, digits, avail[np.minimum(draw, avail.size - 1)])
    # An image of the target digit: uniform over that digit's images.
    by_label = np.concatenate([by_digit[d] for d in range(10)])
    counts = np.array([by_digit[d].size if 0 <= d <= 9 else 0 for d in range(10)], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    t = np.clip(target, 0, 9)
    image = by_label[starts[t] + (rng.random(n) * counts[t]).astype(np.int64)]

    order = rng.permutation(n)
    return Pairs(
        audio=audio[order].astype(np.int64),
        image=image[order],
        label=is_match[order].astype(np.uint8),
    )
