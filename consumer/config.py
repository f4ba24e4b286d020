"""The matcher's configuration: one typed :class:`MatcherConfig`, built from flags, each of which
has a ``DIGITMATCH_*`` environment variable (``--max-batch-size`` <-> ``DIGITMATCH_MAX_BATCH_SIZE``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from digitmatch import wire
from digitmatch.kafka.configuration import KafkaConnection, add_connection_options
from digitmatch.kafka.exceptions import InvalidConfiguration
from digitmatch.model.serving import DEFAULT_MODEL_ROOT
from digitmatch.settings import MAX_MS, MAX_SECONDS, add_option, host_name


class MatcherConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    kafka: KafkaConnection = Field(default_factory=KafkaConnection)
    group_id: str = Field("digitmatch-matcher", min_length=1)
    input_topic: str = wire.TOPIC_PAIRS
    output_topic: str = wire.TOPIC_MATCHES
    dlq_topic: str = wire.TOPIC_DLQ
    model: Path = DEFAULT_MODEL_ROOT
    max_batch_size: int = Field(256, ge=1, le=65536)
    max_delay_ms: float = Field(20.0, ge=0, le=MAX_MS)
    max_queued_batches: int = Field(4, ge=1)
    join_ttl_s: float = Field(30.0, gt=0, le=MAX_SECONDS)
    max_pending_halves: int = Field(100_000, ge=1)
    # Bytes of the arrays of the halves waiting for a partner (plus a fixed allowance per half);
    # the oldest are declared unpaired early beyond it, as for --max-pending-halves.
    max_pending_bytes: int = Field(512 * 2**20, ge=1)
    decided_memory: int = Field(20_000, ge=0)
    # How far below the commit point a decided pair it splits may start; that many records before
    # the commit point are read again when a partition is assigned (consumer/offsets.py).
    lookback_records: int = Field(10_000, ge=0)
    model_poll_s: float = Field(10.0, gt=0, le=MAX_SECONDS)
    # Largest dead letter published (key, value and headers): a record too large for pairs.dlq is
    # published truncated, with headers saying so (consumer/dead_letter.py).
    max_dead_letter_bytes: int = Field(1_000_000, ge=4096)
    # SIGTERM: how long draining, flushing and committing may take before the process exits anyway.
    shutdown_timeout_s: float = Field(30.0, gt=0, le=MAX_SECONDS)
    # TensorFlow's CPU thread pools (0 = TensorFlow's default, one per core); see
    # digitmatch.model.serving.set_cpu_threads and docs/benchmarks.md for why one intra-op thread.
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9100, ge=0, le=65535)
    session_timeout_ms: int = Field(10_000, gt=0)
    heartbeat_interval_ms: int = Field(3_000, gt=0)
    commit_interval_ms: int = Field(500, gt=0)
    max_poll_records: int = Field(2_000, ge=1)
    # kafka-python's default (500 ms) is how long a fetch may wait for data; a broker that holds
    # fetches for it (Tansu does) adds up to that to every record's latency (docs/benchmarks.md).
    fetch_max_wait_ms: int = Field(20, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "MatcherConfig":
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat interval must be shorter than the session timeout")
        if self.lookback_records > self.decided_memory:
            raise ValueError("lookback records must not exceed the decided memory (the pairs read "
                             "back are kept there)")
        return self

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MatcherConfig":
        """Build from the options :func:`add_matcher_options` added; one-line error on bad values."""
        kafka = KafkaConnection.from_args(args)
        fields = {name: getattr(args, name) for name in cls.model_fields if name != "kafka"}
        try:
            return cls(kafka=kafka, **fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = "--" + ".".join(str(p) for p in err["loc"]).replace("_", "-")
            message = err["msg"].removeprefix("Value error, ")
            raise InvalidConfiguration(f"{where + ': ' if err['loc'] else ''}{message}") from None


def add_matcher_options(parser: argparse.ArgumentParser) -> None:
    d = MatcherConfig.model_fields
    add_connection_options(parser)
    add_option(parser, "--group-id", default=d["group_id"].default, help="consumer group of the matchers")
    add_option(parser, "--input-topic", default=d["input_topic"].default, help="topic carrying the halves")
    add_option(parser, "--output-topic", default=d["output_topic"].default, help="topic the verdicts go to")
    add_option(parser, "--dlq-topic", default=d["dlq_topic"].default, help="dead-letter topic for rejected records")
    add_option(parser, "--model", default=DEFAULT_MODEL_ROOT, type=Path,
               help="SavedModel: a versioned root (serves the highest version, picks up new ones) or one version directory")
    add_option(parser, "--max-batch-size", default=d["max_batch_size"].default, type=int,
               help="cut a batch when it holds this many pairs (batches waiting for the model are scored "
                    "together up to this many)")
    add_option(parser, "--max-delay-ms", default=d["max_delay_ms"].default, type=float,
               help="cut a batch when its oldest pair has waited this long")
    add_option(parser, "--max-queued-batches", default=d["max_queued_batches"].default, type=int,
               help="batches waiting for the model before the input partitions are paused")
    add_option(parser, "--join-ttl-s", default=d["join_ttl_s"].default, type=float,
               help="a half whose partner has not come after this long gets an 'unpaired' verdict")
    add_option(parser, "--max-pending-halves", default=d["max_pending_halves"].default, type=int,
               help="bound on halves waiting for a partner; beyond it the oldest is declared unpaired early")
    add_option(parser, "--max-pending-bytes", default=d["max_pending_bytes"].default, type=int,
               help="bound on the bytes of halves waiting for a partner (their arrays plus a fixed allowance "
                    "each); beyond it the oldest are declared unpaired early")
    add_option(parser, "--decided-memory", default=d["decided_memory"].default, type=int,
               help="recently decided pair IDs remembered per partition (late halves for them are dead-lettered)")
    add_option(parser, "--lookback-records", default=d["lookback_records"].default, type=int,
               help="records before the commit point read again on assignment to remember the pairs decided "
                    "there; the commit point may split a decided pair that starts at most this far below it "
                    "(0 = never split a pair: no read-back, but the commit point stalls while pairs overlap)")
    add_option(parser, "--model-poll-s", default=d["model_poll_s"].default, type=float,
               help="how often a versioned model root is checked for a new version")
    add_option(parser, "--max-dead-letter-bytes", default=d["max_dead_letter_bytes"].default, type=int,
               help="largest dead letter published; a rejected record too large for it is dead-lettered "
                    "truncated, with headers giving its original size")
    add_option(parser, "--shutdown-timeout-s", default=d["shutdown_timeout_s"].default, type=float,
               help="on SIGTERM, how long draining, flushing and committing may take before the process "
                    "exits anyway with status 3 (what was not committed is read again on restart)")
    add_option(parser, "--intra-op-threads", default=d["intra_op_threads"].default, type=int,
               help="TensorFlow threads per operation on the CPU (0 = one per core; 1 is faster for this "
                    "network's small operations)")
    add_option(parser, "--inter-op-threads", default=d["inter_op_threads"].default, type=int,
               help="TensorFlow operations run side by side on the CPU (0 = one per core)")
    add_option(parser, "--metrics-host", default=d["metrics_host"].default, type=host_name, help="address of /metrics /healthz /readyz")
    add_option(parser, "--metrics-port", default=d["metrics_port"].default, type=int,
               help="port of /metrics /healthz /readyz (0 = any free port, logged)")
    add_option(parser, "--session-timeout-ms", default=d["session_timeout_ms"].default, type=int,
               help="consumer-group session timeout")
    add_option(parser, "--heartbeat-interval-ms", default=d["heartbeat_interval_ms"].default, type=int,
               help="consumer-group heartbeat interval")
    add_option(parser, "--commit-interval-ms", default=d["commit_interval_ms"].default, type=int,
               help="how often finished offsets are committed")
    add_option(parser, "--max-poll-records", default=d["max_poll_records"].default, type=int,
               help="most records one poll returns")
    add_option(parser, "--fetch-max-wait-ms", default=d["fetch_max_wait_ms"].default, type=int,
               help="longest the broker may hold a fetch waiting for data (latency when input trickles)")
