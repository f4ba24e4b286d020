"""``bench naive``: the consumer a user writes first, on the same broker and data as the pipeline.

One ``KafkaConsumer`` in its own group; for every record: decode, join by pair ID in a dict, and
for a completed pair ``model.predict`` on that one pair, produce the verdict and wait for the
broker's acknowledgement, then commit synchronously. (It is not even correct under a crash:
committing the first half of a pair before its verdict exists can lose the pair.)

The input is written before the consumer starts, so the measured rate is the consumer's own
(first record read -> last verdict acknowledged and committed), with no producer competing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer

from digitmatch.dev.bench.open_loop import run_topics, send_open_loop
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer
from digitmatch.dev.bench.records import RecordPool
from digitmatch.consumer.verdicts import pair_verdicts
from digitmatch.consumer.join import HalfRecord, JoinedPair
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.model.serving import ServingModel
from digitmatch.wire import Half, InvalidMessage, decode_half, now_ms, verdict_key




@dataclass(frozen=True)
class NaiveResult:
    pairs: int
    verdicts: int
    seconds: float
    predict_ms_mean: float
    commit_ms_mean: float
    produce_ms_mean: float

    @property
    def pairs_per_s(self) -> float:
        return self.verdicts / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "verdicts": self.verdicts,
            "seconds": round(self.seconds, 3),
            "pairs_per_s": round(self.pairs_per_s, 1),
            "predict_ms_mean": round(self.predict_ms_mean, 3),
            "produce_ms_mean": round(self.produce_ms_mean, 3),
            "commit_ms_mean": round(self.commit_ms_mean, 3),
        }


def run_naive(
    conn: KafkaConnection,
    model: ServingModel,
    pool: RecordPool,
    run_id: str,
    n_pairs: int,
    *,
    partitions: int = 4,
    timeout_s: float = 300.0,
) -> NaiveResult:
    topic_in, topic_out = run_topics("naive", run_id)
    ensure_topics(conn, {topic_in: partitions, topic_out: partitions})
    loader = LibrdkafkaProducer(conn)  # fills the topic before the naive consumer starts: not measured
    try:
        send_open_loop(loader, topic_in, pool, run_id, n_pairs, rate=0)
    finally:
        loader.close(30)
    producer = KafkaProducer(**conn.producer_kwargs())
    try:
        consumer = KafkaConsumer(
            topic_in,
            **conn.consumer_kwargs(f"bench-naive-{run_id}", session_timeout_ms=6000, heartbeat_interval_ms=1000),
        )
        try:
            return _consume(consumer, producer, topic_out, model, n_pairs, timeout_s)
        finally:
            consumer.close(autocommit=False)
    finally:
        producer.close()


def _consume(consumer: KafkaConsumer, producer: KafkaProducer, topic_out: str, model: ServingModel,
             n_pairs: int, timeout_s: float) -> NaiveResult:
    pending: dict[str, HalfRecord] = {}
    verdicts = 0
    predict_s = produce_s = commit_s = 0.0
    commits = 0
    started = None
    deadline = time.monotonic() + timeout_s
    while verdicts < n_pairs and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200, max_records=1).items():
            for record in records:
                if started is None:
                    started = time.monotonic()
                try:
                    half = decode_half(record.key, record.value, record.headers)
                except InvalidMessage:
                    continue
                now = time.monotonic()
                this = HalfRecord(tp.partition, record.offset, half.pair_id, half.half, half.array, b"", now,
                                  now_ms(), half.digit, half.produced_ms)
                other = pending.pop(half.pair_id, None)
                if other is None:
                    pending[half.pair_id] = this
                else:
                    spoken, written = (this, other) if this.half is Half.SPOKEN else (other, this)
                    t = time.monotonic()
                    out = model.predict([spoken.array], written.array[None])
                    inference = time.monotonic() - t
                    predict_s += inference
                    verdict = pair_verdicts([JoinedPair(spoken, written)], out, model, t, inference)[0]
                    t = time.monotonic()
                    producer.send(topic_out, key=verdict_key(verdict.pair_id), value=verdict.to_bytes()).get(30)
                    produce_s += time.monotonic() - t
                    verdicts += 1
                t = time.monotonic()
                consumer.commit()
                commit_s += time.monotonic() - t
                commits += 1
    seconds = time.monotonic() - started if started is not None else 0.0
    return NaiveResult(n_pairs, verdicts, seconds, 1000 * predict_s / max(1, verdicts),
                       1000 * commit_s / max(1, commits), 1000 * produce_s / max(1, verdicts))
