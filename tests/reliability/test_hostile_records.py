"""Hostile records and pauses, as an attacker would try them: a record whose header name is not
UTF-8, a matcher stopped (SIGSTOP) while partners wait on the topic, a backlog whose halves are
far apart in the log but close in time, a flood of large lone halves against the memory bound, and
a shutdown while the broker is frozen. Each scenario failed on the matcher before these fixes
(docs/reliability.md, "Hostile input and pauses")."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from flow import GROUP_TIMING, serve_flags, tally
from matcher_harness import PairSpec, Topics, make_pairs, metric_value
from probe import Sampler, proc_memory_kib

from digitmatch import wire

pytestmark = [pytest.mark.slow, pytest.mark.any_broker]


class RawHeaderName(str):
    """A header name whose bytes on the wire are ``raw`` (kafka-python writes ``name.encode()``):
    Kafka header names are bytes, so a producer in any language can send ones that are not UTF-8."""

    def __new__(cls, raw: bytes):
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, *args, **kwargs) -> bytes:
        return self.raw


def wait_until(condition, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def pending(process) -> float:
    status, text = process.get("/metrics")
    return metric_value(text, "digitmatch_pending_halves") if status == 200 else -1


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_stream_goes_on(broker, start_matcher,
                                                                                   shipped_model, figures, clients):
    topics = Topics.create(broker.connection, "poison", partitions=1)
    flags = serve_flags(topics, shipped_model, "poison")
    sender, reader = clients(broker.connection, topics)
    first = start_matcher(broker.bootstrap, **flags)
    pairs = make_pairs(25, "after-poison", seed=91)
    poison = pairs[0].spoken()
    sender.send((b"poison-1", poison[1], [(RawHeaderName(b"\xff\xfedm-half"), b"spoken"), *poison[2]]))
    sender.send_all([half for p in pairs[:20] for half in (p.spoken(), p.written())])
    got = reader.wait_for(lambda c: {p.pair_id for p in pairs[:20]} <= c.verdicts.keys() and c.dead_letters,
                          timeout_s=60)
    first_exit = first.stop()
    # a restart reads on from the commit point: the poison record is not read (nor dead-lettered) again
    second = start_matcher(broker.bootstrap, **flags)
    sender.send_all([half for p in pairs[20:] for half in (p.spoken(), p.written())])
    got = reader.wait_for(lambda c: {p.pair_id for p in pairs} <= c.verdicts.keys(), timeout_s=60)
    got = reader.poll(1.0)
    result = tally(pairs, got.verdicts)
    reasons = [(key, headers[wire.H_DLQ_REASON].decode()) for key, _, headers in got.dead_letters]
    figures(
        "hostile_header_name",
        title="A header name that is not valid UTF-8",
        injected="one record on pairs.in whose first header name is the bytes ff fe 'dm-half' (legal on the "
                 "Kafka wire), then 20 good pairs; the matcher stopped (SIGTERM) and started again; 5 more pairs",
        dead_letters=[f"{key.decode()}: {reason}" for key, reason in reasons],
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
        exit_code_of_first_matcher=first_exit,
        second_matcher_alive=second.returncode is None,
    )
    assert reasons == [(b"poison-1", "bad_header")]
    key, value, headers = got.dead_letters[0]
    assert value == poison[1]  # the value is kept; the headers could not be read, so they are not
    assert headers[wire.H_DLQ_SOURCE] == f"{topics.input}:0:0".encode()
    assert result.lost == 0 and result.wrong_halves == 0 and result.unpaired == 0
    assert first_exit == 0 and second.returncode is None


def test_records_at_the_size_limit_get_a_dead_letter_that_fits(broker, start_matcher, shipped_model, figures,
                                                                 clients):
    """A 1 MB value and 1.08 MB of extra headers: rejected, and dead-lettered truncated (with the
    original sizes) within --max-dead-letter-bytes; the commit point moves past them. (The input
    topic takes records up to 8 MiB, as an operator who raised it would have it: Apache Kafka's
    default, about 1 MiB, refuses both records at the producer.)"""
    from kafka import KafkaProducer

    topics = Topics.create(broker.connection, "oversized", partitions=1,
                           input_configs={"max.message.bytes": str(8 * 2**20)})
    flags = serve_flags(topics, shipped_model, "oversized")
    _, reader = clients(broker.connection, topics)
    big = clients.track(KafkaProducer(**broker.connection.producer_kwargs(max_request_size=8 * 2**20)))
    first = start_matcher(broker.bootstrap, **flags)
    pairs = make_pairs(20, "after-oversized", seed=98)
    key, value, headers = pairs[0].spoken()
    big.send(topics.input, key=b"huge-value", value=bytes(2**20), headers=headers)
    big.send(topics.input, key=b"huge-headers", value=value,
             headers=[*headers, *((f"dm-pad-{i}", bytes(9000)) for i in range(120))])
    for p in pairs[1:]:
        for k, v, h in (p.spoken(), p.written()):
            big.send(topics.input, key=k, value=v, headers=h)
    big.flush()
    wanted = {p.pair_id for p in pairs[1:]}
    got = reader.wait_for(lambda c: wanted <= c.verdicts.keys() and len(c.dead_letters) >= 2, timeout_s=60)
    truncated_counted = metric_value(first.get("/metrics")[1], "digitmatch_dead_letters_truncated_total")
    first.stop()
    second = start_matcher(broker.bootstrap, **flags)
    got = reader.poll(3.0)  # a replay of the two records would dead-letter them again by now
    metrics = second.get("/metrics")[1]
    letters = {k: (v, h) for k, v, h in got.dead_letters}
    sizes = {k.decode(): len(k) + len(v) + sum(len(n) + len(x or b"") for n, x in h.items())
             for k, (v, h) in letters.items()}
    result = tally(pairs[1:], got.verdicts)
    figures(
        "hostile_oversized_dead_letter",
        title="Records at the size limit",
        injected="a record with a 1 MiB value and one with 120 unknown dm- headers of 9,000 bytes, then 19 good "
                 "pairs; the matcher stopped (SIGTERM) and started again",
        dead_letters={k.decode(): h[wire.H_DLQ_REASON].decode() for k, (_, h) in letters.items()},
        dead_letter_bytes=sizes,
        truncated={k.decode(): h.get(wire.H_DLQ_TRUNCATED, b"").decode() for k, (_, h) in letters.items()},
        dead_letters_after_restart=len(got.dead_letters),
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
    )
    assert set(letters) == {b"huge-value", b"huge-headers"} and len(got.dead_letters) == 2
    assert letters[b"huge-value"][1][wire.H_DLQ_REASON] == b"too_large"
    assert letters[b"huge-headers"][1][wire.H_DLQ_REASON] == b"unknown_header"
    for key, (value, headers) in letters.items():
        assert wire.H_DLQ_ORIGINAL_BYTES in headers and wire.H_DLQ_SOURCE in headers
        assert sizes[key.decode()] <= 1_000_000
    assert letters[b"huge-value"][0] == bytes(len(letters[b"huge-value"][0]))  # a prefix of the original
    assert result.lost == 0 and result.wrong_halves == 0
    assert truncated_counted == 2
    assert metric_value(metrics, "digitmatch_dead_letters_truncated_total") == 0  # nothing was read again
    assert second.returncode is None


def test_compressed_batches_and_a_compression_bomb(broker, start_matcher, shipped_model, figures, clients):
    """Good pairs in batches compressed with each codec Kafka has, and one small batch per codec that
    inflates to 200 MB (one record of zeros): the pairs are decided, each bomb that the broker takes
    is dead-lettered as too large (truncated), and the memory the matcher needs stays bounded. A
    broker that checks the compressed size against its message.max.bytes (Apache Kafka, 1 MiB by
    default) refuses the bombs that compress worst (snappy's 200 MiB is about 9.4 MiB compressed):
    those never reach the matcher."""
    from digitmatch.kafka.client import OutgoingRecord
    from digitmatch.kafka.librdkafka_producer import LibrdkafkaProducer

    inflated = 200 * 2**20
    topics = Topics.create(broker.connection, "compressed", partitions=1)
    _, reader = clients(broker.connection, topics)
    processes: list = []
    with Sampler(processes, interval_s=0.1) as sampler:
        matcher = start_matcher(broker.bootstrap, **serve_flags(topics, shipped_model, "compressed"))
        processes.append(matcher)
        rss_ready = proc_memory_kib(matcher.pid).get("VmRSS", 0)
        pairs, bombs, refused = {}, {}, []
        for codec in ("gzip", "snappy", "lz4", "zstd"):
            producer = LibrdkafkaProducer(broker.connection, **{"compression.type": codec,
                                                               "message.max.bytes": 250 * 2**20})
            try:
                for p in make_pairs(10, f"{codec}-pair", seed=99):
                    pairs[p.pair_id] = p
                    for k, v, h in (p.spoken(), p.written()):
                        producer.produce(OutgoingRecord(topics.input, k, v, h), lambda error, offset: None)
                producer.flush(30)
                key = f"{codec}-bomb".encode()
                delivered = []
                producer.produce(OutgoingRecord(topics.input, key, bytes(inflated), list(make_pairs(1, "b")[0].spoken()[2])),
                                 lambda error, offset: delivered.append(error is None))
                producer.flush(60)
                if delivered == [True]:
                    bombs[key] = codec
                else:
                    refused.append(codec)
            finally:
                producer.close(10)
        got = reader.wait_for(lambda c: pairs.keys() <= c.verdicts.keys() and len(c.dead_letters) >= len(bombs),
                              timeout_s=120)
    result = tally(list(pairs.values()), got.verdicts)
    letters = {k: h for k, _, h in got.dead_letters}
    figures(
        "hostile_compression",
        title="Compressed batches and compression bombs",
        injected=f"10 pairs in batches compressed with each of gzip, snappy, lz4 and zstd, and after each a record "
                 f"of {inflated // 2**20} MiB of zeros compressed with the same codec",
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
        dead_letters={(k or b"(no key)").decode(): h[wire.H_DLQ_REASON].decode() for k, h in letters.items()},
        bombs_refused_by_the_broker=refused,
        rss_mib_ready=round(rss_ready / 1024, 1),
        peak_rss_mib=round(sampler.peaks.rss_kib / 1024, 1),
        matcher_alive=matcher.returncode is None,
    )
    assert result.lost == 0 and result.wrong_halves == 0
    # librdkafka inflates gzip, snappy and lz4 (the record is then too large); it refuses to inflate
    # the zstd one, which it reports at its offset (unreadable) instead of stopping the partition
    assert {k: h[wire.H_DLQ_REASON] for k, h in letters.items() if k} == {k: b"too_large" for k in bombs if k != b"zstd-bomb"}
    unreadable = [h for k, h in letters.items() if h[wire.H_DLQ_REASON] == b"unreadable"]
    assert len(unreadable) == (b"zstd-bomb" in bombs)
    assert all(h[wire.H_DLQ_SOURCE].startswith(topics.input.encode()) for h in unreadable)
    assert set(refused) <= {"snappy"}  # the others compress 200 MiB of zeros below 1 MiB
    assert matcher.returncode is None


# The partners that reach the broker only after the SIGCONT were created during the pause: their
# record timestamps are this long after the first halves were sent (within the TTL).
CREATED_AFTER_S = 1.5


@pytest.mark.parametrize("name,pause_s,ttl_s,partners_after_s", [
    ("short", 4.5, 3.0, 2.0),  # shorter than the session timeout
    ("long", 15.0, 10.0, 1.0),  # longer than the session timeout and the TTL
    ("partners_after", 4.5, 3.0, 5.0),  # created during the pause, they reach the broker 0.5 s after SIGCONT
], ids=["shorter-than-the-session", "longer-than-session-and-ttl", "partners-right-after-the-pause"])
def test_a_stopped_matcher_declares_nothing_unpaired_that_it_has_not_read_past(
        broker, start_matcher, shipped_model, figures, clients, name, pause_s, ttl_s, partners_after_s):
    """SIGSTOP with first halves read and their partners produced during the pause (or created
    during it and delivered just after it: their record timestamps, the create time, are within
    the TTL of the first halves): on SIGCONT, the partners are read and joined; no half is declared
    unpaired, no partner dead-lettered. (Judged by the wall clock, every half was older than the TTL
    on waking up; a partner *created* after the TTL by its timestamp may rightly find its half
    expired, consumer/stream_time.py.)"""
    topics = Topics.create(broker.connection, "pause")
    flags = serve_flags(topics, shipped_model, "pause", join_ttl_s=ttl_s)
    sender, reader = clients(broker.connection, topics)
    matcher = start_matcher(broker.bootstrap, **flags)
    pairs = make_pairs(60, f"pause-{name}", seed=92)
    first_sent_ms = wire.now_ms()
    sender.send_all([p.spoken() for p in pairs])
    assert wait_until(lambda: pending(matcher) == len(pairs), 30), "the first halves were not read"
    os.kill(matcher.pid, signal.SIGSTOP)
    try:
        time.sleep(min(partners_after_s, pause_s))
        if partners_after_s < pause_s:
            sender.send_all([p.written() for p in pairs])
            time.sleep(pause_s - partners_after_s)
    finally:
        os.kill(matcher.pid, signal.SIGCONT)
    if partners_after_s >= pause_s:
        time.sleep(partners_after_s - pause_s)
        sender.send_all([p.written() for p in pairs], timestamp_ms=first_sent_ms + int(CREATED_AFTER_S * 1000))
    wanted = {p.pair_id for p in pairs}
    got = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=60)
    got = reader.poll(ttl_s + 2)  # anything false would come by now
    result = tally(pairs, got.verdicts)
    reasons = got.dead_letter_reasons()
    figures(
        f"hostile_pause_{name}",
        title=f"Matcher stopped for {pause_s:g} s (join TTL {ttl_s:g} s, session timeout "
              f"{GROUP_TIMING['session_timeout_ms'] / 1000:g} s)",
        injected=f"60 first halves read, SIGSTOP, SIGCONT after {pause_s:g} s; their partners produced "
                 f"{partners_after_s:g} s after the SIGSTOP" + (
                     f" (created {CREATED_AFTER_S:g} s after the first halves: their timestamps)"
                     if partners_after_s >= pause_s else ""),
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        unpaired_verdicts=result.unpaired,
        verdict_records=result.verdict_records,
        dead_letters=len(got.dead_letters),
        lost=result.lost,
    )
    assert result.lost == 0 and result.unpaired == 0 and result.wrong_halves == 0
    assert not reasons, reasons
    assert result.pairs_decided_twice_or_more == result.re_emitted_identical  # any repeat is the same decision
    assert matcher.returncode is None


def test_a_stopped_matcher_that_lost_its_partitions_publishes_no_wrong_verdict(broker, start_matcher, shipped_model,
                                                                              figures, clients):
    """Two matchers; one is stopped past the session timeout while it holds first halves, the other
    takes its partitions over and decides the pairs. The stopped one, woken up, must not publish an
    ``unpaired`` verdict for any of them: the last verdict of every pair is its real one."""
    topics = Topics.create(broker.connection, "stale")
    flags = serve_flags(topics, shipped_model, "stale", join_ttl_s=10)
    sender, reader = clients(broker.connection, topics)
    a = start_matcher(broker.bootstrap, **flags)
    b = start_matcher(broker.bootstrap, **flags)
    pairs = make_pairs(80, "stale", seed=93)
    assert wait_until(lambda: all(metric_value(m.get("/metrics")[1], "digitmatch_partitions_assigned") == 2
                                  for m in (a, b)), 60), "the two matchers did not share the partitions"
    sender.send_all([p.spoken() for p in pairs])
    assert wait_until(lambda: pending(a) + pending(b) == len(pairs), 30)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        time.sleep(GROUP_TIMING["session_timeout_ms"] / 1000 + 1)
        assert wait_until(lambda: metric_value(b.get("/metrics")[1], "digitmatch_partitions_assigned") == 4, 60)
        sender.send_all([p.written() for p in pairs])
        wanted = {p.pair_id for p in pairs}
        reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=60)
        time.sleep(2)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    got = reader.poll(15)  # longer than the TTL: a false unpaired verdict from the woken matcher comes by now
    result = tally(pairs, got.verdicts)
    last_unpaired = sum(got.verdicts[p.pair_id][-1].outcome == "unpaired" for p in pairs if got.verdicts.get(p.pair_id))
    figures(
        "hostile_stale_owner",
        title="A stopped matcher whose partitions moved to another",
        injected="two matchers, 80 first halves read; one SIGSTOPped past the session timeout, the other takes "
                 "all partitions and gets the partners; the stopped one is woken (SIGCONT)",
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        unpaired_verdicts=result.unpaired,
        last_verdict_unpaired=last_unpaired,
        verdict_records=result.verdict_records,
        lost=result.lost,
    )
    assert result.lost == 0 and result.wrong_halves == 0
    assert result.unpaired == 0 and last_unpaired == 0
    assert a.returncode is None and b.returncode is None


def test_a_backlog_is_expired_by_stream_time_not_by_how_long_it_takes_to_read(broker, start_matcher, shipped_model,
                                                                             figures, clients):
    """A backlog whose two halves of a pair are thousands of records apart in the log but 0.2 s
    apart in time, drained with a TTL shorter than reading from one half to the other takes: no
    pair is declared unpaired. A lone half at the end still expires once its partition is quiet."""
    count, ttl_s = 6000, 0.5
    topics = Topics.create(broker.connection, "backlog")
    sender, reader = clients(broker.connection, topics)
    rng = np.random.default_rng(94)
    pairs = [PairSpec(f"b-{i}", i % 10, i % 10, rng.normal(size=(20, 13)).astype(np.float32),
                      rng.integers(0, 256, (28, 28), dtype=np.uint8)) for i in range(count)]
    base = wire.now_ms()
    for i, p in enumerate(pairs):  # every spoken half, then every written one, 0.2 s after
        key, value, headers = p.spoken(base)
        sender.producer.send(topics.input, key=key, value=value, headers=headers, timestamp_ms=base + i * 100 // count)
    for i, p in enumerate(pairs):
        key, value, headers = p.written(base)
        sender.producer.send(topics.input, key=key, value=value, headers=headers,
                             timestamp_ms=base + 200 + i * 100 // count)
    lone = make_pairs(1, "lone", seed=95)[0]
    key, value, headers = lone.spoken(base)
    sender.producer.send(topics.input, key=key, value=value, headers=headers, timestamp_ms=base + 300)
    sender.producer.flush()
    started = time.monotonic()
    matcher = start_matcher(broker.bootstrap, **serve_flags(topics, shipped_model, "backlog", join_ttl_s=ttl_s))
    wanted = {p.pair_id for p in pairs} | {lone.pair_id}
    got = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=180)
    drained_s = time.monotonic() - started
    got = reader.poll(1.0)
    result = tally(pairs, got.verdicts)
    lone_verdicts = [v.outcome for v in got.verdicts.get(lone.pair_id, [])]
    figures(
        "hostile_backlog_stream_time",
        title=f"A backlog of {count:,} pairs drained with a {ttl_s:g}-s TTL",
        injected=f"{count:,} spoken halves, then their {count:,} written halves stamped 0.2 s later (a pair's "
                 f"halves {count:,} records apart), then one lone spoken half; the matcher started on the backlog",
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        unpaired_verdicts=result.unpaired,
        dead_letters=len(got.dead_letters),
        lone_half_verdicts=lone_verdicts,
        seconds_from_start_to_last_verdict=round(drained_s, 1),
    )
    assert result.lost == 0 and result.unpaired == 0 and result.wrong_halves == 0
    assert not got.dead_letters
    assert lone_verdicts == ["unpaired"]
    assert matcher.returncode is None


def test_pending_halves_are_bounded_in_bytes(broker, start_matcher, shipped_model, figures, clients):
    """Lone spoken halves of 1,000 frames (52 kB each) against --max-pending-bytes: the oldest are
    declared unpaired early, the pending bytes stay within the bound and so does the memory."""
    count, limit = 3000, 32 * 2**20
    topics = Topics.create(broker.connection, "bytes")
    flags = serve_flags(topics, shipped_model, "bytes", join_ttl_s=300, max_pending_bytes=limit)
    sender, reader = clients(broker.connection, topics)
    processes: list = []
    with Sampler(processes, interval_s=0.2) as sampler:
        matcher = start_matcher(broker.bootstrap, **flags)
        processes.append(matcher)
        rss_ready = proc_memory_kib(matcher.pid).get("VmRSS", 0)
        frames = np.zeros((wire.MAX_FRAMES, 13), np.float32)
        for i in range(count):
            frames[0, 0] = i  # distinct content
            sender.send(wire.encode_spoken(f"big-{i}", frames, 1))
        sender.producer.flush()
        got = reader.wait_for(lambda c: sum(len(v) for v in c.verdicts.values()) >= count - limit // 53_000,
                              timeout_s=120)
        time.sleep(1.0)
        text = matcher.get("/metrics")[1]
    peak_rss_mib = round(sampler.peaks.rss_kib / 1024, 1)
    pending_bytes = metric_value(text, "digitmatch_pending_bytes")
    held = metric_value(text, "digitmatch_pending_halves")
    unpaired = sum(v[0].outcome == "unpaired" for v in got.verdicts.values())
    figures(
        "hostile_pending_bytes",
        title=f"{count:,} lone halves of {wire.MAX_FRAMES:,} frames against --max-pending-bytes {limit // 2**20} MiB",
        injected=f"{count:,} spoken halves of {wire.MAX_FRAMES:,} MFCC frames (52 kB each, "
                 f"{count * 52 / 1000:.0f} MB in all) whose partners never come",
        halves_sent=count,
        held_at_end=int(held),
        pending_mib_at_end=round(pending_bytes / 2**20, 1),
        declared_unpaired_early=unpaired,
        rss_mib_ready=round(rss_ready / 1024, 1),
        peak_rss_mib=peak_rss_mib,
    )
    assert pending_bytes <= limit
    assert held + unpaired == count
    assert unpaired >= count - limit // 52_000
    # memory: the bound, plus what librdkafka may prefetch (2 x 16 MiB) and some slack
    assert sampler.peaks.rss_kib - rss_ready <= (limit + 2 * 16 * 2**20 + 48 * 2**20) // 1024
    assert matcher.returncode is None


def test_shutdown_is_bounded_when_the_broker_is_frozen(fresh_broker, start_matcher, shipped_model, figures,
                                                       clients):
    """SIGTERM while the broker is stopped (SIGSTOP) and joined pairs are still to be published:
    the matcher exits within --shutdown-timeout-s (status 3), and what it had not committed is read
    again and decided by the next one."""
    timeout_s = 5.0
    topics = Topics.create(fresh_broker.connection, "frozen", partitions=1)
    # batches are cut only by the shutdown's drain: the verdicts are published into the frozen broker
    flags = serve_flags(topics, shipped_model, "frozen", shutdown_timeout_s=timeout_s, join_ttl_s=60,
                        max_delay_ms=600_000, max_batch_size=64)
    sender, reader = clients(fresh_broker.connection, topics)
    matcher = start_matcher(fresh_broker.bootstrap, **flags)
    pairs = make_pairs(10, "frozen", seed=96)
    sender.send_all([h for p in pairs for h in (p.spoken(), p.written())])

    def consumed() -> float:
        text = matcher.get("/metrics")[1]
        return sum(metric_value(text, "digitmatch_messages_consumed_total", {"half": h}) or 0
                   for h in ("spoken", "written"))

    assert wait_until(lambda: consumed() == 20, 30), "the halves were not read"
    os.kill(fresh_broker.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        os.killpg(matcher.pid, signal.SIGTERM)
        try:
            code = matcher.process.wait(timeout_s + 30)
        except Exception:
            code = None
        exit_s = time.monotonic() - started
    finally:
        os.kill(fresh_broker.pid, signal.SIGCONT)
    matcher.kill()
    restarted = start_matcher(fresh_broker.bootstrap, **{**flags, "max_delay_ms": 20})
    wanted = {p.pair_id for p in pairs}
    got = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=60)
    result = tally(pairs, got.verdicts)
    figures(
        "hostile_frozen_broker_shutdown",
        title="SIGTERM while the broker is frozen",
        injected=f"10 pairs read and joined, their batch not cut yet; the broker SIGSTOPped; SIGTERM to the "
                 f"matcher (--shutdown-timeout-s {timeout_s:g}); the broker resumed and a new matcher started",
        exit_code=code,
        seconds_to_exit=round(exit_s, 1),
        pairs_sent=result.pairs_sent,
        pairs_decided=result.pairs_decided,
        lost=result.lost,
    )
    assert code in (0, 3), matcher.log_tail()
    assert exit_s <= timeout_s + 10
    assert result.lost == 0 and result.wrong_halves == 0
    assert restarted.returncode is None
