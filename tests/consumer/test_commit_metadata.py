"""What a commit says besides its offset (consumer/commit_metadata.py)."""

from __future__ import annotations

import pytest

from digitmatch.consumer import commit_metadata as cm


@pytest.mark.parametrize("unfinished", [[], [10], [10, 11, 12], [10, 500, 2**40]])
def test_the_progress_comes_back_as_it_was_written(unfinished):
    end = (unfinished[-1] + 1) if unfinished else 20
    written = cm.encode(10, end, unfinished)
    assert written.startswith("v1:")
    assert cm.decode(10, written) == cm.Progress(end, frozenset(unfinished))


@pytest.mark.parametrize("metadata", ["", None, "v2:AA", "v1:!!!", "v1:gA", "something else"])
def test_metadata_that_says_nothing_usable_is_none(metadata):
    assert cm.decode(10, metadata) is None


def test_an_unfinished_offset_past_the_end_is_inconsistent():
    assert cm.decode(10, cm.encode(10, 11, [12])) is None


def test_the_budget_holds_the_documented_number_of_unfinished_offsets():
    far = [i * (2**28 + 1) for i in range(1, 449)]  # 448 gaps of 5 bytes (2^28 each)
    assert cm.fits(0, far[-1] + 1, far) and not cm.fits(0, far[-1] + 1, far + [far[-1] + 2**28 + 1])
    close = list(range(0, 2 * 2245, 2))  # 2,245 gaps of 1 byte
    assert cm.fits(0, close[-1] + 1, close) and not cm.fits(0, close[-1] + 1, close + [close[-1] + 2])
    assert len(cm.encode(0, far[-1] + 1, far)) <= cm.BUDGET


def test_cutting_keeps_a_prefix_and_moves_the_end_to_the_first_offset_left_out():
    unfinished = list(range(0, 10_000, 7))
    end, kept = cm.truncated(0, 10_000, unfinished, budget=30)
    assert kept == unfinished[:len(kept)] and end == unfinished[len(kept)]
    assert len(cm.encode(0, end, kept)) <= 30
    assert cm.truncated(0, 10, [1, 2], budget=30) == (10, [1, 2])
