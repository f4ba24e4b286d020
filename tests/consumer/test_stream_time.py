import pytest

from digitmatch.consumer.stream_time import StreamClock

WALL = 1_800_000_000_000  # the matcher's wall clock in these tests, epoch ms


def test_stream_time_is_the_highest_timestamp_read_and_never_goes_back():
    clock = StreamClock()
    assert clock.now(0) is None
    assert clock.observe(0, WALL - 5_000, WALL) == WALL - 5_000
    assert clock.observe(0, WALL - 9_000, WALL) == WALL - 5_000  # an older record: a half stamped with the clock
    assert clock.observe(0, WALL - 1_000, WALL) == WALL - 1_000
    assert clock.now(0) == WALL - 1_000
    assert clock.now(1) is None  # partitions are apart


def test_a_record_from_the_future_or_without_timestamp_counts_as_read_now():
    clock = StreamClock()
    assert clock.observe(0, WALL + 3_600_000, WALL) == WALL
    assert clock.observe(1, -1, WALL) == WALL
    assert clock.observe(2, None, WALL) == WALL


def test_a_quiet_partition_moves_on_with_the_monotonic_clock_one_step_per_poll_at_most():
    clock = StreamClock(max_step_s=0.5)
    clock.observe(0, WALL, WALL)
    clock.idle([0, 7], 0.1)  # partition 7 was never read: it gets no stream time
    assert clock.now(0) == WALL + 100
    assert clock.now(7) is None
    clock.idle([0], 15.0)  # a stall (SIGSTOP) of 15 s between two polls: one step
    assert clock.now(0) == WALL + 600
    clock.idle([0], -1.0)  # a clock that went back moves nothing
    assert clock.now(0) == WALL + 600
    # a record older than where idling took it does not take it back
    assert clock.observe(0, WALL + 200, WALL + 10_000) == WALL + 600


def test_forgotten_partitions_start_again_from_their_next_record():
    clock = StreamClock()
    clock.observe(0, WALL, WALL)
    clock.observe(1, WALL, WALL)
    clock.forget([0])
    assert clock.now(0) is None and clock.now(1) == WALL
    assert clock.observe(0, WALL - 60_000, WALL) == WALL - 60_000


def test_rejects_a_step_that_is_not_positive():
    with pytest.raises(ValueError):
        StreamClock(max_step_s=0)
