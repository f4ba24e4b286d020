"""The partition check (consumer/routing.py): which halves of a batch are in another partition than
their key's murmur2 partition, the partition count read per assignment; and, end to end on the
real broker, halves from a librdkafka producer left at its default partitioner next to halves
from one set to murmur2."""

from __future__ import annotations

import pytest
from kafka.partitioner.default import murmur2

from digitmatch.consumer.routing import RETRY_S, Routing, detail
from digitmatch.kafka.client import ClientError, Partition, Record
from digitmatch.wire import MAX_PAIR_ID_LENGTH

TOPIC = "in"


def home(key: bytes, partitions: int) -> int:
    """Where kafka-python's default partitioner puts ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Metadata:
    """A consumer's partition metadata: ``count`` partitions, or a ClientError while ``failing``."""

    def __init__(self, count: int):
        self.count = count
        self.failing = False
        self.calls = 0

    def partitions(self, topic: str) -> set[int] | None:
        self.calls += 1
        if self.failing:
            raise ClientError("metadata request timed out")
        return set(range(self.count)) if topic == TOPIC else None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records(*keys) -> list[Record]:
    return [Record(offset, key, b"", []) for offset, key in enumerate(keys)]


def keys_by_home(partitions: int, per_partition: int) -> dict[int, list[bytes]]:
    found: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(keys) < per_partition for keys in found.values()):
        key = f"pair-{n}".encode()
        if len(found[home(key, partitions)]) < per_partition:
            found[home(key, partitions)].append(key)
        n += 1
    return found


def routing(count: int = 4, **kwargs) -> tuple[Routing, Metadata, Clock]:
    metadata, clock = Metadata(count), Clock()
    return Routing(metadata, TOPIC, enabled=kwargs.pop("enabled", True), clock=clock, **kwargs), metadata, clock


def test_the_halves_of_another_partition_are_named_with_the_fix():
    check, _, _ = routing(4)
    keys = keys_by_home(4, 3)
    batch = records(keys[1][0], keys[3][0], keys[1][1], keys[0][0], keys[1][2])
    found = check.misrouted(Partition(TOPIC, 1), batch)
    assert found == {1: detail(3, 4, 1), 3: detail(0, 4, 1)}
    assert found[1].startswith("key hashes (murmur2) to partition 3 of 4 but was read from partition 1: ")
    assert "partitioner=murmur2_random" in found[1] and len(found[1].encode()) <= 512


def test_keys_that_decoding_rejects_are_not_hashed():
    check, _, _ = routing(4)
    keys = keys_by_home(4, 1)
    long_key = next(k for n in range(100) if home(k := b"x" * (MAX_PAIR_ID_LENGTH + 1 + n), 4) != 0)
    batch = records(None, long_key, keys[2][0], keys[0][0])
    assert check.misrouted(Partition(TOPIC, 0), batch) == {2: detail(2, 4, 0)}


def test_the_partition_count_is_read_once_per_assignment():
    check, metadata, _ = routing(4)
    keys = keys_by_home(8, 1)
    for _ in range(5):
        check.misrouted(Partition(TOPIC, 0), records(keys[0][0]))
    assert metadata.calls == 1 and check.count == 4
    metadata.count = 8  # partitions added: the group rebalances
    check.assigned()
    assert check.misrouted(Partition(TOPIC, 0), records(keys[4][0])) == {0: detail(4, 8, 0)}
    assert metadata.calls == 2 and check.count == 8


def test_nothing_is_checked_while_the_count_cannot_be_read_and_it_is_asked_again_later():
    check, metadata, clock = routing(4)
    wrong = records(keys_by_home(4, 1)[2][0])
    metadata.failing = True
    assert check.misrouted(Partition(TOPIC, 0), wrong) == {}
    clock.now += RETRY_S / 2
    assert check.misrouted(Partition(TOPIC, 0), wrong) == {}
    assert metadata.calls == 1  # not per poll
    metadata.failing = False
    clock.now += RETRY_S / 2
    assert check.misrouted(Partition(TOPIC, 0), wrong) == {0: detail(2, 4, 0)}
    assert metadata.calls == 2


def test_a_partition_beyond_the_count_reads_it_again():
    check, metadata, clock = routing(2)
    keys = keys_by_home(4, 1)
    check.misrouted(Partition(TOPIC, 0), records(keys[0][0]))
    metadata.count = 4
    assert check.misrouted(Partition(TOPIC, 3), records(keys[1][0])) == {0: detail(1, 4, 3)}
    assert metadata.calls == 2


def test_metadata_behind_the_assignment_is_asked_again_later_not_per_poll():
    check, metadata, clock = routing(2)
    batch = records(keys_by_home(4, 1)[1][0])
    for _ in range(3):
        assert check.misrouted(Partition(TOPIC, 3), batch) == {}
    assert metadata.calls == 1
    metadata.count = 4
    clock.now += RETRY_S
    assert check.misrouted(Partition(TOPIC, 3), batch) == {0: detail(1, 4, 3)}


def test_off_or_one_partition_checks_nothing():
    keys = keys_by_home(4, 1)
    off, metadata, _ = routing(4, enabled=False)
    assert off.misrouted(Partition(TOPIC, 0), records(keys[1][0])) == {} and metadata.calls == 0
    single, _, _ = routing(1)
    assert single.misrouted(Partition(TOPIC, 0), records(keys[1][0], b"any")) == {}


# --------------------------------------------------------------------------- on the real broker

TTL_S = 2.0
PARTITIONS = 4


@pytest.mark.slow
@pytest.mark.any_broker
def test_halves_from_a_librdkafka_default_producer_are_dead_lettered_misrouted(broker, start_matcher,
                                                                               serving_model):
    """Spoken halves from a confluent-kafka producer left at librdkafka's default partitioner
    (consistent_random: CRC32), written halves from one set to murmur2_random. Where the two
    partitioners disagree, the spoken half is dead-lettered ``misrouted`` naming the fix, and the
    pair gets one verdict, ``unpaired`` (its written half waited in vain); where they agree, the
    pair is joined as usual. No pair ID gets two verdicts."""
    import confluent_kafka
    from matcher_harness import Reader, Topics, make_pairs, metric_value

    from digitmatch import wire
    from digitmatch.kafka.partitioner import murmur2_partitions

    topics = Topics.create(broker.connection, "routing", partitions=PARTITIONS)
    process = start_matcher(broker.bootstrap, group_id="routing", model=serving_model, input_topic=topics.input,
                            output_topic=topics.output, dlq_topic=topics.dlq, join_ttl_s=TTL_S,
                            commit_interval_ms=200, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    pairs = make_pairs(40, "routing", seed=31)
    landed: dict[str, dict[str, int]] = {"spoken": {}, "written": {}}

    def produce(producer, which: str, record) -> None:
        key, value, headers = record

        def report(error, message):
            assert error is None, error
            landed[which][message.key().decode()] = message.partition()

        producer.produce(topics.input, value, key, headers=headers, on_delivery=report)

    default = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
    murmur = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random"})
    for pair in pairs:
        produce(default, "spoken", pair.spoken())
        produce(murmur, "written", pair.written())
    unsent = default.flush(30), murmur.flush(30)
    del default, murmur  # released: librdkafka would keep reconnecting after the broker is gone
    assert unsent == (0, 0)

    ids = [p.pair_id for p in pairs]
    # librdkafka's murmur2 partitions are the matcher's
    assert [landed["written"][i] for i in ids] == murmur2_partitions([i.encode() for i in ids], PARTITIONS).tolist()
    split = {i for i in ids if landed["spoken"][i] != landed["written"][i]}
    assert split and split != set(ids), split  # both cases happen with these keys

    reader = Reader(broker.connection, topics)
    try:
        got = reader.wait_for(lambda c: set(ids) <= c.verdicts.keys() and len(c.dead_letters) >= len(split), 90)
        got = reader.poll(TTL_S + 1)  # anything more (a second verdict) would come by now
    finally:
        reader.close()
    letters = {key.decode(): headers for key, _, headers in got.dead_letters}
    assert letters.keys() == split
    for pair_id in split:
        headers = letters[pair_id]
        assert headers[wire.H_DLQ_REASON] == b"misrouted"
        assert headers[wire.H_DLQ_DETAIL].decode() == detail(landed["written"][pair_id], PARTITIONS,
                                                             landed["spoken"][pair_id])
        assert headers[wire.H_DLQ_SOURCE].decode().startswith(f"{topics.input}:{landed['spoken'][pair_id]}:")
    assert {i: len(v) for i, v in got.verdicts.items()} == {i: 1 for i in ids}
    for pair_id in ids:
        (verdict,) = got.verdicts[pair_id]
        if pair_id in split:
            assert (verdict.outcome, verdict.missing_half) == ("unpaired", wire.Half.SPOKEN)
        else:
            assert verdict.outcome in ("match", "no_match")
    text = process.get("/metrics")[1]
    assert metric_value(text, "digitmatch_dead_letters_total", {"reason": "misrouted"}) == len(split)
