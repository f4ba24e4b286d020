"""Commit points, commits and where a partition's reading starts (consumer/checkpointing.py)."""

from __future__ import annotations

from fake_kafka import FakeConsumer, FakeKafka

from digitmatch.consumer.checkpointing import Checkpoint
from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.kafka.client import Partition, Record

TP = Partition("in", 0)


def records(*offsets: int) -> list[Record]:
    return [Record(o, b"k", b"v", []) for o in offsets]


def checkpoint(lookback: int = 0):
    consumer = FakeConsumer(FakeKafka({"in": 1}))
    return Checkpoint(consumer, lookback, MatcherMetrics()), consumer


def test_commits_the_finished_prefix_of_assigned_partitions_only():
    cp, consumer = checkpoint()
    cp.assign({TP})
    for offset in range(3):
        cp.track(TP, offset)
    cp.finish([(TP, 0), (TP, 2)])
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}
    cp.finish([(TP, 1)])
    cp.revoke({TP}, lost=True)
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}  # no longer ours


def test_a_failed_commit_is_counted_and_tried_again():
    cp, consumer = checkpoint()
    cp.assign({TP})
    cp.track(TP, 0)
    cp.finish([(TP, 0)])
    consumer.fail_commits = 1
    cp.commit()
    assert consumer.kafka.committed == {} and cp.metrics.commits.labels(result="error")._value.get() == 1
    cp.commit()
    assert consumer.kafka.committed == {TP: 1}


def test_a_partition_given_back_is_sought_to_its_commit_point():
    cp, consumer = checkpoint()
    cp.assign({TP})
    for offset in range(4):
        cp.track(TP, offset)
    cp.finish([(TP, 0)])  # 1..3 pending: the commit point is 1
    cp.revoke({TP}, lost=False)
    cp.assign({TP})
    consumer.positions[TP] = 4
    assert cp.place({TP: records(4, 5)}) == {}  # read from the old position: dropped
    assert consumer.positions[TP] == 1


def test_a_new_partition_reads_back_the_lookback_window_to_restore_memory():
    cp, consumer = checkpoint(lookback=5)
    cp.assign({TP})
    assert cp.place({TP: records(10, 11)}) == {}  # the committed offset was 10: start at 5
    assert consumer.positions[TP] == 5
    remembered = []
    rest = cp.read_back(TP, records(5, 6, 7, 8, 9, 10, 11), remembered.append)
    assert [r.offset for r in remembered] == [5, 6, 7, 8, 9]
    assert [r.offset for r in rest] == [10, 11]
    assert cp.read_back(TP, records(12), remembered.append) == records(12)  # done reading back


def test_without_lookback_a_new_partition_starts_where_it_is():
    cp, consumer = checkpoint(lookback=0)
    cp.assign({TP})
    batch = {TP: records(10, 11)}
    assert cp.place(batch) == batch
