"""Faults only a real cluster can show, on three Apache Kafka nodes (replication factor 3,
min.insync.replicas 2; ``kafka_cluster``): the leader of most of ``pairs.in``'s partitions
SIGKILLed and started again, a broker and a matcher killed at once, a broker stopped (SIGTERM)
and started again on its log, the whole cluster restarted on its logs, and a broker frozen
(SIGSTOP) for longer than the matcher's request timeout.

Rules checked in every scenario: every pair sent gets a verdict built from its own halves
(lost = 0, no ``unpaired``); a pair decided again repeats its decision (:func:`flow.same_decision`);
nothing is dead-lettered. Where the matcher keeps running and resumes from its committed offsets,
what it decides again must be a small part of what it had decided (not a replay from the start);
how far back it reached is a figure, to compare with the commit interval. How long each fault
held the verdicts up is measured from the verdicts' own timestamps (:func:`flow.recovery`).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass, field

import confluent_kafka.admin
import pytest
from flow import (FastSender, PairStream, cycled_pairs, kafka_errors, recovery, replay_reach_s, serve_flags, tally,
                  verdicts_stopped_ms)
from matcher_harness import Reader, Topics, own_tracebacks, until
from probe import Sampler

from digitmatch import wire

pytestmark = [pytest.mark.slow, pytest.mark.kafka_only]

TOPICS = Topics(wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ)  # created by the cluster: RF 3
PARTITIONS = 4
RATE = 100.0  # pairs per second
BEFORE_S = 5.0  # stream before the fault
TAIL_S = 5.0  # stream after the cluster is whole again
TTL_S = 60.0  # longer than any outage here: a half read again must find its partner, never expire
COMMIT_INTERVAL_MS = 200  # serve_flags'
PAUSE_S = 6.0  # SIGSTOP: past the request timeout below, short of the broker session timeout (9 s)
PAUSE_REQUEST_TIMEOUT_MS = 3000


def admin(cluster) -> confluent_kafka.admin.AdminClient:
    return confluent_kafka.admin.AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})


def coordinator(cluster, group: str) -> int | None:
    """The node coordinating ``group`` now."""
    client = admin(cluster)  # (kept referenced until the answer is in: its futures die with it)
    try:
        (future,) = client.describe_consumer_groups([group], request_timeout=10).values()
        return future.result(timeout=15).coordinator.id
    except (confluent_kafka.KafkaException, TimeoutError):
        return None


def in_sync(cluster, topic: str = wire.TOPIC_PAIRS) -> bool:
    """Every partition of ``topic`` has a leader and all three replicas in sync."""
    try:
        metadata = admin(cluster).list_topics(topic, timeout=5)
    except confluent_kafka.KafkaException:
        return False
    parts = metadata.topics[topic].partitions.values()
    return bool(parts) and all(p.leader > 0 and len(p.isrs) == len(cluster.nodes) for p in parts)


def busiest_leader(cluster) -> tuple[int, list[int]]:
    """The node leading most of pairs.in's partitions, and those partitions."""
    leaders = cluster.leaders(wire.TOPIC_PAIRS)
    node, _ = collections.Counter(leaders.values()).most_common(1)[0]
    return node, sorted(p for p, n in leaders.items() if n == node)


@dataclass
class Run:
    """One scenario: matchers in group ``name`` on the cluster's topics, a stream at ``RATE``,
    the fault injected by the test between :meth:`start` and :meth:`finish`."""

    cluster: object
    start_matcher: object
    clients: object
    model: object
    name: str
    flags: dict = field(default_factory=dict)
    processes: list = field(default_factory=list)
    fault_ms: int = 0
    figures: dict = field(default_factory=dict)

    def start(self, matchers: int = 1, seed: int = 0) -> "Run":
        self.serve = serve_flags(TOPICS, self.model, self.name, join_ttl_s=TTL_S, max_batch_size=32, **self.flags)
        for _ in range(matchers):
            self.processes.append(self.start_matcher(self.cluster.bootstrap, **self.serve))
        if matchers > 1:  # every matcher owns partitions before the stream starts
            assert until(lambda: all(assigned(p) for p in self.processes), 60)
        self.sender = self.clients.track(FastSender(self.cluster.connection, TOPICS.input))
        self.reader = self.clients.track(Reader(self.cluster.connection, TOPICS))
        self.sampler = Sampler(self.processes).__enter__()
        self.settled = threading.Event()
        pairs = cycled_pairs(int(RATE * 600), self.name, seed=seed)
        self.stream = self.clients.track(PairStream(self.sender, pairs, [(0, RATE)], until=self.settled,
                                                    tail=int(RATE * TAIL_S), flush=False).start())
        self.stream.wait_for_sent(int(RATE * BEFORE_S))
        return self

    def fault(self) -> None:
        """Mark the moment of the fault (call right before injecting it)."""
        self.fault_ms = wire.now_ms()
        self.sent_at_fault = self.stream.sent
        self.fault_started = time.monotonic()

    def seconds_since_fault(self) -> float:
        return round(time.monotonic() - self.fault_started, 1)

    def finish(self, partitions: list[int] | None = None):
        """End the stream (``TAIL_S`` more of it), read every verdict, and tally."""
        self.settled.set()
        pairs = self.stream.wait(timeout_s=300)
        everyone = {p.pair_id for p in pairs}
        self.reader.wait_for(lambda c: everyone <= c.verdicts.keys(), timeout_s=120)
        got = self.reader.poll(2.0)  # anything re-emitted late has its chance to show
        peaks = self.sampler.stop()
        result = tally(pairs, got.verdicts)
        logs = "".join(p.log_tail(5_000_000) for p in self.processes)
        self.figures = {
            "rate_pairs_per_s": RATE,
            "pairs_sent_at_fault": self.sent_at_fault,
            **result.as_figures(),
            **recovery(got.verdicts, self.fault_ms, pairs=everyone, partition_of=self.sender.partition_of,
                       partitions=set(partitions) if partitions is not None else None),
            "kafka_errors_counted": kafka_errors(self.processes),
            "matcher_warnings_logged": len(re.findall(r" WARNING digitmatch", logs)),
            "unexpected_exits": sum(p.returncode not in (None, -9) for p in self.processes),
            "peak_pending_halves": peaks.pending(),
            "peak_rss_mib": peaks.rss_mib(),
        }
        return result, got, logs

    def check(self, result, got, logs) -> None:
        assert not self.sender.failed, f"the test's own producer failed: {self.sender.failed[:3]}"
        assert result.lost == 0, f"{result.lost} pairs without a verdict\n{logs[-4000:]}"
        assert result.wrong_halves == 0
        assert result.unpaired == 0, "a half read again after the fault lost its partner"
        assert result.re_emitted_identical == result.pairs_decided_twice_or_more, "a re-emitted verdict differs"
        assert not got.dead_letters, got.dead_letter_reasons()
        assert not own_tracebacks(logs), own_tracebacks(logs)[:2]


def assigned(process) -> int:
    from matcher_harness import metric_value

    status, text = process.get("/metrics")
    return int(metric_value(text, "digitmatch_partitions_assigned") or 0) if status == 200 else 0


@pytest.fixture
def run(kafka_cluster, start_matcher, clients, shipped_model):
    def new(name: str, **flags) -> Run:
        return Run(kafka_cluster, start_matcher, clients, shipped_model, name, flags)

    return new


def test_leader_sigkilled_and_started_again(kafka_cluster, run, figures):
    cluster = kafka_cluster
    r = run("leader-kill").start(seed=51)
    victim, led = busiest_leader(cluster)
    was_coordinator = coordinator(cluster, r.name) == victim
    r.fault()
    cluster.kill_node(victim)
    moved = until(lambda: victim not in cluster.leaders(wire.TOPIC_PAIRS).values(), 60, 0.2)
    new_leaders_s = r.seconds_since_fault()
    cluster.start_node(victim)
    assert until(lambda: in_sync(cluster), 90, 0.5), "the restarted node did not catch up"
    in_sync_s = r.seconds_since_fault()
    result, got, logs = r.finish(led)
    figures(
        "cluster_leader_sigkill",
        title="SIGKILL the broker leading most partitions, start it again",
        injected=f"a stream at {RATE:g} pairs/s through one matcher on a 3-node cluster; after {BEFORE_S:g} s the "
                 f"node leading most of pairs.in's partitions is SIGKILLed; once the cluster has moved their "
                 f"leadership it is started again on its log; the stream goes on {TAIL_S:g} s after every replica "
                 "is back in sync",
        killed_node_led_partitions=led,
        killed_node_was_group_coordinator=was_coordinator,
        seconds_until_new_leaders=new_leaders_s,
        seconds_until_all_replicas_in_sync=in_sync_s,
        **r.figures,
    )
    assert moved, "the partitions of the killed node got no new leader"
    r.check(result, got, logs)
    assert r.processes[0].returncode is None


def test_broker_and_matcher_killed_at_once(kafka_cluster, run, figures):
    cluster = kafka_cluster
    r = run("broker-and-matcher").start(matchers=2, seed=52)
    survivor, victim_matcher = r.processes
    before = [assigned(p) for p in r.processes]
    node = coordinator(cluster, r.name)
    led = sorted(p for p, n in cluster.leaders(wire.TOPIC_PAIRS).items() if n == node)
    r.fault()
    cluster.kill_node(node)
    assert victim_matcher.kill() == -9
    took_over = until(lambda: assigned(survivor) == PARTITIONS, 90, 0.2)
    takeover_s = r.seconds_since_fault()
    cluster.start_node(node)
    assert until(lambda: in_sync(cluster), 90, 0.5), "the restarted node did not catch up"
    result, got, logs = r.finish(led)
    figures(
        "cluster_broker_and_matcher_kill",
        title="SIGKILL a broker and a matcher at once",
        injected=f"a stream at {RATE:g} pairs/s through two matchers on a 3-node cluster; after {BEFORE_S:g} s the "
                 "node coordinating the matchers' group and one of the two matchers are SIGKILLed together; the "
                 "other matcher takes the partitions over (after the 6 s session timeout, from a new coordinator); "
                 f"the node is started again on its log and the stream goes on {TAIL_S:g} s after it is back in sync",
        killed_node_led_partitions=led,
        partitions_per_matcher_before=before,
        partitions_of_the_survivor_after=assigned(survivor),
        seconds_until_the_survivor_owned_all=takeover_s,
        matcher_crashes_injected=1,
        **r.figures,
    )
    assert took_over, survivor.log_tail()
    r.check(result, got, logs)
    assert survivor.returncode is None


@pytest.mark.parametrize("whole", [False, True], ids=["one-broker", "whole-cluster"])
def test_broker_stopped_and_restarted_on_its_log_resumes_from_the_commit(kafka_cluster, run, figures, whole):
    cluster = kafka_cluster
    r = run("restart-all" if whole else "restart-one").start(seed=53 + whole)
    victim, led = busiest_leader(cluster)
    r.fault()
    if whole:
        cluster.restart()  # SIGTERM to every node, then all started again on their logs
        down_s = r.seconds_since_fault()
    else:
        cluster.stop_node(victim)  # SIGTERM: a controlled shutdown, leadership handed over
        down_s = r.seconds_since_fault()
        time.sleep(3.0)
        cluster.start_node(victim)
    assert until(lambda: in_sync(cluster), 90, 0.5), "the cluster did not get back in sync"
    in_sync_s = r.seconds_since_fault()
    result, got, logs = r.finish(None if whole else led)
    stopped_ms = verdicts_stopped_ms(got.verdicts, r.fault_ms)
    decided_before = sum(min(v.timestamps.decided_ms for v in vs) <= stopped_ms for vs in got.verdicts.values())
    reach = replay_reach_s(got.verdicts, stopped_ms)
    expected = RATE * COMMIT_INTERVAL_MS / 1000
    figures(
        f"cluster_restart_{'all' if whole else 'one'}",
        title=("Restart the whole cluster on its logs" if whole
               else "Stop a broker (SIGTERM) and start it again on its log"),
        injected=(f"a stream at {RATE:g} pairs/s through one matcher on a 3-node cluster; after {BEFORE_S:g} s "
                  + ("every node is stopped (SIGTERM, all at once) and started again on its log (records, "
                     "committed offsets and producer state kept)" if whole else
                     "the node leading most of pairs.in's partitions is stopped (SIGTERM: a controlled shutdown "
                     "that hands its leadership over) and started again on its log 3 s later")
                  + f"; the matcher keeps running; the stream goes on {TAIL_S:g} s after every replica is in sync"),
        **({} if whole else {"stopped_node_led_partitions": led}),
        seconds_to_stop_and_start=down_s,
        seconds_until_all_replicas_in_sync=in_sync_s,
        seconds_from_fault_until_verdicts_stopped=round((stopped_ms - r.fault_ms) / 1000, 2),
        pairs_decided_until_verdicts_stopped=decided_before,
        rate_times_commit_interval_pairs=expected,
        re_decided_pairs_reached_back_s=reach,
        commit_interval_ms=COMMIT_INTERVAL_MS,
        **r.figures,
    )
    r.check(result, got, logs)
    assert r.processes[0].returncode is None
    # Resumed from the committed offsets, not from the start: what was decided again is a small
    # part of what had been decided when the verdicts stopped.
    assert result.pairs_decided_twice_or_more < max(decided_before, 1) / 2, (result, decided_before)


def test_broker_frozen_past_the_request_timeout(kafka_cluster, run, figures):
    cluster = kafka_cluster
    r = run("frozen-broker", request_timeout_ms=PAUSE_REQUEST_TIMEOUT_MS).start(seed=55)
    victim, led = busiest_leader(cluster)
    was_coordinator = coordinator(cluster, r.name) == victim
    r.fault()
    cluster.pause_node(victim)
    try:
        time.sleep(PAUSE_S)
    finally:
        cluster.resume_node(victim)
    assert until(lambda: in_sync(cluster), 90, 0.5), "the frozen node did not catch up"
    in_sync_s = r.seconds_since_fault()
    result, got, logs = r.finish(led)
    figures(
        "cluster_broker_sigstop",
        title=f"Freeze a broker (SIGSTOP) for {PAUSE_S:g} s, past the request timeout",
        injected=f"a stream at {RATE:g} pairs/s through one matcher (--request-timeout-ms "
                 f"{PAUSE_REQUEST_TIMEOUT_MS}) on a 3-node cluster; after {BEFORE_S:g} s the node leading most of "
                 f"pairs.in's partitions is SIGSTOPped for {PAUSE_S:g} s (past the matcher's request timeout, "
                 "short of the brokers' 9 s session timeout with the controller, so the cluster does not move "
                 f"its leadership), then SIGCONTed; the stream goes on {TAIL_S:g} s after every replica is in sync",
        frozen_node_led_partitions=led,
        frozen_node_was_group_coordinator=was_coordinator,
        seconds_frozen=PAUSE_S,
        seconds_until_all_replicas_in_sync=in_sync_s,
        **r.figures,
    )
    r.check(result, got, logs)
    assert r.processes[0].returncode is None
