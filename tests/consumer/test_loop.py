"""The matcher's loop on an in-memory Kafka (fake_kafka.py) and a real tiny SavedModel: most of its
behaviour, in well under a second per test. What needs a real broker stays in test_matcher.py."""

from __future__ import annotations

import time

import pytest
from fake_kafka import FakeConsumer, FakeKafka, FakeProducer
from kafka.partitioner.default import murmur2
from matcher_harness import make_pairs, until

from digitmatch import wire
from digitmatch.consumer.config import MatcherConfig
from digitmatch.consumer import commit_metadata
from digitmatch.consumer.matcher import Matcher
from digitmatch.consumer.routing import detail
from digitmatch.consumer.transactions import TransactionFatal
from digitmatch.kafka.client import ClientError, Partition
from digitmatch.kafka.configuration import KafkaConnection

IN, OUT, DLQ = "t.pairs.in", "t.matches.out", "t.pairs.dlq"


class Running:
    """A matcher on a FakeKafka; ``consumers`` / ``producers`` are the clients it made."""

    def __init__(self, model, kafka: FakeKafka | None = None, **overrides):
        self.kafka = kafka or FakeKafka({IN: 2, OUT: 2, DLQ: 1})
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        # The partition check is off unless a test turns it on: most tests place halves in the
        # partition they need (send(partition=...)), whatever their key hashes to.
        settings = dict(kafka=KafkaConnection(bootstrap_servers="fake:9092"), model=model, input_topic=IN,
                        output_topic=OUT, dlq_topic=DLQ, metrics_host="127.0.0.1", metrics_port=0,
                        commit_interval_ms=20, max_delay_ms=5, max_batch_size=8, join_ttl_s=30,
                        partition_check="off")
        self.config = MatcherConfig(**(settings | overrides))
        self.matcher = Matcher(self.config, new_consumer=self._consumer, new_producer=self._producer)

    def _consumer(self):
        self.consumers.append(FakeConsumer(self.kafka))
        return self.consumers[-1]

    def _producer(self):
        self.producers.append(FakeProducer(self.kafka, transactional=self.config.exactly_once))
        return self.producers[-1]

    @property
    def consumer(self) -> FakeConsumer:
        return self.consumers[-1]

    def send(self, *records, partition: int | None = None, timestamp: int | None = None) -> None:
        for key, value, headers in records:
            self.kafka.append(IN, key, value, headers, partition, timestamp)

    def verdicts(self, committed_only: bool = False) -> dict[str, list[wire.Verdict]]:
        """Verdicts per pair ID; ``committed_only``: what a read_committed reader sees."""
        out: dict[str, list[wire.Verdict]] = {}
        for r in self.kafka.records(OUT, committed_only):
            verdict = wire.Verdict.from_bytes(r.value)
            out.setdefault(verdict.pair_id, []).append(verdict)
        return out

    def pending(self) -> int:
        return len(self.matcher.join)

    def __enter__(self) -> "Running":
        self.matcher.start()
        assert self.matcher.wait_ready(30), self.matcher.error
        return self

    def __exit__(self, *exc) -> None:
        self.matcher.stop(30)


def ends(kafka: FakeKafka) -> dict[Partition, int]:
    return {tp: len(log) for tp, log in kafka.logs.items() if tp.topic == IN and log}


def test_every_pair_gets_one_verdict_and_the_commit_point_passes_them(tiny_model_dir):
    pairs = make_pairs(20, "loop", seed=1)
    with Running(tiny_model_dir) as run:
        run.send(*(half for p in pairs for half in (p.spoken(), p.written())))
        assert until(lambda: len(run.verdicts()) == 20)
        assert until(lambda: run.kafka.committed == ends(run.kafka))
    verdicts = run.verdicts()
    assert all(len(v) == 1 and v[0].outcome != "unpaired" for v in verdicts.values())
    assert {(v[0].truth.spoken, v[0].truth.written) for v in verdicts.values()} == \
        {(p.spoken_digit, p.written_digit) for p in pairs}


def test_a_waiting_half_holds_the_commit_point(tiny_model_dir):
    lone, pair = make_pairs(2, "hold", seed=2)
    with Running(tiny_model_dir) as run:
        run.send(lone.spoken(), partition=0)
        run.send(pair.spoken(), pair.written(), partition=0)
        assert until(lambda: pair.pair_id in run.verdicts())
        time.sleep(0.1)  # a few commit intervals
        assert run.kafka.committed.get(Partition(IN, 0), 0) == 0  # offset 0 waits for its partner
        run.send(lone.written(), partition=0)
        assert until(lambda: run.kafka.committed.get(Partition(IN, 0)) == 4)


def test_a_lone_half_in_a_quiet_partition_expires_unpaired(tiny_model_dir):
    (lone,) = make_pairs(1, "quiet", seed=3)
    with Running(tiny_model_dir, join_ttl_s=0.3) as run:
        run.send(lone.spoken(), partition=1)
        assert until(lambda: lone.pair_id in run.verdicts(), 10)
        assert [v.outcome for v in run.verdicts()[lone.pair_id]] == ["unpaired"]
        assert until(lambda: run.kafka.committed.get(Partition(IN, 1)) == 1)


def test_a_backlog_is_expired_by_stream_time_not_by_how_long_reading_it_takes(tiny_model_dir):
    """Halves stamped at the same moment but 200 records apart, read ten records a poll with a
    TTL of 20 ms: reading from one half to its partner takes longer than the TTL, the stream does
    not move on, and every pair is joined."""
    pairs = make_pairs(100, "backlog", seed=4)
    stamp = wire.now_ms() - 60_000  # a backlog from a minute ago
    run = Running(tiny_model_dir, join_ttl_s=0.02, max_poll_records=10)
    run.send(*(p.spoken() for p in pairs), partition=0, timestamp=stamp)
    run.send(*(p.written() for p in pairs), partition=0, timestamp=stamp)
    with run:
        assert until(lambda: len(run.verdicts()) == 100)
    assert all(v[0].outcome != "unpaired" for v in run.verdicts().values())


def test_a_failed_delivery_is_sent_again_and_committed_only_once_acknowledged(tiny_model_dir):
    pairs = make_pairs(4, "retry", seed=5)
    with Running(tiny_model_dir) as run:
        run.matcher.outbox.retry_delay_s = 0.05
        run.producers[-1].fail(3)
        run.send(*(half for p in pairs for half in (p.spoken(), p.written())), partition=0)
        assert until(lambda: len(run.verdicts()) == 4)
        assert until(lambda: run.kafka.committed.get(Partition(IN, 0)) == 8)
        errors = run.matcher.metrics.kafka_errors.labels(stage="produce")._value.get()
    assert errors == 3
    assert all(len(v) == 1 for v in run.verdicts().values())


def test_a_producer_that_keeps_failing_is_replaced(tiny_model_dir):
    (pair,) = make_pairs(1, "reset", seed=6)
    with Running(tiny_model_dir) as run:
        run.matcher.outbox.retry_delay_s = 0.01
        run.matcher.outbox.reset_interval_s = 0.0
        run.producers[-1].fail(1000)
        run.send(pair.spoken(), pair.written(), partition=0)
        assert until(lambda: len(run.producers) >= 2)
        run.producers[0]._failures.clear()
        assert until(lambda: pair.pair_id in run.verdicts())


def test_a_rebalance_mid_stream_reads_the_partition_again_from_its_commit_point(tiny_model_dir):
    a, b = make_pairs(2, "rebalance", seed=7)
    tp = Partition(IN, 0)
    with Running(tiny_model_dir, lookback_records=0) as run:
        run.send(b.spoken(), b.written(), partition=0)
        assert until(lambda: run.kafka.committed.get(tp) == 2)
        run.send(a.spoken(), partition=0)
        assert until(lambda: run.pending() == 1)
        run.consumer.rebalance(revoke={tp}, assign={tp})  # eager: revoked, then given back
        assert until(lambda: run.consumer.positions.get(tp) == 3 and run.pending() == 1)
        run.send(a.written(), partition=0)
        assert until(lambda: a.pair_id in run.verdicts())
    assert [v.outcome for v in run.verdicts()[a.pair_id]] != ["unpaired"]
    assert len(run.verdicts()[a.pair_id]) == 1 and len(run.verdicts()[b.pair_id]) == 1


def test_nothing_is_published_for_a_partition_taken_away(tiny_model_dir):
    (lone,) = make_pairs(1, "lost", seed=8)
    tp = Partition(IN, 1)
    with Running(tiny_model_dir, join_ttl_s=1.0) as run:
        run.send(lone.spoken(), partition=1)
        assert until(lambda: run.pending() == 1)
        run.consumer.lose({tp})
        assert until(lambda: run.pending() == 0)
        time.sleep(1.5)  # past the TTL (long enough that a loaded machine loses the partition first)
        assert lone.pair_id not in run.verdicts()
        assert run.kafka.committed.get(tp, 0) == 0  # lost: nothing committed past the lone half


def test_bad_records_are_dead_lettered_and_finished(tiny_model_dir):
    with Running(tiny_model_dir) as run:
        run.send((b"bad id!", b"x", [("dm-half", b"spoken")]), partition=0)
        run.kafka.append(IN, b"k", b"v", None, 0)  # headers the client could not read
        # a record the client could not read at all (a batch it cannot inflate), whatever its value
        run.kafka.append(IN, None, None, None, 0, unreadable="compressed batch could not be inflated")
        assert until(lambda: len(run.kafka.records(DLQ)) == 3)
        assert until(lambda: run.kafka.committed.get(Partition(IN, 0)) == 3)
    reasons = [dict(r.headers)[wire.H_DLQ_REASON] for r in run.kafka.records(DLQ)]
    assert reasons == [b"bad_pair_id", b"bad_header", wire.Reason.UNREADABLE.value.encode()]
    details = [dict(r.headers)[wire.H_DLQ_DETAIL] for r in run.kafka.records(DLQ)]
    assert details[2] == b"compressed batch could not be inflated"


def test_a_pcm16_pair_gets_the_verdict_of_its_recording_sent_as_mfcc(serving_model):
    """The same recordings (real held-out ones at 8 kHz, and 16 kHz noise) sent as pcm16 and as
    features.mfcc frames computed with the model's parameters, with the same images: one verdict
    each, the same decision fields; mixed in the same batches, in both orders of the halves. (The
    shipped model: the tiny one's untrained digit heads are near ties, which another batch
    composition's round-off can flip whatever the features.)"""
    import numpy as np

    from digitmatch.data.sample import load_sample
    from digitmatch.features import mfcc
    from digitmatch.model.serving import ServingModel
    from matcher_harness import decision

    params = ServingModel.load(serving_model).features
    rec, images = load_sample()
    recordings = [(np.asarray(a, np.int16), int(r)) for a, r in zip(rec.audio[:10], rec.sample_rates[:10])]
    recordings.append((np.random.default_rng(3).integers(-5000, 5000, size=12000, dtype=np.int16), 16000))
    with Running(serving_model) as run:
        for i, (samples, rate) in enumerate(recordings):
            image = images.images[i]
            pcm = wire.encode_spoken_pcm16(f"pcm-{i}", samples, rate, digit=1)
            frames = wire.encode_spoken(f"mfcc-{i}", mfcc(samples, rate, params), digit=1)
            if i % 2:
                run.send(pcm, wire.encode_written(f"pcm-{i}", image, digit=1), partition=i % 2)
            else:
                run.send(wire.encode_written(f"pcm-{i}", image, digit=1), pcm, partition=i % 2)
            run.send(frames, wire.encode_written(f"mfcc-{i}", image, digit=1), partition=(i + 1) % 2)
        assert until(lambda: len(run.verdicts()) == 2 * len(recordings))
    verdicts = run.verdicts()
    assert not run.kafka.records(DLQ)
    for i in range(len(recordings)):
        [pcm], [frames] = verdicts[f"pcm-{i}"], verdicts[f"mfcc-{i}"]
        assert pcm.outcome != "unpaired" and decision(pcm) == decision(frames)


def test_a_failed_commit_is_tried_again(tiny_model_dir):
    (pair,) = make_pairs(1, "commit", seed=9)
    with Running(tiny_model_dir) as run:
        run.consumer.fail_commits = 2
        run.send(pair.spoken(), pair.written(), partition=0)
        assert until(lambda: run.kafka.committed.get(Partition(IN, 0)) == 2)
        assert run.matcher.metrics.commits.labels(result="error")._value.get() == 2


def test_shutdown_drains_commits_and_leaves_the_group(tiny_model_dir):
    pairs = make_pairs(6, "stop", seed=10)
    (lone,) = make_pairs(1, "stop-lone", seed=11)
    run = Running(tiny_model_dir, max_delay_ms=10_000, max_batch_size=64)  # batches cut only by the drain
    with run:
        run.send(lone.spoken(), partition=0)
        run.send(*(half for p in pairs for half in (p.spoken(), p.written())), partition=0)
        assert until(lambda: run.pending() == 1 and len(run.matcher.batcher) == 6)
    assert run.consumer.closed and not run.matcher.running()
    assert len(run.verdicts()) == 6  # published on the way out
    assert run.kafka.committed.get(Partition(IN, 0), 0) == 0  # the lone half is read again on restart


@pytest.mark.parametrize("error", [ClientError("refused", too_large=True)])
def test_a_dead_letter_refused_as_too_large_is_sent_in_its_smallest_form(tiny_model_dir, error):
    with Running(tiny_model_dir) as run:
        run.producers[-1].fail(1, error)
        run.send((b"bad id!", b"x" * 1000, [("dm-half", b"spoken")]), partition=0)
        assert until(lambda: len(run.kafka.records(DLQ)) == 1)
        assert run.matcher.metrics.dead_letters_truncated._value.get() == 1
    (letter,) = run.kafka.records(DLQ)
    assert letter.value == b"" and wire.H_DLQ_TRUNCATED in dict(letter.headers)


def test_a_rebalance_mid_batch_publishes_the_batch_and_commits_before_letting_go(tiny_model_dir):
    """Pairs joined but still in the batcher (a long --max-delay-ms) when their partition is
    revoked: the revocation drains them (scored, published, acknowledged) and commits past them."""
    pairs = make_pairs(3, "mid-batch", seed=12)
    tp = Partition(IN, 0)
    with Running(tiny_model_dir, max_delay_ms=60_000, max_batch_size=64) as run:
        run.send(*(half for p in pairs for half in (p.spoken(), p.written())), partition=0)
        assert until(lambda: len(run.matcher.batcher) == 3)
        assert run.verdicts() == {}
        run.consumer.rebalance(revoke={tp})
        assert until(lambda: len(run.verdicts()) == 3)
        assert until(lambda: run.kafka.committed.get(tp) == 6)
        assert tp not in run.matcher.assigned


def test_the_input_is_paused_while_the_model_is_behind_and_resumed_after(tiny_model_dir, monkeypatch):
    import threading

    from digitmatch.model.serving import ServingModel

    gate = threading.Event()
    predict = ServingModel.predict_padded

    def slow(self, mfcc, images):
        gate.wait(10)
        return predict(self, mfcc, images)

    monkeypatch.setattr(ServingModel, "predict_padded", slow)
    gate.set()  # the proof at start-up runs at full speed
    pairs = make_pairs(12, "pause", seed=13)
    with Running(tiny_model_dir, max_batch_size=2, max_queued_batches=1, max_delay_ms=1) as run:
        gate.clear()
        run.send(*(half for p in pairs for half in (p.spoken(), p.written())), partition=0)
        assert until(lambda: run.consumer.paused() == run.matcher.assigned)
        gate.set()
        assert until(lambda: len(run.verdicts()) == 12)
        assert until(lambda: not run.consumer.paused())


def home(pair: "make_pairs") -> int:
    """The partition of IN (2 partitions) a murmur2 partitioner puts the pair's halves in."""
    return (murmur2(pair.pair_id.encode()) & 0x7FFFFFFF) % 2


def test_a_misrouted_half_is_dead_lettered_and_its_partner_gets_the_one_verdict(tiny_model_dir):
    """The spoken half in the other partition (a producer with another partitioner), the written
    half where its key hashes to: one dead letter naming the fix, one ``unpaired`` verdict."""
    pair, good = make_pairs(2, "misrouted", seed=14)
    with Running(tiny_model_dir, partition_check="murmur2", join_ttl_s=0.3) as run:
        run.send(pair.spoken(), partition=1 - home(pair))
        run.send(pair.written(), good.spoken(), good.written())  # the fake's partitioner: murmur2
        assert until(lambda: {pair.pair_id, good.pair_id} <= run.verdicts().keys(), 10)
        assert until(lambda: run.kafka.committed == ends(run.kafka))
        time.sleep(0.4)  # past the TTL again: a second verdict would be out by now
        misrouted = run.matcher.metrics.dead_letters.labels(reason="misrouted")._value.get()
    (letter,) = run.kafka.records(DLQ)
    headers = dict(letter.headers)
    assert headers[wire.H_DLQ_REASON] == b"misrouted"
    assert headers[wire.H_DLQ_DETAIL] == detail(home(pair), 2, 1 - home(pair)).encode()
    assert (letter.key, letter.value) == pair.spoken()[:2]
    assert misrouted == 1
    (verdict,) = run.verdicts()[pair.pair_id]
    assert (verdict.outcome, verdict.missing_half) == ("unpaired", wire.Half.SPOKEN)
    assert [v.outcome != "unpaired" for v in run.verdicts()[good.pair_id]] == [True]


def test_with_the_check_off_a_misrouted_half_waits_for_a_partner_in_vain(tiny_model_dir):
    """The behaviour before the check, still there with --partition-check off: each half of the
    split pair gets an ``unpaired`` verdict of its own, and nothing is dead-lettered."""
    (pair,) = make_pairs(1, "unchecked", seed=15)
    with Running(tiny_model_dir, partition_check="off", join_ttl_s=0.3) as run:
        run.send(pair.spoken(), partition=1 - home(pair))
        run.send(pair.written())
        assert until(lambda: len(run.verdicts().get(pair.pair_id, [])) == 2, 10)
    assert sorted(v.missing_half.value for v in run.verdicts()[pair.pair_id]) == ["spoken", "written"]
    assert run.kafka.records(DLQ) == []


def test_a_misrouted_half_read_back_after_a_rebalance_is_not_dead_lettered_again(tiny_model_dir):
    (pair,) = make_pairs(1, "read-back", seed=16)
    wrong = Partition(IN, 1 - home(pair))
    with Running(tiny_model_dir, partition_check="murmur2") as run:
        run.send(pair.spoken(), partition=wrong.partition)
        assert until(lambda: run.kafka.committed.get(wrong) == 1)
        run.consumer.rebalance(revoke={wrong}, assign={wrong})  # reads offset 0 back, before the commit point
        assert until(lambda: (wrong, 0) in run.consumer.sought and run.consumer.positions.get(wrong) == 1)
        time.sleep(0.1)  # the record read back went through the intake
    assert len(run.kafka.records(DLQ)) == 1


# ---------------------------------------------------------------------- commit metadata, exactly once

EXACT = {"processing_guarantee": "exactly-once"}


def halves(pairs):
    return [half for p in pairs for half in (p.spoken(), p.written())]


def crash_at_next_commit(run: Running) -> None:
    """``run`` ends as a SIGKILL would leave it: its open transaction never commits (a real
    coordinator aborts it after its timeout), and nothing more is committed."""
    run.producers[-1].fail_commits.append(ClientError("killed", fatal=True))


@pytest.mark.parametrize("keeps_metadata", [True, False], ids=["kafka", "tansu"])
def test_at_least_once_a_restart_decides_again_only_what_was_unfinished(tiny_model_dir, keeps_metadata):
    """A half waits for its partner below decided pairs. With the commit's metadata kept, a restart
    decides none of those pairs again; a broker that drops it (Tansu) gets them decided again (at
    least once, as before). Either way the waiting half is joined with its partner."""
    lone, *pairs = make_pairs(6, "restart", seed=14)
    kafka = FakeKafka({IN: 2, OUT: 2, DLQ: 1}, keeps_metadata=keeps_metadata)
    with Running(tiny_model_dir, kafka) as run:
        run.send(lone.spoken(), *halves(pairs), partition=0)
        assert until(lambda: len(run.verdicts()) == 5 and run.kafka.metadata.get(Partition(IN, 0)) is not None
                     if keeps_metadata else len(run.verdicts()) == 5)
    with Running(tiny_model_dir, kafka) as again:
        again.send(lone.written(), partition=0)
        assert until(lambda: lone.pair_id in again.verdicts())
        time.sleep(0.1)
    verdicts = again.verdicts()
    assert [v.outcome for v in verdicts[lone.pair_id]] != ["unpaired"] and len(verdicts[lone.pair_id]) == 1
    assert {len(verdicts[p.pair_id]) for p in pairs} == ({1} if keeps_metadata else {2})


def test_exactly_once_verdicts_dead_letters_and_offsets_commit_together(tiny_model_dir):
    pairs = make_pairs(10, "eos", seed=15)
    with Running(tiny_model_dir, **EXACT) as run:
        run.send(*halves(pairs))
        run.send((b"bad id!", b"x", [("dm-half", b"spoken")]), partition=1)
        assert until(lambda: len(run.verdicts(committed_only=True)) == 10)
        assert until(lambda: run.kafka.committed == ends(run.kafka))
        assert len(run.kafka.records(DLQ, committed_only=True)) == 1
        for tp, offset in run.kafka.committed.items():
            assert commit_metadata.decode(offset, run.kafka.metadata[tp]).unfinished == frozenset()
        assert run.matcher.metrics.transactions.labels(result="committed")._value.get() >= 1
    assert all(len(v) == 1 for v in run.verdicts().values())  # nothing produced twice, even uncommitted


def test_exactly_once_a_crash_decides_nothing_twice_and_loses_no_waiting_half(tiny_model_dir):
    lone, *pairs = make_pairs(8, "eos-crash", seed=16)
    late = make_pairs(3, "eos-late", seed=17)
    kafka = FakeKafka({IN: 2, OUT: 2, DLQ: 1})
    run = Running(tiny_model_dir, kafka, **EXACT)
    with run:
        run.send(lone.spoken(), *halves(pairs), partition=0)
        assert until(lambda: len(run.verdicts(committed_only=True)) == 7)
        crash_at_next_commit(run)
        run.send(*halves(late), partition=0)
        assert until(lambda: not run.matcher.running())
    assert isinstance(run.matcher.error, TransactionFatal)
    assert len(run.verdicts()) > 7 and len(run.verdicts(committed_only=True)) == 7  # some decided, uncommitted
    with Running(tiny_model_dir, kafka, **EXACT) as again:
        again.send(lone.written(), partition=0)
        assert until(lambda: lone.pair_id in again.verdicts(committed_only=True))
        assert until(lambda: len(again.verdicts(committed_only=True)) == 11)
    verdicts = again.verdicts(committed_only=True)
    assert {pid: len(v) for pid, v in verdicts.items() if len(v) != 1} == {}
    assert verdicts[lone.pair_id][0].outcome != "unpaired"


def test_exactly_once_a_failed_delivery_aborts_and_reads_again_from_the_committed_positions(tiny_model_dir):
    lone, *pairs = make_pairs(5, "eos-abort", seed=18)
    with Running(tiny_model_dir, **EXACT) as run:
        run.send(lone.spoken(), partition=0)
        assert until(lambda: run.kafka.metadata.get(Partition(IN, 0)) is not None)
        run.producers[-1].fail(1)
        run.send(*halves(pairs), partition=0)
        assert until(lambda: run.matcher.metrics.transactions.labels(result="aborted")._value.get() == 1)
        run.send(lone.written(), partition=0)
        assert until(lambda: len(run.verdicts(committed_only=True)) == 5)
        time.sleep(0.1)
        verdicts = run.verdicts(committed_only=True)
    assert all(len(v) == 1 for v in verdicts.values()) and verdicts[lone.pair_id][0].outcome != "unpaired"
    assert run.producers[-1].transactions_aborted == 1


def test_exactly_once_pending_halves_beyond_the_metadata_budget_are_declared_unpaired_oldest_first(
        tiny_model_dir, monkeypatch):
    monkeypatch.setattr(commit_metadata, "BUDGET", 20)  # room for about 10 unfinished records
    lone = make_pairs(30, "eos-budget", seed=19)
    with Running(tiny_model_dir, join_ttl_s=600, **EXACT) as run:
        run.send(*(p.spoken() for p in lone), partition=0)
        assert until(lambda: run.kafka.committed.get(Partition(IN, 0), 0) > 0 and run.pending() < 30)
        assert until(lambda: len(run.kafka.metadata.get(Partition(IN, 0), "")) > 0)
        metadata = run.kafka.metadata[Partition(IN, 0)]
        verdicts = run.verdicts(committed_only=True)
    assert len(metadata) <= 20
    unpaired = sorted(int(pid.rsplit("-", 1)[1]) for pid, v in verdicts.items() if v[0].outcome == "unpaired")
    assert unpaired == list(range(len(unpaired))) and 0 < len(unpaired) < 30  # the oldest ones


def test_exactly_once_a_fenced_producer_ends_the_matcher(tiny_model_dir):
    (pair,) = make_pairs(1, "eos-fenced", seed=20)
    run = Running(tiny_model_dir, **EXACT)
    with run:
        run.producers[-1].fail_commits.append(ClientError("fenced by a newer producer", fatal=True))
        run.send(*halves([pair]), partition=0)
        assert until(lambda: not run.matcher.running())
    assert isinstance(run.matcher.error, TransactionFatal) and "fenced" in str(run.matcher.error)
    assert run.verdicts(committed_only=True) == {}
