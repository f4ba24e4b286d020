"""The matcher's configuration: one typed :class:`MatcherConfig`, whose fields are the options of
``digitmatch serve``, each with a ``DIGITMATCH_*`` environment variable (``--max-batch-size`` <->
``DIGITMATCH_MAX_BATCH_SIZE``). A field's declaration (default, bounds, ``description`` = help) is
the only one: :func:`add_matcher_options` generates the flags from it (digitmatch.settings)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from digitmatch import wire
from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import InvalidConfiguration
from digitmatch.model.serving import DEFAULT_MODEL_ROOT
from digitmatch.settings import MAX_MS, MAX_SECONDS, Cli, add_model_options, build, host_name, values_from_args


class MatcherConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    # The connection's options (--bootstrap-servers, --security-protocol, ...) come first.
    kafka: KafkaConnection = Field(default_factory=KafkaConnection)
    group_id: str = Field("digitmatch-matcher", min_length=1, description="consumer group of the matchers")
    input_topic: str = Field(wire.TOPIC_PAIRS, description="topic carrying the halves")
    output_topic: str = Field(wire.TOPIC_MATCHES, description="topic the verdicts go to")
    dlq_topic: str = Field(wire.TOPIC_DLQ, description="dead-letter topic for rejected records")
    model: Path = Field(DEFAULT_MODEL_ROOT, description="SavedModel: a versioned root (serves the highest version, "
                                                        "picks up new ones) or one version directory")
    max_batch_size: int = Field(256, ge=1, le=65536, description=(
        "cut a batch when it holds this many pairs (batches waiting for the model are scored together up to "
        "this many)"))
    max_delay_ms: float = Field(20.0, ge=0, le=MAX_MS, description=(
        "cut a batch when its oldest pair has waited this long"))
    max_queued_batches: int = Field(4, ge=1, description=(
        "batches waiting for the model before the input partitions are paused"))
    join_ttl_s: float = Field(30.0, gt=0, le=MAX_SECONDS, description=(
        "a half whose partner has not come after this long gets an 'unpaired' verdict"))
    max_pending_halves: int = Field(100_000, ge=1, description=(
        "bound on halves waiting for a partner; beyond it the oldest is declared unpaired early"))
    # Bytes of the arrays of the halves waiting for a partner (plus a fixed allowance per half).
    max_pending_bytes: int = Field(512 * 2**20, ge=1, description=(
        "bound on the bytes of halves waiting for a partner (their arrays plus a fixed allowance each); beyond "
        "it the oldest are declared unpaired early"))
    decided_memory: int = Field(20_000, ge=0, description=(
        "recently decided pair IDs remembered per partition (late halves for them are dead-lettered)"))
    # How far below the commit point a decided pair it splits may start (consumer/offsets.py).
    lookback_records: int = Field(10_000, ge=0, description=(
        "records before the commit point read again on assignment to remember the pairs decided there; the "
        "commit point may split a decided pair that starts at most this far below it (0 = never split a pair: "
        "no read-back, but the commit point stalls while pairs overlap)"))
    model_poll_s: float = Field(10.0, gt=0, le=MAX_SECONDS, description=(
        "how often a versioned model root is checked for a new version"))
    # Whether each half is in the partition its key hashes to (consumer/routing.py).
    partition_check: Literal["murmur2", "off"] = Field("murmur2", description=(
        "dead-letter as 'misrouted' a half read from another partition than its key's murmur2 partition (the "
        "producers' partitioner must be murmur2: a half elsewhere would wait in vain for its partner); 'off' "
        "checks nothing, for a topic whose partition count was increased while records written with the old "
        "count are still to be read"))
    # Key, value and headers of a dead letter (consumer/dead_letter.py).
    max_dead_letter_bytes: int = Field(1_000_000, ge=4096, description=(
        "largest dead letter published; a rejected record too large for it is dead-lettered truncated, with "
        "headers giving its original size"))
    shutdown_timeout_s: float = Field(30.0, gt=0, le=MAX_SECONDS, description=(
        "on SIGTERM, how long draining, flushing and committing may take before the process exits anyway with "
        "status 3 (what was not committed is read again on restart)"))
    # TensorFlow's CPU thread pools: digitmatch.model.serving.set_cpu_threads and docs/benchmarks.md
    # for why one intra-op thread.
    intra_op_threads: int = Field(1, ge=0, description=(
        "TensorFlow threads per operation on the CPU (0 = one per core; 1 is faster for this network's small "
        "operations)"))
    inter_op_threads: int = Field(0, ge=0, description=(
        "TensorFlow operations run side by side on the CPU (0 = one per core)"))
    metrics_host: Annotated[str, Cli(type=host_name)] = Field("0.0.0.0", description=(
        "address of /metrics /healthz /readyz"))
    metrics_port: int = Field(9100, ge=0, le=65535, description=(
        "port of /metrics /healthz /readyz (0 = any free port, logged)"))
    session_timeout_ms: int = Field(10_000, gt=0, description="consumer-group session timeout")
    heartbeat_interval_ms: int = Field(3_000, gt=0, description="consumer-group heartbeat interval")
    commit_interval_ms: int = Field(500, gt=0, description=(
        "how often finished offsets are committed (exactly once: how often a transaction is committed)"))
    # consumer/transactions.py; the metadata budget is consumer/commit_metadata.py's.
    processing_guarantee: Literal["at-least-once", "exactly-once"] = Field("at-least-once", description=(
        "at-least-once: a pair may be decided again after a crash or rebalance (identical verdict); "
        "exactly-once: verdicts, dead letters and consumed offsets are committed in one Kafka transaction per "
        "commit interval (needs a broker with transactions that keeps commit metadata, and read_committed readers "
        "of the outputs); a partition then holds at most as many pending halves as its commit metadata can list "
        "(at least 448, about 2,240 when they lie close together), beyond which the oldest are declared unpaired "
        "early"))
    transaction_timeout_ms: int = Field(10_000, ge=1_000, le=900_000, description=(
        "exactly-once: how long the broker keeps a transaction open before aborting it (a crashed matcher's: "
        "until then its partitions' next owner and read_committed readers wait); longer than the commit interval"))
    max_poll_records: int = Field(2_000, ge=1, description="most records one poll returns")
    # kafka-python's default (500 ms) is how long a fetch may wait for data; a broker that holds
    # fetches for it (Tansu does) adds up to that to every record's latency (docs/benchmarks.md).
    fetch_max_wait_ms: int = Field(20, ge=0, description=(
        "longest the broker may hold a fetch waiting for data (latency when input trickles)"))

    @model_validator(mode="after")
    def _consistent(self) -> "MatcherConfig":
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat interval must be shorter than the session timeout")
        if self.processing_guarantee == "exactly-once" and self.transaction_timeout_ms <= 2 * self.commit_interval_ms:
            raise ValueError("transaction timeout must be more than twice the commit interval")
        if self.lookback_records > self.decided_memory:
            raise ValueError("lookback records must not exceed the decided memory (the pairs read "
                             "back are kept there)")
        return self

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly-once"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MatcherConfig":
        """Build from the options :func:`add_matcher_options` added; one-line error on bad values."""
        kafka = KafkaConnection.from_args(args)
        return build(cls, {"kafka": kafka, **values_from_args(cls, args)}, error=InvalidConfiguration)


def add_matcher_options(parser: argparse.ArgumentParser) -> None:
    """The connection's options and the matcher's, from :class:`MatcherConfig`'s fields. Their
    bounds are checked when the config is built (:meth:`MatcherConfig.from_args`), so that an error
    names the setting as it always has."""
    add_model_options(parser, MatcherConfig, bounds=False)
