"""Verdicts, and the records the matcher publishes for a decision.

* :func:`verdict_documents`: the verdicts of a scored batch, from the model's outputs (score
  rounded to ``SCORE_DECIMALS``, so that float round-off from another batch composition does not
  show; predicted digits from the auxiliary heads when the model has them; timestamps and
  latencies), as plain dicts: field for field what a validated :class:`~digitmatch.wire.Verdict`
  holds (its keys in its order, a float wherever it has a float), so that
  :func:`verdict_bytes` of one is byte for byte ``Verdict.to_bytes()`` of the same verdict
  (tests/consumer/test_verdicts.py checks it) without building and validating six pydantic models
  per pair. :func:`pair_verdicts` is the same as :class:`~digitmatch.wire.Verdict` objects.
* :func:`unpaired_verdict`: the verdict of a half whose partner never came.
* The records: a verdict on the output topic (keyed by pair ID), or a dead letter; each carries
  the input offsets it finishes once acknowledged (:class:`~digitmatch.consumer.outbox.Outgoing`).

Verdicts go to the partition their halves came from when the input and output topics have the
same partitions (``mirror``): that is where the key-hashing partitioner would put them, without
hashing each key again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic_core import to_json

from digitmatch.consumer.dead_letter import dead_letter
from digitmatch.consumer.join import HalfRecord, JoinedPair
from digitmatch.consumer.outbox import Outgoing
from digitmatch.kafka.client import OutgoingRecord, Partition, Record
from digitmatch.wire import (SCHEMA_VERSION, Half, Latencies, ModelRef, Reason, Timestamps, Verdict, now_ms,
                             verdict_key)

if TYPE_CHECKING:
    from digitmatch.model.serving import ServingModel


Document = dict[str, Any]  # a verdict as verdict_documents builds it


def verdict_bytes(document: Document) -> bytes:
    """The JSON of a verdict document: pydantic's serializer, the one ``Verdict.to_bytes`` uses."""
    return to_json(document)


def pair_verdict(topic: str, pair: JoinedPair, verdict: Document, mirror: bool) -> Outgoing:
    partition = pair.spoken.partition.partition if mirror else None
    record = OutgoingRecord(topic, verdict_key(verdict["pair_id"]), to_json(verdict), [], partition)
    return Outgoing(record, pair.offsets, "verdict", verdict["outcome"], verdict["correct"])


def unpaired(topic: str, half: HalfRecord, verdict: Verdict, mirror: bool) -> Outgoing:
    partition = half.partition.partition if mirror else None
    record = OutgoingRecord(topic, verdict_key(half.pair_id), verdict.to_bytes(), [], partition)
    return Outgoing(record, [(half.partition, half.offset)], "verdict", "unpaired")


def rejected(dlq_topic: str, tp: Partition, record: Record, reason: Reason, detail: str, max_bytes: int) -> Outgoing:
    out = dead_letter(
        dlq_topic, topic=tp.topic, partition=tp.partition, offset=record.offset, key=record.key,
        value=record.value, headers=record.headers, reason=reason, detail=detail, max_bytes=max_bytes,
        headers_unreadable=record.headers is None,
    )
    return Outgoing(out, [(tp, record.offset)], "dead_letter", reason.value)


SCORE_DECIMALS = 6




def _truth(spoken: int | None, written: int | None) -> Document | None:
    return None if spoken is None and written is None else {"spoken": spoken, "written": written}


def verdict_documents(
    pairs: list[JoinedPair],
    outputs: dict[str, np.ndarray],
    model: ServingModel,
    started: float,
    inference_s: float,
    decided_ms: int | None = None,
) -> list[Document]:
    """One verdict document per scored pair (module docstring). ``started``: monotonic time the
    batch entered the model; ``decided_ms``: default now. (Scores and predicted digits are read
    from the arrays once per batch, not per pair.)"""
    decided_ms = now_ms() if decided_ms is None else decided_ms
    threshold = float(model.threshold)
    name, version = model.name, model.version
    scores = [round(score, SCORE_DECIMALS) for score in outputs["score"].tolist()]
    spoken_pred = _argmax_rows(outputs.get("spoken_digit_probs"), len(pairs))
    written_pred = _argmax_rows(outputs.get("written_digit_probs"), len(pairs))
    has_predictions = "spoken_digit_probs" in outputs or "written_digit_probs" in outputs
    inference_ms = inference_s * 1000
    documents = []
    for i, pair in enumerate(pairs):
        score = scores[i]
        match = score >= threshold
        spoken, written = pair.spoken, pair.written
        spoken_digit, written_digit = spoken.digit, written.digit
        correct = None
        if spoken_digit is not None and written_digit is not None:
            correct = match == (spoken_digit == written_digit)
        if spoken.produced_ms is None:
            produced = written.produced_ms
        elif written.produced_ms is None:
            produced = spoken.produced_ms
        else:
            produced = min(spoken.produced_ms, written.produced_ms)
        first, second = (spoken, written) if spoken.seen <= written.seen else (written, spoken)
        documents.append({
            "schema_version": SCHEMA_VERSION,
            "pair_id": spoken.pair_id,
            "outcome": "match" if match else "no_match",
            "score": score,
            "threshold": threshold,
            "model": {"name": name, "version": version},
            "missing_half": None,
            "predicted": {"spoken": spoken_pred[i], "written": written_pred[i]} if has_predictions else None,
            "truth": _truth(spoken_digit, written_digit),
            "correct": correct,
            "timestamps": {"produced_ms": produced, "first_seen_ms": first.seen_ms, "joined_ms": second.seen_ms,
                           "decided_ms": decided_ms},
            "latency_ms": {
                "join_wait": (second.seen - first.seen) * 1000,
                "queue_wait": max(0.0, started - second.seen) * 1000,
                "inference": inference_ms,
                "end_to_end": None if produced is None else float(max(0, decided_ms - produced)),
            },
        })
    return documents


def pair_verdicts(
    pairs: list[JoinedPair],
    outputs: dict[str, np.ndarray],
    model: ServingModel,
    started: float,
    inference_s: float,
    decided_ms: int | None = None,
) -> list[Verdict]:
    """:func:`verdict_documents` as validated :class:`~digitmatch.wire.Verdict` objects."""
    return [Verdict.model_validate(d) for d in verdict_documents(pairs, outputs, model, started, inference_s,
                                                                  decided_ms)]


def _argmax_rows(probs: np.ndarray | None, n: int) -> list[int | None]:
    """The predicted digit of each row, or None for each pair when the model has no such head."""
    return [None] * n if probs is None else probs.argmax(axis=1).tolist()


def unpaired_verdict(half: HalfRecord, model: ServingModel) -> Verdict:
    """The verdict for a half whose partner never came (TTL, or evicted at the pending bound)."""
    decided_ms = now_ms()
    return Verdict(
        pair_id=half.pair_id,
        outcome="unpaired",
        score=None,
        threshold=model.threshold,
        model=ModelRef(name=model.name, version=model.version),
        missing_half=half.half.other,
        truth=_truth(
            half.digit if half.half is Half.SPOKEN else None, half.digit if half.half is Half.WRITTEN else None
        ),
        timestamps=Timestamps(produced_ms=half.produced_ms, first_seen_ms=half.seen_ms, decided_ms=decided_ms),
        latency_ms=Latencies(end_to_end=None if half.produced_ms is None else max(0, decided_ms - half.produced_ms)),
    )
