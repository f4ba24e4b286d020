"""Commit points, commits and where a partition's reading starts (consumer/checkpointing.py)."""

from __future__ import annotations

import pytest
from fake_kafka import FakeConsumer, FakeKafka

from digitmatch.consumer import commit_metadata
from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.kafka.client import Committed, Partition, Record

TP = Partition("in", 0)


def records(*offsets: int) -> list[Record]:
    return [Record(o, b"k", b"v", []) for o in offsets]


def checkpoint(lookback: int = 0, keeps_metadata: bool = True, **kwargs):
    consumer = FakeConsumer(FakeKafka({"in": 1}, keeps_metadata=keeps_metadata))
    return Checkpoint(consumer, lookback, MatcherMetrics(), **kwargs), consumer


def placed(cp, consumer, committed: Committed | None = None):
    """``cp`` given the partition, its committed position read."""
    if committed is not None:
        consumer.kafka.commit_offsets({TP: committed})
    cp.assign({TP})
    assert cp.place({TP: records(99)}) == {}  # read from wherever the consumer was: dropped


def read(cp, *offsets):
    """(handled, remembered with their rejoin flags) of reading ``offsets``."""
    remembered = []
    handled = [r.offset for r in cp.read_back(TP, records(*offsets), lambda r, rejoin: remembered.append((r.offset, rejoin)))]
    return handled, remembered


def test_commits_the_finished_prefix_with_the_unfinished_records_after_it():
    cp, consumer = checkpoint()
    placed(cp, consumer)
    for offset in range(4):
        cp.track(TP, offset)
    cp.finish([(TP, 0), (TP, 2)])
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}
    progress = commit_metadata.decode(1, consumer.kafka.metadata[TP])
    assert progress.end == 4 and progress.unfinished == {1, 3}
    commits = consumer.kafka.commits
    cp.commit()
    assert consumer.kafka.commits == commits  # nothing changed: nothing committed
    cp.finish([(TP, 1)])
    cp.revoke({TP})
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}  # no longer ours


def test_a_failed_commit_is_counted_and_tried_again():
    cp, consumer = checkpoint()
    placed(cp, consumer)
    cp.track(TP, 0)
    cp.finish([(TP, 0)])
    consumer.fail_commits = 1
    cp.commit()
    assert consumer.kafka.committed == {} and cp.metrics.commits.labels(result="error")._value.get() == 1
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}


def test_a_partition_is_read_from_its_committed_position_each_time_it_is_assigned():
    cp, consumer = checkpoint()
    placed(cp, consumer)
    assert consumer.positions[TP] == 0  # nothing committed: from the start
    for offset in range(4):
        cp.track(TP, offset)
    cp.finish([(TP, 0)])  # 1..3 unfinished: the commit point is 1
    cp.commit()
    cp.revoke({TP})
    placed(cp, consumer)
    assert consumer.positions[TP] == 1
    assert read(cp, 1, 2, 3, 4) == ([1, 2, 3, 4], [])


def test_the_lookback_window_restores_memory_and_the_metadata_spares_finished_records():
    cp, consumer = checkpoint(lookback=3)
    placed(cp, consumer, Committed(10, commit_metadata.encode(10, 15, [10, 13])))
    assert consumer.positions[TP] == 7
    handled, remembered = read(cp, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
    assert handled == [10, 13, 15, 16]
    assert remembered == [(7, False), (8, False), (9, False), (11, False), (12, False), (14, False)]
    assert read(cp, 17) == ([17], [])


def test_without_metadata_everything_from_the_committed_offset_is_handled_again():
    """Tansu drops the metadata: at least once as before (halves remembered may be joined again)."""
    cp, consumer = checkpoint(lookback=2, keeps_metadata=False)
    placed(cp, consumer, Committed(10, commit_metadata.encode(10, 15, [10])))
    assert consumer.positions[TP] == 8
    assert read(cp, 8, 9, 10, 11) == ([10, 11], [(8, True), (9, True)])


def test_a_commit_while_reading_back_keeps_what_the_last_commit_said_of_the_rest():
    cp, consumer = checkpoint()
    placed(cp, consumer, Committed(10, commit_metadata.encode(10, 20, [10, 12, 18])))
    for record in cp.read_back(TP, records(10, 11, 12, 13), lambda r, rejoin: None):
        cp.track(TP, record.offset)  # handled (10, 12), as the loop does, between remembered ones
    cp.finish([(TP, 10)])
    (position,) = cp.to_commit().values()
    progress = commit_metadata.decode(position.offset, position.metadata)
    assert position.offset == 12 and progress.end == 20 and progress.unfinished == {12, 18}


def test_unfinished_records_beyond_the_budget_are_cut_at_least_once_and_refused_exactly_once():
    far_apart = list(range(0, 100_000, 1000))
    for exact in (False, True):
        cp, consumer = checkpoint(budget=60, exact=exact)
        placed(cp, consumer)
        for offset in range(100_000):
            cp.track(TP, offset)
        cp.finish((TP, o) for o in range(100_000) if o not in far_apart)
        assert set(cp.overflowing()) == {TP}
        if exact:
            with pytest.raises(ValueError):
                cp.to_commit()
            continue
        (position,) = cp.to_commit().values()
        assert len(position.metadata) <= 60
        progress = commit_metadata.decode(0, position.metadata)
        kept = sorted(progress.unfinished)
        assert kept == far_apart[:len(kept)] and progress.end == far_apart[len(kept)]
