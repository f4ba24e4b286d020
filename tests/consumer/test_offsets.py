import pytest

from digitmatch.consumer.offsets import OffsetTracker


def test_a_pending_half_holds_the_commit_point():
    t = OffsetTracker()
    t.assign([0])
    for off in range(5):
        t.track(0, off)
    for off in (0, 2, 3, 4):  # offset 1 is a half waiting for its partner
        t.finish(0, off)
    assert t.commit_point(0) == 1
    assert t.to_commit() == {0: 1}
    t.finish(0, 1)
    assert t.commit_point(0) == 5
    assert t.unfinished(0) == 0


def test_out_of_order_completion():
    t = OffsetTracker()
    for off in range(10, 16):
        t.track("p", off)
    assert t.commit_point("p") == 10
    for off in (15, 13, 11):
        t.finish("p", off)
    assert t.commit_point("p") == 10
    t.finish("p", 10)
    assert t.commit_point("p") == 12
    t.finish("p", 12)
    assert t.commit_point("p") == 14
    t.finish("p", 14)
    assert t.commit_point("p") == 16


def test_only_moved_commit_points_are_reported():
    t = OffsetTracker()
    t.track(0, 0)
    t.track(1, 7)
    assert t.to_commit() == {0: 0, 1: 7}
    t.mark_committed({0: 0, 1: 7})
    assert t.to_commit() == {}
    t.finish(1, 7)
    assert t.to_commit() == {1: 8}
    t.mark_committed({1: 8})
    assert t.to_commit() == {}


def test_partitions_are_independent_and_revocable():
    t = OffsetTracker()
    t.assign([0, 1])
    t.track(0, 3)
    t.track(1, 3)
    t.finish(1, 3)
    assert t.commit_point(0) == 3 and t.commit_point(1) == 4
    t.revoke([1])
    assert t.commit_point(1) is None
    assert t.finish(1, 3) is False  # a late acknowledgement for a revoked partition is ignored
    assert t.to_commit() == {0: 3}
    assert t.partitions() == [0]


def test_reassignment_starts_afresh():
    t = OffsetTracker()
    t.track(0, 5)
    t.assign([0])
    assert t.commit_point(0) is None
    t.track(0, 2)  # read again from the committed offset
    assert t.commit_point(0) == 2


def test_finishing_unknown_or_passed_offsets_is_ignored():
    t = OffsetTracker()
    t.track(0, 4)
    t.finish(0, 4)
    assert t.commit_point(0) == 5
    assert t.finish(0, 4) is False
    assert t.finish(0, 99) is False
    assert t.commit_point(0) == 5


def test_offsets_must_increase():
    t = OffsetTracker()
    t.track(0, 4)
    with pytest.raises(ValueError):
        t.track(0, 4)


def test_the_commit_point_never_splits_a_pair():
    """A pair at offsets 0 and 2 around a pending half at 1: committing 1 would make a restart read
    offset 2 without its partner at 0."""
    t = OffsetTracker()
    for off in range(4):
        t.track(0, off)
    assert t.span(0, 0, 2)
    t.finish(0, 0)
    t.finish(0, 2)
    t.finish(0, 3)
    assert t.commit_point(0) == 0  # not 1
    t.finish(0, 1)
    assert t.commit_point(0) == 4


def test_nested_and_chained_spans():
    t = OffsetTracker()
    for off in range(10):
        t.track("p", off)
    t.span("p", 0, 3)
    t.span("p", 2, 7)  # starts inside 0..3: passing 0 needs everything up to 7
    t.span("p", 8, 9)
    for off in (0, 1, 2, 3, 4, 5, 6, 8, 9):
        t.finish("p", off)
    assert t.commit_point("p") == 0
    t.finish("p", 7)
    assert t.commit_point("p") == 10


def test_a_span_extended_by_a_late_duplicate():
    t = OffsetTracker()
    for off in range(6):
        t.track(0, off)
    t.span(0, 1, 2)
    t.span(0, 1, 5)  # a duplicate of the pair's half read at offset 5
    for off in (0, 1, 2, 3, 5):
        t.finish(0, off)
    assert t.commit_point(0) == 1
    t.finish(0, 4)
    assert t.commit_point(0) == 6


def test_span_after_the_first_offset_was_committed_is_ignored():
    t = OffsetTracker()
    t.track(0, 0)
    t.finish(0, 0)
    assert t.commit_point(0) == 1
    t.track(0, 1)
    assert t.span(0, 0, 1) is False
    t.finish(0, 1)
    assert t.commit_point(0) == 2


def _interleaved(t, partition, pairs):
    """Pairs k = 0 .. pairs-1 whose halves sit at offsets 2k and 2k+3: every pair overlaps the next
    (A0 x A1 B0 A2 B1 ...), as when each half is sent a little after its partner's."""
    spans = {}
    for k in range(pairs):
        spans[2 * k] = 2 * k + 3
    last = 2 * pairs + 1
    for off in range(last + 1):
        t.track(partition, off)
    for first, second in spans.items():
        t.span(partition, first, second)
    t.finish(partition, 1)  # not part of a pair (say, dead-lettered)
    return spans, last


def test_without_lookback_overlapping_pairs_hold_the_commit_point():
    t = OffsetTracker()
    spans, last = _interleaved(t, 0, 50)
    for first, second in spans.items():
        if first < 90:
            t.finish(0, first)
            t.finish(0, second)
    assert t.commit_point(0) == 0  # every candidate point splits a decided pair


def test_with_lookback_the_commit_point_follows_the_first_unfinished_record():
    t = OffsetTracker(lookback=4)
    spans, last = _interleaved(t, 0, 50)
    for first, second in spans.items():
        if first < 90:
            t.finish(0, first)
            t.finish(0, second)
    # 90 (pair 45's first half) is the first unfinished offset; the one decided pair that 90
    # splits (88..91) starts 2 below it
    assert t.commit_point(0) == 90
    assert t.unfinished(0) == 11  # 90 .. 101 but 91


def test_a_pair_spread_wider_than_the_lookback_holds_the_commit_point_until_it_can_jump():
    t = OffsetTracker(lookback=2)
    for off in range(12):
        t.track(0, off)
    t.span(0, 1, 8)
    for off in range(12):
        if off != 5:
            t.finish(0, off)
    # 2 and 3 are within 2 of the pair's first half; 4 .. 8 would split it further away
    assert t.commit_point(0) == 3
    t.finish(0, 5)
    assert t.commit_point(0) == 12


def test_spans_passed_by_the_commit_point_are_kept_until_they_end():
    t = OffsetTracker(lookback=3)
    for off in range(4):
        t.track(0, off)
    t.span(0, 0, 3)
    for off in (0, 1):
        t.finish(0, off)
    assert t.commit_point(0) == 2  # splits 0..3, which starts 2 below
    for off in range(4, 8):
        t.track(0, off)
    for off in (2, 3, 4, 5, 6, 7):
        t.finish(0, off)
    assert t.commit_point(0) == 8  # 3 was passed: the span is over


def test_lookback_must_not_be_negative():
    with pytest.raises(ValueError):
        OffsetTracker(lookback=-1)
