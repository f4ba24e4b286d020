"""``digitmatch produce``: publish pairs built from the held-out data at a steady rate.

Each pair's MFCC comes from the recording's frames, computed once per recording with the feature
settings of the model that will serve them. The two halves of a pair are sent in random order
(optionally with the second up to ``--skew-ms`` later, and optionally never: the matcher must then
emit an ``unpaired`` verdict), with their ground-truth digits in ``dm-digit``. Sending follows a
fixed schedule (pair *i* is due at ``i / rate`` seconds), so a slow send is caught up on instead of
shifting every later pair.

:func:`build_pairs` and :func:`publish_pairs` are the library behind the command; the demo and the
benchmarks call them directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from digitmatch import wire
from digitmatch.features import DEFAULT_PARAMS, FeatureParams
from digitmatch.kafka.configuration import KafkaConnection, add_connection_options, quiet_client_logs
from digitmatch.producer.producer import PairProducer
from digitmatch.settings import (MAX_MS, MAX_RATE, MAX_SECONDS, SEED_LIMIT, Cli, DataOption, add_model_options, build,
                                 data_problem, field_of, model_problem, values_from_args)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairSet:
    """Everything needed to publish ``len(self)`` pairs. ``mfcc[i]`` and ``images[i]`` are the
    halves of ``pair_ids[i]``; ``spoken_digits`` / ``written_digits`` are the ground truth."""

    pair_ids: list[str]
    mfcc: list[np.ndarray]
    images: np.ndarray
    spoken_digits: np.ndarray
    written_digits: np.ndarray
    run_id: str
    source: str = "synthetic"

    def __len__(self) -> int:
        return len(self.pair_ids)

    @property
    def same(self) -> np.ndarray:
        return self.spoken_digits == self.written_digits


@dataclass(frozen=True)
class PublishReport:
    run_id: str
    pairs: int  # pairs with at least one half sent
    halves: int
    partner_missing: int  # pairs sent with one half deliberately left out
    failed: int  # sends the broker did not acknowledge
    seconds: float  # first send -> every record acknowledged
    started_ms: int  # wall clock of the first send
    topic: str
    source: str

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "pairs": self.pairs,
            "halves": self.halves,
            "partner_missing": self.partner_missing,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "pairs_per_s": round(self.pairs_per_s, 1),
            "topic": self.topic,
            "source": self.source,
        }


def new_run_id() -> str:
    return secrets.token_hex(4)


def model_features(model: Path | None) -> FeatureParams:
    """The served model's feature settings (read from its metadata.json, without TensorFlow)."""
    from digitmatch.model.serving import ModelError, read_metadata, resolve

    if model is None:
        return DEFAULT_PARAMS
    try:
        _, version_dir = resolve(model)
        return FeatureParams(**read_metadata(version_dir)["features"])
    except (ModelError, KeyError) as exc:
        log.warning("using default MFCC settings: no model metadata at %s (%s)", model, exc)
        return DEFAULT_PARAMS


def data_dir_arg(path: Path | None) -> Path | None:
    """``--data`` as a path: its default is already resolved by the one rule of
    :func:`digitmatch.settings.default_data_dir`."""
    return None if path is None else Path(path)


def build_pairs(
    n: int,
    *,
    match_ratio: float = 0.5,
    seed: int = 0,
    data_dir: Path | None = None,
    features: FeatureParams = DEFAULT_PARAMS,
    run_id: str | None = None,
) -> PairSet:
    """``n`` pairs from the held-out split (full data when present, else the shipped sample);
    pair IDs are ``<run_id>-<i>``."""
    from digitmatch.data.pairs import make_pairs
    from digitmatch.data.sample import load_heldout

    recordings, images, source = load_heldout(data_dir)
    frames = recordings.mfcc(features)  # once per recording, reused by every pair that draws it
    pairs = make_pairs(recordings.digits, images.labels, n, match_ratio, seed)
    run_id = run_id or new_run_id()
    return PairSet(
        pair_ids=[f"{run_id}-{i}" for i in range(n)],
        mfcc=[frames[a] for a in pairs.audio],
        images=images.images[pairs.image],
        spoken_digits=np.asarray(recordings.digits)[pairs.audio],
        written_digits=np.asarray(images.labels)[pairs.image],
        run_id=run_id,
        source=source,
    )


def _schedule(n: int, rate: float, skew_ms: float, missing_ratio: float, rng: np.random.Generator):
    """(due seconds, pair index, which half) for every record to send, in sending order."""
    first_spoken = rng.random(n) < 0.5
    missing = np.zeros(n, dtype=bool)
    missing[rng.choice(n, size=int(round(n * missing_ratio)), replace=False)] = True
    first_due = np.arange(n) / rate if rate > 0 else np.zeros(n)
    second_due = first_due + (rng.uniform(0, skew_ms / 1000, n) if skew_ms > 0 else 0.0)
    events = []
    for i in range(n):
        first = wire.Half.SPOKEN if first_spoken[i] else wire.Half.WRITTEN
        events.append((first_due[i], i, 0, first))
        if not missing[i]:
            events.append((second_due[i], i, 1, first.other))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return events, missing


def publish_pairs(
    pairs: PairSet,
    producer: PairProducer,
    *,
    rate: float = 0.0,
    skew_ms: float = 0.0,
    partner_missing_ratio: float = 0.0,
    seed: int = 0,
    progress: bool | None = None,
    stop: threading.Event | None = None,
) -> PublishReport:
    """Send both halves of every pair (see the module docstring), then flush.

    ``rate`` is pairs per second (0 = as fast as the client goes). ``progress=None`` shows a bar
    on stderr only when it is a terminal. Setting ``stop`` ends the run early (the report counts
    what was sent).
    """
    if rate < 0 or skew_ms < 0 or not 0 <= partner_missing_ratio <= 1:
        raise ValueError("rate and skew must be >= 0 and the missing-partner ratio in [0, 1]")
    rng = np.random.default_rng(seed)
    events, missing = _schedule(len(pairs), rate, skew_ms, partner_missing_ratio, rng)
    failures: list[BaseException] = []
    sent_pairs = set()

    def failed(exc: BaseException) -> None:
        failures.append(exc)

    bar = tqdm(total=len(events), unit="msg", file=sys.stderr, disable=None if progress is None else not progress,
               desc="producing", leave=False)
    started_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    halves = 0
    try:
        for due, i, _, half in events:
            wait = t0 + due - time.monotonic()
            if stop is not None and (stop.wait(wait) if wait > 0 else stop.is_set()):
                break
            if stop is None and wait > 0:
                time.sleep(wait)
            pid = pairs.pair_ids[i]
            if half is wire.Half.SPOKEN:
                future = producer.spoken.send(pid, pairs.mfcc[i], digit=int(pairs.spoken_digits[i]))
            else:
                future = producer.written.send(pid, pairs.images[i], digit=int(pairs.written_digits[i]))
            future.add_errback(failed)
            sent_pairs.add(i)
            halves += 1
            bar.update()
        producer.flush()
    finally:
        bar.close()
    seconds = time.monotonic() - t0
    if failures:
        log.error("%d sends failed; first: %s", len(failures), failures[0])
    return PublishReport(
        run_id=pairs.run_id,
        pairs=len(sent_pairs),
        halves=halves,
        partner_missing=int(missing[list(sent_pairs)].sum()) if sent_pairs else 0,
        failed=len(failures),
        seconds=seconds,
        started_ms=started_ms,
        topic=producer.spoken.topic,
        source=pairs.source,
    )


# --------------------------------------------------------------------------- CLI


def _default_model_root() -> Path:
    from digitmatch.model.serving import DEFAULT_MODEL_ROOT

    return DEFAULT_MODEL_ROOT


class ProduceOptions(BaseModel):
    """``digitmatch produce``'s options, after the connection's (:class:`KafkaConnection`): each
    field is one flag with its ``DIGITMATCH_*`` variable (digitmatch.settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    topic: str = Field(wire.TOPIC_PAIRS, description="topic to publish the halves to")
    pairs: int = Field(1000, ge=1, description="number of pairs to publish")
    rate: float = Field(0.0, ge=0, le=MAX_RATE, description="pairs per second (0 = as fast as possible)")
    match_ratio: float = Field(0.5, ge=0, le=1, description="fraction of pairs showing the same digit")
    seed: int = Field(0, ge=0, le=SEED_LIMIT, description="seed for pair construction and sending order")
    skew_ms: float = Field(0.0, ge=0, le=MAX_MS,
                           description="send each pair's second half up to this much later than its first")
    partner_missing_ratio: float = Field(0.0, ge=0, le=1, description=(
        "fraction of pairs whose second half is never sent (they get 'unpaired' verdicts)"))
    data: Path = field_of(DataOption, "data")
    model: Path = Field(default_factory=_default_model_root,
                        description="model whose MFCC settings (metadata.json) the spoken halves use")
    run_id: str | None = Field(None, description="pair-ID prefix (default: random, unique per run)")
    wait_for_broker_s: float = Field(30.0, ge=0, le=MAX_SECONDS, description="how long to wait for Kafka at start")
    create_topics: bool = Field(False, description="create the three topics first if they do not exist")
    partitions: int = Field(4, ge=1, description="partitions for --create-topics")
    json_output: Annotated[bool, Cli(flag="--json")] = Field(False, description="print the summary as one JSON object")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str | None) -> str | None:
        if value is not None and not wire.PAIR_ID_PATTERN.fullmatch(f"{value}-0"):
            raise ValueError(f"must be letters, digits and ._:- only, got {value!r}")
        return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    add_model_options(parser, ProduceOptions)


def _check(args: argparse.Namespace) -> str | None:
    try:
        build(ProduceOptions, values_from_args(ProduceOptions, args))
    except ValueError as exc:
        return str(exc)
    # A --model given (not the default, whose absence means default MFCC settings) must be a model.
    return data_problem(args.data) or (
        model_problem("--model", args.model) if args.model != _default_model_root() else None)


def run(args: argparse.Namespace) -> int:
    from digitmatch.data.errors import DataError
    from digitmatch.kafka.admin import ensure_topics, wait_for_broker
    from digitmatch.kafka.exceptions import KafkaSetupError

    quiet_client_logs()
    problem = _check(args)
    if problem:
        print(f"digitmatch produce: {problem}", file=sys.stderr)
        return 2
    try:
        conn = KafkaConnection.from_args(args)
        wait_for_broker(conn, args.wait_for_broker_s)
        if args.create_topics:
            ensure_topics(conn, {args.topic: args.partitions, wire.TOPIC_MATCHES: args.partitions, wire.TOPIC_DLQ: 1})
        pairs = build_pairs(
            args.pairs,
            match_ratio=args.match_ratio,
            seed=args.seed,
            data_dir=data_dir_arg(args.data),
            features=model_features(args.model),
            run_id=args.run_id,
        )
        with PairProducer(conn, args.topic) as producer:
            report = publish_pairs(
                pairs,
                producer,
                rate=args.rate,
                skew_ms=args.skew_ms,
                partner_missing_ratio=args.partner_missing_ratio,
                seed=args.seed,
            )
    except (DataError, ValueError) as exc:
        print(f"digitmatch produce: {exc}", file=sys.stderr)
        return 2
    except KafkaSetupError as exc:
        print(f"digitmatch produce: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict() | {"bootstrap_servers": conn.bootstrap_servers}))
    else:
        print(
            f"sent {report.pairs} pairs ({report.halves} halves, {report.partner_missing} without a partner) "
            f"to {report.topic} at {conn.bootstrap_servers} in {report.seconds:.2f} s: "
            f"{report.pairs_per_s:.0f} pairs/s [run {report.run_id}, data: {report.source}"
            + (f", {report.failed} FAILED" if report.failed else "")
            + "]"
        )
    return 1 if report.failed else 0
