"""``bench plain``: the batched consumer a competent engineer writes in an afternoon, the bar the
matcher's backlog drain is compared with (``pipeline_vs_plain``).

What it does, in about a hundred lines: one confluent-kafka consumer in a group of its own
(librdkafka's auto-commit, every 5 s), ``consume(num_messages=512)``; each record decoded with
:func:`digitmatch.wire.decode_half` (the same validation as the matcher's), a bad one skipped;
halves joined in a dict by (partition, pair ID); one SavedModel call
(:meth:`ServingModel.predict_padded`, padded with :func:`digitmatch.features.pad_batch`) per 256
joined pairs, or when the oldest joined pair has waited 20 ms; a ``json.dumps`` verdict per pair
(pair ID, outcome, score, threshold, model) produced by one librdkafka producer with the matcher's
producer settings (acks from all in-sync replicas, idempotence, 5 ms linger).

What it does not do, and the matcher does (docs/architecture.md): commit only what has been
decided (auto-commit commits a half whose verdict does not exist yet: a crash loses the pair),
dead letters, back-pressure, a TTL and a bound for lone halves, duplicates and conflicts, the
routing check, rebalance handling, metrics.

Measured like the matcher's drain (``PipelineBench.drain``): the backlog is written first, then the
consumer is started and timed from its first record to the last verdict acknowledged, on the same
broker, with the same pairs and the same TensorFlow thread pools. CPU per pair is read per thread
role (:class:`~digitmatch.consumer.thread_cpu.ThreadCpuCollector`: ``poll_loop`` is the
consumer's thread, which here also runs the model call; ``tensorflow`` its pools;
``kafka_client`` librdkafka's threads), as the matcher reports it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import confluent_kafka

from digitmatch.consumer.thread_cpu import ThreadCpuCollector
from digitmatch.dev.bench.open_loop import run_topics, send_open_loop
from digitmatch.dev.bench.proc_cpu import cpu_seconds
from digitmatch.dev.bench.records import RecordPool
from digitmatch.features import pad_batch
from digitmatch.kafka.admin import ensure_topics
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.librdkafka import common_config
from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer
from digitmatch.model.serving import ServingModel
from digitmatch.wire import Half, InvalidMessage, decode_half

import numpy as np

CONSUME_RECORDS = 512
MAX_BATCH = 256
MAX_DELAY_S = 0.020



@dataclass(frozen=True)
class PlainResult:
    pairs: int
    verdicts: int
    seconds: float
    model_calls: int
    cpu_ms_per_pair: float | None  # this process, all threads
    thread_cpu_ms_per_pair: dict[str, float] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.verdicts / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "verdicts": self.verdicts, "seconds": round(self.seconds, 3),
                "pairs_per_s": round(self.pairs_per_s, 1), "model_calls": self.model_calls,
                "mean_batch_size": round(self.verdicts / self.model_calls, 1) if self.model_calls else None,
                "cpu_ms_per_pair": self.cpu_ms_per_pair, "thread_cpu_ms_per_pair": self.thread_cpu_ms_per_pair}


def run_plain(conn: KafkaConnection, model: ServingModel, pool: RecordPool, run_id: str, n_pairs: int, *,
              partitions: int = 4, timeout_s: float = 300.0) -> PlainResult:
    topic_in, topic_out = run_topics("plain", run_id)
    ensure_topics(conn, {topic_in: partitions, topic_out: partitions})
    loader = LibrdkafkaProducer(conn)  # the backlog, written before the consumer starts: not measured
    try:
        send_open_loop(loader, topic_in, pool, run_id, n_pairs, rate=0)
    finally:
        loader.close(30)
    base = common_config(conn)
    consumer = confluent_kafka.Consumer(base | {"group.id": f"bench-plain-{run_id}", "auto.offset.reset": "earliest",
                                                "enable.auto.commit": True, "fetch.wait.max.ms": 20})
    producer = confluent_kafka.Producer(base | {"acks": "all", "enable.idempotence": True, "linger.ms": 5,
                                                "batch.size": 256 * 1024})
    try:
        consumer.subscribe([topic_in])
        return _consume(consumer, producer, topic_out, model, n_pairs, timeout_s)
    finally:
        consumer.close()


def _consume(consumer, producer, topic_out: str, model: ServingModel, n_pairs: int, timeout_s: float) -> PlainResult:
    threads = ThreadCpuCollector()
    threads.assign("poll_loop")
    pending: dict[tuple[int, str], np.ndarray] = {}
    joined: list[tuple[str, np.ndarray, np.ndarray]] = []  # (pair ID, MFCC frames, image)
    acked = produced = calls = 0
    oldest = 0.0
    started = cpu_before = threads_before = None

    def delivered(error, _message) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    def score() -> None:
        nonlocal produced, calls
        out = model.predict_padded(pad_batch([j[1] for j in joined], model.max_frames),
                                   np.stack([j[2] for j in joined]))
        calls += 1
        for (pair_id, _, _), s in zip(joined, out["score"].tolist()):
            verdict = {"pair_id": pair_id, "outcome": "match" if s >= model.threshold else "no_match",
                       "score": round(s, 6), "threshold": model.threshold,
                       "model": {"name": model.name, "version": model.version}}
            producer.produce(topic_out, json.dumps(verdict).encode(), pair_id.encode(), on_delivery=delivered)
            produced += 1
        joined.clear()
        producer.poll(0)

    deadline = time.monotonic() + timeout_s
    while produced < n_pairs and time.monotonic() < deadline:
        messages = consumer.consume(CONSUME_RECORDS, 0.1)
        if messages and started is None:
            started, cpu_before, threads_before = time.monotonic(), cpu_seconds(os.getpid()), threads.totals()
        for message in messages:
            if message.error() is not None:
                continue
            try:
                half = decode_half(message.key(), message.value(), message.headers() or [])
            except (InvalidMessage, UnicodeDecodeError):
                continue
            key = (message.partition(), half.pair_id)
            other = pending.pop(key, None)
            if other is None:
                pending[key] = half.array
                continue
            spoken, written = (half.array, other) if half.half is Half.SPOKEN else (other, half.array)
            if not joined:
                oldest = time.monotonic()
            joined.append((half.pair_id, spoken, written))
            if len(joined) >= MAX_BATCH:
                score()
        if joined and (time.monotonic() - oldest >= MAX_DELAY_S or produced + len(joined) >= n_pairs):
            score()
        producer.poll(0)
    producer.flush(60)
    seconds = time.monotonic() - started if started is not None else 0.0
    cpu_after, threads_after = cpu_seconds(os.getpid()), threads.totals()
    cpu_ms = (round(1000 * (cpu_after - cpu_before) / acked, 4)
              if acked and cpu_before is not None and cpu_after is not None else None)
    per_thread = ({role: round(1000 * (used - threads_before.get(role, 0.0)) / acked, 4)
                   for role, used in threads_after.items() if used - threads_before.get(role, 0.0) > 0}
                  if acked and threads_before is not None else {})
    return PlainResult(n_pairs, acked, seconds, calls, cpu_ms, per_thread)
