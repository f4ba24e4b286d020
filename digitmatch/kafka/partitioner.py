"""Kafka's murmur2 partition of keyed records, for many keys at once: the partition the Java
client's default partitioner picks for a key, ``toPositive(murmur2(key)) % partitions``, which
kafka-python's default and librdkafka's ``murmur2`` / ``murmur2_random`` partitioners pick too.
librdkafka's own default (``consistent_random``) hashes with CRC32 instead, and puts most keys
elsewhere.

Rules:

* The hash is the Java client's ``Utils.murmur2``: seed ``0x9747b28c`` xor the key's length;
  each little-endian 4-byte word ``k`` mixed in as ``k *= m; k ^= k >>> 24; k *= m; h *= m;
  h ^= k`` with ``m = 0x5bd1e995``; the 1-3 bytes left over xored in (the third at bit 16, the
  second at bit 8, the first at bit 0), then ``h *= m``; finally ``h ^= h >>> 13; h *= m;
  h ^= h >>> 15``; all modulo 2**32. :func:`murmur2` returns it unsigned, as kafka-python's
  ``murmur2`` does; Java's ``int`` is the same 32 bits read as signed.
* ``toPositive`` clears the sign bit (``h & 0x7fffffff``), it does not negate.
* Vectorised: the keys are ordered by length, longest first, and zero-padded into one
  ``(keys, width)`` byte array, read as 4-byte words. The word mix is one array operation on every
  word of every key; the chain ``h *= m; h ^= k`` is one operation per word position, on the keys
  long enough to have that word (a prefix of the order); the 1-3 leftover bytes of each key,
  zero-padded, are its next word. So a call costs a few array operations per 4 bytes of the
  longest key, whatever the number of keys and lengths. The matcher hashes one poll's keys of a
  partition at a time (``consumer/routing.py``): a Python loop over each key's bytes
  (kafka-python's ``murmur2``) costs 6-10 µs a 36-byte key here, as much as decoding the half
  (docs/benchmarks.md), where this costs about 0.1 µs.
* One long key makes the whole call pay for its length (the padding): hash keys of bounded length.
  The matcher hashes none longer than a pair ID (128 bytes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)
_R = np.uint32(24)
POSITIVE = 0x7FFFFFFF


def murmur2(keys: Sequence[bytes]) -> np.ndarray:
    """The murmur2 hash of each key, as ``uint32`` (see the module's rules)."""
    count = len(keys)
    if not count:
        return np.empty(0, dtype=np.uint32)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=count)
    width = (int(lengths.max()) // 4 + 1) * 4  # room for every key's leftover word, even a full one
    padded = np.zeros((count, width), dtype=np.uint8)
    padded[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(keys), dtype=np.uint8)
    order = None
    if (lengths[1:] > lengths[:-1]).any():  # not longest first yet (keys of one length are)
        order = np.argsort(-lengths, kind="stable")
        padded, lengths = padded[order], lengths[order]
    words = padded.view("<u4").astype(np.uint32, copy=False)
    whole = lengths // 4  # each key's whole words
    k = words * _M
    k ^= k >> _R
    k *= _M
    h = (lengths ^ SEED).astype(np.uint32)
    having = count - np.cumsum(np.bincount(whole))  # having[j]: keys with more than j whole words
    for position, keys_long_enough in enumerate(having[:-1].tolist()):
        h[:keys_long_enough] *= _M
        h[:keys_long_enough] ^= k[:keys_long_enough, position]
    h ^= words[np.arange(count), whole]  # the leftover bytes (third at bit 16 ... first at bit 0), or 0
    leftover = lengths % 4 != 0
    h[leftover] *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    if order is None:
        return h
    hashes = np.empty(count, dtype=np.uint32)
    hashes[order] = h
    return hashes


def murmur2_partitions(keys: Sequence[bytes], partitions: int) -> np.ndarray:
    """The partition of each key among ``partitions``: ``toPositive(murmur2(key)) % partitions``."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return (murmur2(keys) & np.uint32(POSITIVE)) % np.uint32(partitions)
