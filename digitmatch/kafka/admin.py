"""Waiting for a broker and creating the topics. Both are safe to call any number of times."""

from __future__ import annotations

import logging
import socket
import time
from typing import Mapping

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, NodeNotReadyError, TopicAlreadyExistsError, UnknownBrokerIdError, for_code
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_fixed

from digitmatch.kafka.configuration import KafkaConnection
from digitmatch.kafka.exceptions import BrokerUnavailable, TopicSetupError

log = logging.getLogger(__name__)


def _admin(conn: KafkaConnection, timeout_s: float) -> KafkaAdminClient:
    ms = max(int(timeout_s * 1000), 100)
    return KafkaAdminClient(**conn.admin_kwargs(bootstrap_timeout_ms=ms))


def reachable(conn: KafkaConnection, timeout_s: float) -> OSError | None:
    """None if a TCP connection to one of the bootstrap servers opens, else the last error.
    Checked before any Kafka client exists, so a broker that is still starting causes no
    client error logs."""
    error: OSError | None = None
    for server in conn.bootstrap_servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return None
        except OSError as exc:
            error = exc
    return error


def wait_for_broker(
    conn: KafkaConnection,
    timeout_s: float = 30.0,
    *,
    initial_backoff_s: float = 0.05,
    max_backoff_s: float = 2.0,
) -> list[str]:
    """Block until a broker answers a metadata request; returns the topic names it lists.

    Retries with exponential backoff (first a plain TCP connect, then a Kafka metadata request);
    raises :class:`BrokerUnavailable` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    backoff = wait_exponential(multiplier=initial_backoff_s, max=max_backoff_s)

    def remaining() -> float:
        return deadline - time.monotonic()

    def list_topics() -> list[str]:
        attempt_s = min(max(remaining(), 0.1), 2.0)
        error = reachable(conn, attempt_s)
        if error is not None:
            raise error
        admin = _admin(conn, attempt_s)
        try:
            return admin.list_topics()
        finally:
            admin.close()

    retrying = Retrying(
        retry=retry_if_exception_type((KafkaError, OSError)),
        stop=lambda state: remaining() <= 0,
        wait=lambda state: min(backoff(state), max(remaining(), 0.0)),  # the last attempt at the deadline
    )
    try:
        return retrying(list_topics)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise BrokerUnavailable(
            f"no Kafka broker answered at {conn.bootstrap_servers} within {timeout_s:g} s "
            f"({exc.last_attempt.attempt_number} attempts; last error: {type(last).__name__}: {last})"
        ) from last


def topic_partitions(conn: KafkaConnection, topics: list[str], timeout_s: float = 30.0) -> dict[str, int]:
    """Partition count of each named topic that exists (missing topics are left out)."""
    admin = _admin(conn, timeout_s)
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}


def ensure_topics(
    conn: KafkaConnection,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout_s: float = 30.0,
    configs: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Create each ``{name: partitions}`` topic that does not exist yet (with the topic
    ``configs``, e.g. ``{"max.message.bytes": "8388608"}``); return every topic's partition count
    as the cluster reports it.

    A topic that already exists (created earlier, or concurrently by another process) is left as
    it is; if it has fewer partitions than asked for, that is logged, not changed (adding
    partitions to a live topic moves keys between partitions).
    """
    admin = _admin(conn, timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            request = {
                name: {"num_partitions": n, "replication_factor": replication, "configs": dict(configs or {})}
                for name, n in missing.items()
            }
            # A cluster's node answering the client may not list the controller yet (it has just
            # started or moved): asked again, with fresh metadata, until it does, within timeout_s.
            for attempt in Retrying(retry=retry_if_exception_type((UnknownBrokerIdError, NodeNotReadyError)),
                                    stop=stop_after_delay(timeout_s), wait=wait_fixed(0.2), reraise=True):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        admin.close()
                        admin = _admin(conn, timeout_s)
                    response = admin.create_topics(
                        request, timeout_ms=int(timeout_s * 1000), raise_errors=False, wait_for_metadata=True
                    )
            for result in response["topics"]:
                error = for_code(result["error_code"])
                if result["error_code"] and error is not TopicAlreadyExistsError:
                    raise TopicSetupError(
                        f"cannot create topic {result['name']!r} on {conn.bootstrap_servers}: "
                        f"{error.__name__}: {result.get('error_message') or error.description}"
                    )
            log.info("created topics %s", ", ".join(f"{n} ({p} partitions)" for n, p in missing.items()))
        # On a cluster, the broker asked may learn of a topic just created a moment after the
        # controller: described again until every topic is visible, within timeout_s.
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_topics(list(topics))
            counts = {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
            if set(topics) <= counts.keys() or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    finally:
        admin.close()
    for name, wanted in topics.items():
        if name not in counts:
            raise TopicSetupError(f"topic {name!r} is not visible on {conn.bootstrap_servers} after creation")
        if counts[name] < wanted:
            log.warning("topic %s has %d partitions, fewer than the %d asked for", name, counts[name], wanted)
    return counts
