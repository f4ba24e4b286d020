"""The outbox's rules (consumer/outbox.py) with a producer that reports what the test says."""

from __future__ import annotations

from digitmatch.consumer.metrics import MatcherMetrics
from digitmatch.consumer.outbox import Outbox, Outgoing
from digitmatch.kafka.client import ClientError, OutgoingRecord, Partition, produce_each
from digitmatch.wire import H_DLQ_REASON, H_DLQ_SOURCE

TP = Partition("in", 0)


class Producer:
    """Reports each record at once: acknowledged, or the next of ``errors``."""

    def __init__(self, errors=()):
        self.errors = list(errors)
        self.sent: list[OutgoingRecord] = []
        self.closed = False

    def produce(self, record, on_delivery):
        self.sent.append(record)
        on_delivery(self.errors.pop(0), None) if self.errors else on_delivery(None, len(self.sent) - 1)

    def produce_many(self, records, on_delivery):
        produce_each(self, records, on_delivery)

    def flush(self, timeout_s):
        pass

    def close(self, timeout_s):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def outbox(producers, clock, ours=lambda tp: True):
    finished = []
    made = iter(producers)
    box = Outbox(lambda: next(made), MatcherMetrics(), on_finished=finished.extend, still_ours=ours,
                 retry_delay_s=1.0, reset_after_failures=3, reset_interval_s=5.0, clock=clock)
    return box, finished


def verdict(offset: int) -> Outgoing:
    return Outgoing(OutgoingRecord("out", b"p", b"{}", []), [(TP, offset)], "verdict", "match", True)


def test_an_acknowledged_record_finishes_its_offsets_and_is_counted():
    box, finished = outbox([Producer()], Clock())
    box.send(verdict(7))
    assert finished == []  # the reports are taken on the poll thread
    box.collect()
    assert finished == [(TP, 7)]
    assert box.metrics.verdicts.labels(outcome="match")._value.get() == 1


def test_a_failure_is_sent_again_after_the_delay_and_finishes_only_then():
    clock = Clock()
    producer = Producer(errors=[ClientError("down")])
    box, finished = outbox([producer], clock)
    box.send(verdict(1))
    box.collect()
    assert finished == [] and box.retrying and len(producer.sent) == 1
    clock.now += 0.5
    box.collect()
    assert len(producer.sent) == 1  # not due yet
    clock.now += 0.6
    box.collect()
    box.collect()
    assert finished == [(TP, 1)] and not box.retrying
    assert box.metrics.kafka_errors.labels(stage="produce")._value.get() == 1


def test_a_failure_for_a_partition_no_longer_ours_is_let_go():
    box, finished = outbox([Producer(errors=[ClientError("down")])], Clock(), ours=lambda tp: False)
    box.send(verdict(1))
    box.collect()
    assert finished == [] and not box.retrying


def test_a_producer_failing_again_and_again_is_replaced_at_most_every_interval():
    clock = Clock()
    failing, fresh = Producer(errors=[ClientError("fenced")] * 10), Producer()
    box, finished = outbox([failing, fresh], clock)
    for offset in range(3):
        box.send(verdict(offset))
    box.collect()
    assert box.producer is fresh  # three in a row
    clock.now += 1.0
    box.collect()  # the retries go out on the new producer
    box.collect()
    assert sorted(finished) == [(TP, 0), (TP, 1), (TP, 2)]


def test_a_dead_letter_refused_as_too_large_goes_at_once_in_its_smallest_form():
    from digitmatch.consumer.dead_letter import dead_letter
    from digitmatch.wire import Reason

    producer = Producer(errors=[ClientError("too big", too_large=True)])
    box, finished = outbox([producer], Clock())
    record = dead_letter("dlq", topic="in", partition=0, offset=3, key=b"k", value=b"v" * 10_000,
                         headers=[("x-a", b"b")], reason=Reason.BAD_PAIR_ID, detail="d")
    box.send(Outgoing(record, [(TP, 3)], "dead_letter", "bad_pair_id"))
    box.collect()
    box.collect()
    assert finished == [(TP, 3)]
    small = producer.sent[-1]
    assert small.value == b"" and dict(small.headers)[H_DLQ_REASON] == b"bad_pair_id"
    assert dict(small.headers)[H_DLQ_SOURCE] == b"in:0:3"
    assert box.metrics.dead_letters_truncated._value.get() == 1


class HeldProducer(Producer):
    """Keeps the reports of ``produce_many`` until :meth:`report` is called for each (by index)."""

    def __init__(self):
        super().__init__()
        self.calls: list[list[OutgoingRecord]] = []
        self.pending = None

    def produce_many(self, records, on_delivery):
        self.calls.append(records)
        self.sent.extend(records)
        self.pending = on_delivery

    def report(self, index, error=None):
        self.pending(index, error, None if error else index)


def batch(*offsets: int) -> list[Outgoing]:
    return [verdict(offset) for offset in offsets]


def test_a_batch_goes_to_the_producer_in_one_call_and_finishes_once_every_record_is_acknowledged():
    producer = HeldProducer()
    calls = []
    box = Outbox(lambda: producer, MatcherMetrics(), on_finished=calls.append, still_ours=lambda tp: True,
                 clock=Clock())
    box.send_all(batch(4, 5, 6))
    assert [len(records) for records in producer.calls] == [3]
    producer.report(2)
    producer.report(0)
    box.collect()
    assert calls == []  # one record still out
    producer.report(0)  # a second report of a record changes nothing
    producer.report(1)
    box.collect()
    assert calls == [[(TP, 4), (TP, 5), (TP, 6)]]  # in one call, in the batch's order
    assert box.metrics.verdicts.labels(outcome="match")._value.get() == 3


def test_a_failed_record_of_a_batch_is_sent_again_alone_while_the_others_finish():
    clock = Clock()
    producer = HeldProducer()
    calls = []
    box = Outbox(lambda: producer, MatcherMetrics(), on_finished=calls.append, still_ours=lambda tp: True,
                 retry_delay_s=1.0, clock=clock)
    box.send_all(batch(1, 2, 3))
    producer.report(0)
    producer.report(1, ClientError("down"))
    producer.report(2)
    box.collect()
    assert calls == [[(TP, 1), (TP, 3)]] and box.retrying
    clock.now += 1.1
    box.collect()
    assert [r.value for r in producer.calls[-1]] == [b"{}"] and len(producer.calls) == 2  # the failed one alone
    producer.report(0)
    box.collect()
    assert calls[-1] == [(TP, 2)] and not box.retrying
    assert box.metrics.kafka_errors.labels(stage="produce")._value.get() == 1


def test_an_empty_batch_sends_nothing():
    producer = HeldProducer()
    box, finished = outbox([producer], Clock())
    box.send_all([])
    box.collect()
    assert producer.calls == [] and finished == [] and box.produced == 0
