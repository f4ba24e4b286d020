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
