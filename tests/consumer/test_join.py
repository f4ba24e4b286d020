import gc

import numpy as np
import pytest

from digitmatch.consumer.join import HALF_OVERHEAD_BYTES, HalfRecord, JoinOutcome, JoinTable, digest
from digitmatch.consumer.stream_time import StreamClock
from digitmatch.wire import Half


def half(pair_id, which, offset, seen=0.0, partition=0, content=b"a", digit=None, stream_ms=None):
    """A half read at monotonic ``seen`` s; its stream stamp is ``seen`` in ms unless given."""
    array = np.frombuffer(content, np.uint8)
    stream = seen * 1000 if stream_ms is None else stream_ms
    return HalfRecord(partition, offset, pair_id, which, array, digest(content), seen, int(seen * 1000), digit,
                      None, stream)


def clock_at(**partitions_ms) -> StreamClock:
    """A stream clock whose partition ``p<N>`` stands at the given milliseconds."""
    clock = StreamClock()
    for name, ms in partitions_ms.items():
        clock.observe(int(name[1:]), ms, ms)
    return clock


@pytest.mark.parametrize("first", [Half.SPOKEN, Half.WRITTEN])
def test_joins_in_either_order(first):
    table = JoinTable(ttl_s=10, max_pending=10)
    assert table.add(half("p1", first, 0, seen=1.0, content=b"x")).outcome is JoinOutcome.PENDING
    assert len(table) == 1
    result = table.add(half("p1", first.other, 5, seen=3.0, content=b"y"))
    assert result.outcome is JoinOutcome.JOINED
    pair = result.pair
    assert pair.spoken.half is Half.SPOKEN and pair.written.half is Half.WRITTEN
    assert pair.first.offset == 0 and pair.second.offset == 5
    assert pair.joined == 3.0
    assert sorted(pair.offsets) == [(0, 0), (0, 5)]
    assert len(table) == 0


def test_interleaved_pairs_join_with_their_own_partner():
    table = JoinTable(ttl_s=10, max_pending=100)
    ids = [f"id-{i}" for i in range(20)]
    for i, pid in enumerate(ids):
        assert table.add(half(pid, Half.SPOKEN, i, digit=i % 10)).outcome is JoinOutcome.PENDING
    for i, pid in enumerate(reversed(ids)):
        result = table.add(half(pid, Half.WRITTEN, 100 + i, digit=(19 - i) % 10))
        assert result.outcome is JoinOutcome.JOINED
        assert result.pair.pair_id == pid
        assert result.pair.spoken.digit == result.pair.written.digit


def test_same_pair_id_on_different_partitions_are_different_pairs():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.add(half("p", Half.SPOKEN, 0, partition=0))
    assert table.add(half("p", Half.WRITTEN, 0, partition=1)).outcome is JoinOutcome.PENDING
    assert table.add(half("p", Half.WRITTEN, 1, partition=0)).outcome is JoinOutcome.JOINED
    assert len(table) == 1


def test_identical_duplicate_is_idempotent_pending_and_after_decision():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.add(half("p", Half.SPOKEN, 3, content=b"s"))
    dup = table.add(half("p", Half.SPOKEN, 4, content=b"s"))
    assert dup.outcome is JoinOutcome.DUPLICATE and dup.related_offset == 3
    assert table.add(half("p", Half.WRITTEN, 2, content=b"w")).outcome is JoinOutcome.JOINED
    late = table.add(half("p", Half.WRITTEN, 5, content=b"w"))
    assert late.outcome is JoinOutcome.DUPLICATE and late.related_offset == 2  # the pair's lowest offset
    assert table.add(half("p", Half.SPOKEN, 6, content=b"s")).outcome is JoinOutcome.DUPLICATE
    assert len(table) == 0


def test_conflicting_duplicate_keeps_the_first():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.add(half("p", Half.SPOKEN, 0, content=b"one"))
    result = table.add(half("p", Half.SPOKEN, 1, content=b"two"))
    assert result.outcome is JoinOutcome.CONFLICT
    assert "offset 0" in result.detail and result.related_offset == 0
    joined = table.add(half("p", Half.WRITTEN, 2, content=b"w"))
    assert joined.pair.spoken.offset == 0


def test_different_half_after_decision_is_already_decided():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.add(half("p", Half.SPOKEN, 0, content=b"s"))
    table.add(half("p", Half.WRITTEN, 1, content=b"w"))
    result = table.add(half("p", Half.WRITTEN, 2, content=b"other"))
    assert result.outcome is JoinOutcome.ALREADY_DECIDED
    assert len(table) == 0


def test_ttl_expiry_by_stream_time_oldest_first_and_late_partner_is_already_decided():
    table = JoinTable(ttl_s=5, max_pending=10)
    table.add(half("a", Half.SPOKEN, 0, stream_ms=1_000))
    table.add(half("b", Half.WRITTEN, 1, stream_ms=3_000))
    assert table.expire(clock_at(p0=5_999)) == []
    assert [h.pair_id for h in table.expire(clock_at(p0=6_000))] == ["a"]
    assert [h.pair_id for h in table.expire(clock_at(p0=100_000))] == ["b"]
    late = table.add(half("a", Half.WRITTEN, 9, seen=6.0, content=b"w"))
    assert late.outcome is JoinOutcome.ALREADY_DECIDED


def test_expiry_is_judged_per_partition_and_never_by_the_wall_clock():
    table = JoinTable(ttl_s=5, max_pending=10)
    # read long ago by the monotonic clock, but partition 1's stream has not moved past them
    table.add(half("x", Half.SPOKEN, 0, seen=0.0, partition=0, stream_ms=1_000))
    table.add(half("y", Half.SPOKEN, 0, seen=0.0, partition=1, stream_ms=1_000))
    table.add(half("z", Half.SPOKEN, 0, seen=0.0, partition=2, stream_ms=1_000))
    clock = clock_at(p0=7_000, p1=2_000)  # partition 2 has no stream time yet: nothing expires there
    assert [h.pair_id for h in table.expire(clock)] == ["x"]
    assert sorted(h.pair_id for h in table.pending()) == ["y", "z"]


def test_bound_in_bytes_evicts_the_halves_read_first_whatever_their_partition():
    per_half = 10 + HALF_OVERHEAD_BYTES
    table = JoinTable(ttl_s=100, max_pending=1000, max_bytes=3 * per_half)
    table.add(half("late-read", Half.SPOKEN, 0, seen=5.0, partition=0, content=b"0123456789"))
    table.add(half("first-read", Half.SPOKEN, 0, seen=1.0, partition=1, content=b"0123456789"))
    table.add(half("second-read", Half.SPOKEN, 1, seen=2.0, partition=1, content=b"0123456789"))
    assert table.nbytes == 3 * per_half
    result = table.add(half("big", Half.SPOKEN, 1, seen=6.0, partition=0, content=bytes(10 + per_half)))
    assert [h.pair_id for h in result.evicted] == ["first-read", "second-read"]
    assert table.nbytes == per_half + (10 + per_half + HALF_OVERHEAD_BYTES)  # late-read and big
    assert len(table) == 2
    assert table.add(half("big", Half.WRITTEN, 2, partition=0)).outcome is JoinOutcome.JOINED
    assert table.nbytes == per_half
    table.revoke([0])
    assert table.nbytes == 0 and len(table) == 0


def test_bound_evicts_the_oldest_pending_half():
    table = JoinTable(ttl_s=100, max_pending=3)
    for i in range(3):
        assert table.add(half(f"p{i}", Half.SPOKEN, i, seen=float(i))).evicted == []
    result = table.add(half("p3", Half.SPOKEN, 3, seen=3.0))
    assert result.outcome is JoinOutcome.PENDING
    assert [h.pair_id for h in result.evicted] == ["p0"]
    assert len(table) == 3
    # completing a pending pair needs no room
    assert table.add(half("p1", Half.WRITTEN, 4)).outcome is JoinOutcome.JOINED
    assert len(table) == 2


def test_revoke_drops_pending_and_memory_of_those_partitions_only():
    table = JoinTable(ttl_s=100, max_pending=10)
    table.add(half("a", Half.SPOKEN, 0, partition=0))
    table.add(half("b", Half.SPOKEN, 0, partition=1))
    table.add(half("c", Half.SPOKEN, 1, partition=1, content=b"s"))
    table.add(half("c", Half.WRITTEN, 2, partition=1, content=b"w"))
    dropped = table.revoke([1])
    assert [h.pair_id for h in dropped] == ["b"]
    assert [h.pair_id for h in table.pending()] == ["a"]
    # partition 1 reassigned later: its records are read again and join afresh
    assert table.add(half("c", Half.SPOKEN, 1, partition=1, content=b"s")).outcome is JoinOutcome.PENDING


def test_decided_memory_is_bounded_per_partition():
    table = JoinTable(ttl_s=100, max_pending=10, decided_memory=2)
    for i in range(3):
        table.add(half(f"p{i}", Half.SPOKEN, 2 * i, content=b"s"))
        table.add(half(f"p{i}", Half.WRITTEN, 2 * i + 1, content=b"w"))
    assert table.add(half("p2", Half.WRITTEN, 10, content=b"x")).outcome is JoinOutcome.ALREADY_DECIDED
    # p0 was forgotten: a half for it starts a new pair
    assert table.add(half("p0", Half.WRITTEN, 11, content=b"x")).outcome is JoinOutcome.PENDING


def test_rejects_bad_limits():
    with pytest.raises(ValueError):
        JoinTable(ttl_s=0, max_pending=1)
    with pytest.raises(ValueError):
        JoinTable(ttl_s=1, max_pending=0)


def test_restored_memory_rejoins_a_split_pair_and_recognises_copies():
    table = JoinTable(ttl_s=10, max_pending=10)
    # read again before the commit point: pair a whole, pair b's spoken half only
    table.restore(half("a", Half.SPOKEN, 10, content=b"as"))
    table.restore(half("a", Half.WRITTEN, 11, content=b"aw"))
    table.restore(half("b", Half.SPOKEN, 12, content=b"bs"))
    assert len(table) == 0  # nothing is pending: those records are finished
    # past the commit point: b's written half is decided again with the restored spoken half
    result = table.add(half("b", Half.WRITTEN, 20, content=b"bw"))
    assert result.outcome is JoinOutcome.JOINED
    assert (result.pair.spoken.offset, result.pair.written.offset) == (12, 20)
    assert table.add(half("b", Half.WRITTEN, 21, content=b"bw")).outcome is JoinOutcome.DUPLICATE
    # pair a was decided with both halves before the commit point
    assert table.add(half("a", Half.WRITTEN, 22, content=b"aw")).outcome is JoinOutcome.DUPLICATE
    assert table.add(half("a", Half.SPOKEN, 23, content=b"other")).outcome is JoinOutcome.ALREADY_DECIDED
    # an unknown pair starts afresh
    assert table.add(half("c", Half.SPOKEN, 24)).outcome is JoinOutcome.PENDING


def test_restored_half_keeps_the_first_copy_and_forgets_the_partner_once_both_are_restored():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.restore(half("p", Half.SPOKEN, 1, content=b"first"))
    table.restore(half("p", Half.SPOKEN, 2, content=b"second"))  # was dead-lettered as a conflict
    assert table.add(half("p", Half.SPOKEN, 5, content=b"second")).outcome is JoinOutcome.ALREADY_DECIDED
    table.restore(half("q", Half.WRITTEN, 3, content=b"w"))
    table.restore(half("q", Half.SPOKEN, 4, content=b"s"))
    late = table.add(half("q", Half.SPOKEN, 6, content=b"s2"))
    assert late.outcome is JoinOutcome.ALREADY_DECIDED  # not joined again: q was whole before


def test_revoke_forgets_restored_halves():
    table = JoinTable(ttl_s=10, max_pending=10)
    table.restore(half("p", Half.SPOKEN, 1, partition=3))
    table.revoke([3])
    assert table.add(half("p", Half.WRITTEN, 9, partition=3)).outcome is JoinOutcome.PENDING


def test_the_memory_of_decided_pairs_is_not_walked_by_the_garbage_collector():
    # Up to --decided-memory entries per partition: tracked, every full collection would walk them.
    table = JoinTable(ttl_s=0.001, max_pending=10)
    table.add(half("joined", Half.SPOKEN, 1))
    table.add(half("joined", Half.WRITTEN, 2))
    table.add(half("lone", Half.WRITTEN, 3))
    assert [h.pair_id for h in table.expire(clock_at(p0=1_000))] == ["lone"]
    gc.collect()
    memory = table._decided[0]
    assert set(memory) == {"joined", "lone"}
    assert not any(gc.is_tracked(entry) for entry in memory.values())
    assert table.add(half("lone", Half.WRITTEN, 4)).outcome is JoinOutcome.DUPLICATE
