"""The murmur2 partitioner, vectorised: against the Java client's published hashes and against
kafka-python's own (pure-Python, one key at a time) murmur2, on keys of every length."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from digitmatch.kafka.partitioner import murmur2, murmur2_partitions

# Apache Kafka's UtilsTest.testMurmur2: key -> Utils.murmur2(key), a Java (signed) int.
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def reference_partition(key: bytes, partitions: int) -> int:
    """kafka-python's DefaultPartitioner, for one key."""
    return (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions


def test_the_java_clients_hashes():
    keys = list(JAVA)
    assert murmur2(keys).view(np.int32).tolist() == [JAVA[k] for k in keys]


def test_to_positive_clears_the_sign_bit_rather_than_negating():
    # Java: toPositive(-790332482) = -790332482 & 0x7fffffff = 1357151166; 1357151166 % 50 = 16
    # (abs() would give 790332482 % 50 = 32).
    assert murmur2_partitions([b"foobar"], 50).tolist() == [16]


def test_random_keys_of_every_length_from_0_to_100_match_kafka_python():
    rng = random.Random(7)
    keys = [rng.randbytes(length) for length in range(101) for _ in range(20)]
    rng.shuffle(keys)  # lengths interleaved (the keys are put in order of length first)
    assert murmur2(keys).tolist() == [kafka_python_murmur2(k) for k in keys]
    longest_first = sorted(keys, key=len, reverse=True)  # in order already: taken as they are
    assert murmur2(longest_first).tolist() == [kafka_python_murmur2(k) for k in longest_first]
    for partitions in (1, 2, 3, 4, 7, 12, 64, 1000):
        assert murmur2_partitions(keys, partitions).tolist() == [reference_partition(k, partitions) for k in keys]


def test_keys_of_one_length_match_kafka_python():
    rng = random.Random(8)
    keys = [f"{rng.getrandbits(32):08x}-{i:027d}".encode() for i in range(2000)]  # 36 bytes each
    assert murmur2(keys).tolist() == [kafka_python_murmur2(k) for k in keys]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=40), st.integers(1, 2**31 - 1))
def test_any_keys_any_partition_count(keys, partitions):
    assert murmur2_partitions(keys, partitions).tolist() == [reference_partition(k, partitions) for k in keys]


def test_no_keys_and_no_partitions():
    assert murmur2([]).shape == (0,) and murmur2_partitions([], 4).shape == (0,)
    with pytest.raises(ValueError, match="at least one partition"):
        murmur2_partitions([b"k"], 0)
