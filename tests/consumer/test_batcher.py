import pytest

from digitmatch.consumer.batcher import Batch, Batcher, FlushReason, combine


def test_cut_when_full():
    b = Batcher(max_size=3, max_delay_s=10)
    assert b.add("a", 0.0) is None
    assert b.add("b", 0.1) is None
    batch = b.add("c", 0.2)
    assert batch.items == ["a", "b", "c"]
    assert batch.reason is FlushReason.FULL
    assert len(b) == 0 and b.deadline() is None


def test_cut_at_the_deadline_of_the_oldest_item():
    b = Batcher(max_size=100, max_delay_s=0.02)
    b.add("a", 1.0)
    b.add("b", 1.015)
    assert b.deadline() == pytest.approx(1.02)
    assert b.due(1.019) is None
    batch = b.due(1.02)
    assert batch.items == ["a", "b"] and batch.reason is FlushReason.DEADLINE
    assert b.due(5.0) is None
    # the next batch's clock starts at its own first item
    b.add("c", 7.0)
    assert b.deadline() == pytest.approx(7.02)


def test_drain_cuts_whatever_is_open():
    b = Batcher(max_size=100, max_delay_s=60)
    assert b.drain(0.0) is None
    b.add("a", 0.0)
    batch = b.drain(0.5)
    assert batch.items == ["a"] and batch.reason is FlushReason.DRAIN
    assert len(b) == 0


def test_zero_delay_flushes_on_the_next_check():
    b = Batcher(max_size=100, max_delay_s=0)
    b.add("a", 3.0)
    assert b.due(3.0).items == ["a"]


def test_size_one_never_waits():
    b = Batcher(max_size=1, max_delay_s=60)
    assert b.add("a", 0.0).items == ["a"]


def test_rejects_bad_limits():
    with pytest.raises(ValueError):
        Batcher(max_size=0, max_delay_s=1)
    with pytest.raises(ValueError):
        Batcher(max_size=1, max_delay_s=-1)


def test_combine_keeps_the_order_and_the_first_reason():
    first = Batch(["a", "b"], FlushReason.DEADLINE)
    second = Batch(["c"], FlushReason.FULL)
    both = combine([first, second])
    assert both.items == ["a", "b", "c"]
    assert both.reason is FlushReason.DEADLINE
    assert first.items == ["a", "b"]  # the parts are left as they were
    assert combine([second]) is second
