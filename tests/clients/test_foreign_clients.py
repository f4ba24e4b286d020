"""Clients not written here publish halves and read verdicts, following docs/wire-format.md and
docs/clients.md: Debian's ``kcat`` (librdkafka) and Apache Kafka's Java client (``PairClient`` in
tests/clients/java), against Apache Kafka.

Rules:

* **The kcat commands are the documentation's**: docs/clients.md's blocks marked
  ``<!-- tested: NAME -->`` are run verbatim with ``bash`` (variables ``BOOTSTRAP``, ``PAIR_ID``,
  ``FRAMES``, ``DIGIT``, files ``spoken.bin`` / ``written.bin`` in the working directory); its Java
  settings block must be a verbatim excerpt of ``PairClient.java``.
* **The halves are real**: held-out FSDD recordings (the shipped model's MFCC settings) and MNIST
  images, their bytes written with NumPy's ``tobytes()``; what is under test is the client.
* **A foreign pair is decided as the project's own producer's**: the reference verdicts are those
  of the same halves sent by ``PairProducer`` (kafka-python) to the same matcher under other pair
  IDs, and only pairs it decides correctly are used. A foreign pair's decision fields (outcome,
  score, threshold, model, predicted digits) must equal them; its verdict is read back by the
  client that sent the pair (kcat ``-C -f``, the Java consumer) in its halves' partition.
* **Routing**: kcat with ``-X partitioner=murmur2_random`` puts a half in the key's murmur2
  partition, as the Java client does; kcat at librdkafka's default (CRC32) puts it in
  ``crc32(key) % n``, and for a key where that differs from ``murmur2(key) % n`` a pair whose halves
  come from kcat and the Java client is split (the partitions are those the records were read back
  from).
* **Pair IDs where the partitioners disagree**: every kcat pair ID is one whose CRC32 partition is
  not its murmur2 partition, so a kcat command that lost its partitioner option fails a test.
* One Apache Kafka broker and one ``digitmatch serve`` (the shipped model) for the module; every test
  uses pair IDs of its own on the default topics.
"""

from __future__ import annotations

import os
import re
import subprocess
import zlib
from pathlib import Path

import pytest
from kafka.partitioner.default import murmur2

from digitmatch import wire
from digitmatch.kafka.admin import topic_partitions
from digitmatch.kafka.configuration import KafkaConnection
from matcher_harness import Reader, Topics, decision, until

REPO = Path(__file__).resolve().parents[2]
CLIENTS_DOC = REPO / "docs" / "clients.md"
JAVA_PROJECT = REPO / "tests" / "clients" / "java"
JAVA_SOURCE = JAVA_PROJECT / "src" / "main" / "java" / "io" / "digitmatch" / "clients" / "PairClient.java"
MURMUR2_OPTION = "-X partitioner=murmur2_random"
VERDICT_TIMEOUT_S = 90.0
JOIN_TTL_S = 15.0
# (spoken digit, written digit) of the candidate pairs: matching and not.
CANDIDATES = [(3, 3), (7, 7), (1, 1), (2, 5), (8, 0), (4, 9)]



def on_kafka(test):
    """An end-to-end test: slow, and on Apache Kafka whatever ``--broker`` says."""
    return pytest.mark.slow(pytest.mark.kafka_only(test))


# --------------------------------------------------------------------------- the documentation


def doc_block(name: str) -> str:
    """The fenced code block after ``<!-- tested: name -->`` in docs/clients.md."""
    found = re.findall(rf"<!-- tested: {re.escape(name)} -->\n```\w*\n(.*?)```", CLIENTS_DOC.read_text(), re.S)
    assert len(found) == 1, f"docs/clients.md has {len(found)} blocks marked {name!r}"
    return found[0]


def test_the_documented_java_settings_are_the_programs():
    excerpt = [line.strip() for line in doc_block("java-producer-settings").splitlines() if line.strip()]
    source = [line.strip() for line in JAVA_SOURCE.read_text().splitlines()]
    starts = [i for i in range(len(source)) if source[i:i + len(excerpt)] == excerpt]
    assert starts, "docs/clients.md's Java settings are not a verbatim excerpt of PairClient.java"


def test_the_java_client_is_the_brokers_version():
    version = r"<kafka.version>([^<]+)</kafka.version>"
    java_pom = (JAVA_PROJECT / "pom.xml").read_text()
    broker_pom = (REPO / "deploy" / "kafka-native" / "pom.xml").read_text()
    assert re.search(version, java_pom).group(1) == re.search(version, broker_pom).group(1)


# --------------------------------------------------------------------------- the clients


def kcat_run(block: str, bootstrap: str, workdir: Path, **variables) -> str:
    env = {**os.environ, "BOOTSTRAP": bootstrap, **{k: str(v) for k, v in variables.items()}}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{block}\nexit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def write_halves(workdir: Path, halves) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spoken.bin").write_bytes(halves.spoken_bytes())
    (workdir / "written.bin").write_bytes(halves.written_bytes())
    return workdir


def kcat_send(bootstrap: str, workdir: Path, pair_id: str, halves, half: str, block: str | None = None) -> None:
    """One half with docs/clients.md's kcat command (or ``block``, a variant of it)."""
    digit = halves.spoken_digit if half == "spoken" else halves.written_digit
    kcat_run(block or doc_block(f"kcat-{half}"), bootstrap, workdir, PAIR_ID=pair_id, FRAMES=halves.frames,
             DIGIT=digit)


def java_run(java_client: list[str], *args: str) -> str:
    done = subprocess.run([*java_client, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"PairClient {' '.join(args)}\nexit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def java_send(java_client: list[str], bootstrap: str, workdir: Path, pair_id: str, halves, half: str) -> int:
    """One half from the Java client; the partition the broker acknowledged it in."""
    if half == "spoken":
        headers = ["dm-schema=1", "dm-half=spoken", f"dm-shape={halves.frames},13", "dm-dtype=<f4",
                   f"dm-digit={halves.spoken_digit}"]
    else:
        headers = ["dm-schema=1", "dm-half=written", "dm-shape=28,28", "dm-dtype=|u1",
                   f"dm-digit={halves.written_digit}"]
    out = java_run(java_client, "produce", bootstrap, wire.TOPIC_PAIRS, pair_id, str(workdir / f"{half}.bin"),
                   *headers)
    partition, _offset = out.split()
    return int(partition)


Verdicts = dict[str, list[tuple[int, wire.Verdict]]]  # pair ID: (partition, verdict) of each copy read


def parse_verdicts(lines: str) -> Verdicts:
    """``partition TAB key TAB JSON`` lines (kcat's ``-f '%p\\t%k\\t%s\\n'``, PairClient consume)."""
    found: Verdicts = {}
    for line in lines.splitlines():
        partition, key, value = line.split("\t", 2)
        verdict = wire.Verdict.from_bytes(value.encode())
        assert verdict.pair_id == key
        found.setdefault(key, []).append((int(partition), verdict))
    return found


def kcat_verdicts(bootstrap: str, workdir: Path, pair_ids: list[str]) -> Verdicts:
    """docs/clients.md's kcat consumer, run until every pair ID has a verdict."""
    seen: dict = {}

    def all_there() -> bool:
        seen.update(parse_verdicts(kcat_run(doc_block("kcat-verdicts"), bootstrap, workdir)))
        return set(pair_ids) <= seen.keys()

    until(all_there, timeout_s=VERDICT_TIMEOUT_S, interval_s=0.5)
    return {p: seen[p] for p in pair_ids if p in seen}


def java_verdicts(java_client: list[str], bootstrap: str, pair_ids: list[str]) -> Verdicts:
    timeout_ms = str(int(VERDICT_TIMEOUT_S * 1000))
    out = java_run(java_client, "consume", bootstrap, wire.TOPIC_MATCHES, timeout_ms, *pair_ids)
    return parse_verdicts(out)


def pairs_in_partitions(bootstrap: str, workdir: Path, pair_id: str) -> dict[str, list[int]]:
    """``{half: [partitions]}`` of ``pair_id``'s records in ``pairs.in``, read back with kcat."""
    out = kcat_run(f"kcat -C -b \"$BOOTSTRAP\" -t {wire.TOPIC_PAIRS} -o beginning -e -f '%p\\t%k\\t%h\\n'",
                   bootstrap, workdir)
    found: dict[str, list[int]] = {}
    for line in out.splitlines():
        partition, key, headers = line.split("\t", 2)
        if key == pair_id:
            half = re.search(r"(?:^|,)dm-half=(\w+)", headers).group(1)
            found.setdefault(half, []).append(int(partition))
    return found


def dead_letters(bootstrap: str, workdir: Path, pair_id: str) -> list[tuple[str, str]]:
    """``[(reason, headers as kcat prints them)]`` of ``pair_id``'s dead letters in ``pairs.dlq``,
    read back with kcat."""
    out = kcat_run(f"kcat -C -b \"$BOOTSTRAP\" -t {wire.TOPIC_DLQ} -o beginning -e -f '%k\\t%h\\n'",
                   bootstrap, workdir)
    found = []
    for line in out.splitlines():
        key, headers = line.split("\t", 1)
        if key == pair_id:
            found.append((re.search(r"(?:^|,)dm-dlq-reason=(\w+)", headers).group(1), headers))
    return found


def murmur2_partition(key: str, partitions: int) -> int:
    """The Java client's (and kafka-python's) default partition of a key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def crc32_partition(key: str, partitions: int) -> int:
    """librdkafka's default (``consistent_random``) partition of a non-empty key."""
    return zlib.crc32(key.encode()) % partitions


def split_keys(prefix: str, partitions: int, count: int = 1) -> list[str]:
    """The first ``count`` keys ``prefix-0``, ``prefix-1``, ... whose CRC32 partition is not their
    murmur2 partition: where a kcat command without ``-X partitioner=murmur2_random`` would show."""
    keys = (f"{prefix}-{i}" for i in range(1000))
    return [k for k in keys if crc32_partition(k, partitions) != murmur2_partition(k, partitions)][:count]


# --------------------------------------------------------------------------- the fixtures


@pytest.fixture(scope="module")
def partitions(broker) -> int:
    connection = KafkaConnection(bootstrap_servers=broker.bootstrap)
    counts = topic_partitions(connection, [wire.TOPIC_PAIRS, wire.TOPIC_MATCHES])
    assert counts[wire.TOPIC_PAIRS] == counts[wire.TOPIC_MATCHES] > 1
    return counts[wire.TOPIC_PAIRS]


@pytest.fixture(scope="module")
def matcher(broker, start_module_matcher, shipped_model):
    # A join TTL shorter than the default 30 s, long enough for a JVM to start between two halves:
    # the split pair's lone half gets its unpaired verdict sooner.
    return start_module_matcher(broker.bootstrap, model=shipped_model, join_ttl_s=JOIN_TTL_S)


@pytest.fixture(scope="module")
def reference(broker, matcher, real_halves) -> dict[tuple[int, int], wire.Verdict]:
    """``{(spoken digit, written digit): verdict}`` of the candidates the project's own producer's
    halves got decided correctly (at least one matching pair and one not)."""
    from digitmatch.producer.producer import PairProducer

    connection = KafkaConnection(bootstrap_servers=broker.bootstrap)
    producer = PairProducer(connection)
    for spoken, written in CANDIDATES:
        halves = real_halves.pair(spoken, written)
        producer.spoken.send(f"py-{spoken}{written}", halves.mfcc, digit=spoken)
        producer.written.send(f"py-{spoken}{written}", halves.image, digit=written)
    producer.close()
    reader = Reader(connection, Topics(wire.TOPIC_PAIRS, wire.TOPIC_MATCHES, wire.TOPIC_DLQ))
    try:
        wanted = {f"py-{s}{w}" for s, w in CANDIDATES}
        seen = reader.wait_for(lambda c: wanted <= c.verdicts.keys(), timeout_s=VERDICT_TIMEOUT_S)
    finally:
        reader.close()
    assert wanted <= seen.verdicts.keys(), f"no verdict for {sorted(wanted - seen.verdicts.keys())}"
    decided = {(s, w): seen.verdicts[f"py-{s}{w}"][0] for s, w in CANDIDATES}
    correct = {pair: v for pair, v in decided.items() if v.correct}
    assert {v.outcome for v in correct.values()} == {"match", "no_match"}, decided
    return correct


def one_of_each(reference: dict) -> list[tuple[int, int]]:
    """The first matching and the first non-matching pair of ``reference``."""
    return [next(pair for pair, v in reference.items() if v.outcome == outcome) for outcome in ("match", "no_match")]


def one_verdict(found: dict, pair_id: str) -> tuple[int, wire.Verdict]:
    assert pair_id in found, f"no verdict for {pair_id}"
    (partition, verdict), *again = found[pair_id]
    assert all(decision(v) == decision(verdict) for _, v in again)  # re-emitted copies decide alike
    return partition, verdict


def check_decided_as_reference(verdict: wire.Verdict, reference: wire.Verdict, halves) -> None:
    assert verdict.outcome in ("match", "no_match")
    assert decision(verdict) == decision(reference)
    assert verdict.outcome == ("match" if halves.spoken_digit == halves.written_digit else "no_match")
    assert (verdict.truth.spoken, verdict.truth.written) == (halves.spoken_digit, halves.written_digit)
    assert verdict.correct is True


# --------------------------------------------------------------------------- the tests


@on_kafka
def test_kcat_pairs_are_decided_as_the_project_producers(broker, reference, real_halves, partitions, kcat, tmp_path):
    pair_ids = {}
    for spoken, written in one_of_each(reference):
        [pair_id] = split_keys(f"kcat-{spoken}{written}", partitions)
        halves = real_halves.pair(spoken, written)
        workdir = write_halves(tmp_path / pair_id, halves)
        kcat_send(broker.bootstrap, workdir, pair_id, halves, "spoken")
        kcat_send(broker.bootstrap, workdir, pair_id, halves, "written")
        pair_ids[pair_id] = (spoken, written)
    found = kcat_verdicts(broker.bootstrap, tmp_path, list(pair_ids))
    for pair_id, digits in pair_ids.items():
        partition, verdict = one_verdict(found, pair_id)
        check_decided_as_reference(verdict, reference[digits], real_halves.pair(*digits))
        assert partition == murmur2_partition(pair_id, partitions)


@on_kafka
def test_java_pairs_are_decided_as_the_project_producers(broker, reference, real_halves, partitions, java_client,
                                                         tmp_path):
    pair_ids = {}
    for spoken, written in one_of_each(reference):
        pair_id = f"java-{spoken}{written}"
        halves = real_halves.pair(spoken, written)
        workdir = write_halves(tmp_path / pair_id, halves)
        sent = {java_send(java_client, broker.bootstrap, workdir, pair_id, halves, half)
                for half in ("spoken", "written")}
        assert sent == {murmur2_partition(pair_id, partitions)}
        pair_ids[pair_id] = (spoken, written)
    found = java_verdicts(java_client, broker.bootstrap, list(pair_ids))
    for pair_id, digits in pair_ids.items():
        partition, verdict = one_verdict(found, pair_id)
        check_decided_as_reference(verdict, reference[digits], real_halves.pair(*digits))
        assert partition == murmur2_partition(pair_id, partitions)


@on_kafka
def test_a_spoken_half_from_kcat_pairs_with_a_written_half_from_java(broker, reference, real_halves, partitions,
                                                                     kcat, java_client, tmp_path):
    digits, _ = one_of_each(reference)
    halves = real_halves.pair(*digits)
    [pair_id] = split_keys(f"mixed-{digits[0]}{digits[1]}", partitions)
    workdir = write_halves(tmp_path, halves)
    kcat_send(broker.bootstrap, workdir, pair_id, halves, "spoken")
    java_partition = java_send(java_client, broker.bootstrap, workdir, pair_id, halves, "written")
    partition, verdict = one_verdict(java_verdicts(java_client, broker.bootstrap, [pair_id]), pair_id)
    check_decided_as_reference(verdict, reference[digits], halves)
    assert verdict.outcome == "match"
    assert partition == java_partition == murmur2_partition(pair_id, partitions)


@on_kafka
def test_kcat_with_murmur2_puts_both_halves_in_the_keys_murmur2_partition(broker, real_halves, partitions, kcat,
                                                                          tmp_path):
    pair_ids = split_keys("routed", partitions, count=3)  # the option must be what moves them
    halves = real_halves.pair(6, 6)
    workdir = write_halves(tmp_path, halves)
    for pair_id in pair_ids:
        kcat_send(broker.bootstrap, workdir, pair_id, halves, "spoken")
        kcat_send(broker.bootstrap, workdir, pair_id, halves, "written")
    for pair_id in pair_ids:
        expected = murmur2_partition(pair_id, partitions)
        assert pairs_in_partitions(broker.bootstrap, workdir, pair_id) == {"spoken": [expected], "written": [expected]}


@on_kafka
def test_kcat_at_librdkafkas_default_partitioner_splits_a_pair_sent_with_java(broker, real_halves, partitions, kcat,
                                                                             java_client, tmp_path):
    documented = doc_block("kcat-spoken")
    assert MURMUR2_OPTION in documented
    default_partitioner = documented.replace(MURMUR2_OPTION, "")
    [pair_id] = split_keys("split", partitions)
    halves = real_halves.pair(5, 5)
    workdir = write_halves(tmp_path, halves)
    kcat_send(broker.bootstrap, workdir, pair_id, halves, "spoken", block=default_partitioner)
    java_partition = java_send(java_client, broker.bootstrap, workdir, pair_id, halves, "written")
    landed = pairs_in_partitions(broker.bootstrap, workdir, pair_id)
    assert landed == {"spoken": [crc32_partition(pair_id, partitions)], "written": [java_partition]}
    assert java_partition == murmur2_partition(pair_id, partitions)
    assert landed["spoken"] != landed["written"]
    # The matcher's partition check: the misrouted half is dead-lettered at once with the fix in
    # its detail, and its partner gets the pair's one verdict, unpaired, after the join TTL.
    found: list = []

    def dead_lettered() -> bool:
        found[:] = dead_letters(broker.bootstrap, workdir, pair_id)
        return bool(found)

    until(dead_lettered, timeout_s=VERDICT_TIMEOUT_S, interval_s=0.5)
    assert [reason for reason, _ in found] == ["misrouted"], found
    assert "kcat: -X partitioner=murmur2_random" in found[0][1]
    (_, verdict), = kcat_verdicts(broker.bootstrap, workdir, [pair_id])[pair_id]
    assert verdict.outcome == "unpaired" and verdict.missing_half == wire.Half.SPOKEN
