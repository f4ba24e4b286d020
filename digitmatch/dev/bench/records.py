"""Pre-encoded halves, so the load generator spends its CPU on sending, not on encoding.

A :class:`RecordPool` encodes each pair of a :class:`~digitmatch.producer.load.PairSet` once with
:mod:`digitmatch.wire`. A benchmark run gives every pair it sends a fresh pair ID and reuses the
pool's value bytes and headers; only ``dm-produced-ms`` is stamped at send time.
"""

from __future__ import annotations

from dataclasses import dataclass

from digitmatch import wire
from digitmatch.producer.load import PairSet

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class EncodedHalf:
    value: bytes
    headers: Headers  # every dm- header except dm-produced-ms


@dataclass(frozen=True)
class RecordPool:
    spoken: list[EncodedHalf]
    written: list[EncodedHalf]
    source: str

    @classmethod
    def from_pairs(cls, pairs: PairSet) -> "RecordPool":
        spoken, written = [], []
        for i, pid in enumerate(pairs.pair_ids):
            _, value, headers = wire.encode_spoken(pid, pairs.mfcc[i], int(pairs.spoken_digits[i]))
            spoken.append(EncodedHalf(value, headers))
            _, value, headers = wire.encode_written(pid, pairs.images[i], int(pairs.written_digits[i]))
            written.append(EncodedHalf(value, headers))
        return cls(spoken, written, pairs.source)

    def __len__(self) -> int:
        return len(self.spoken)

    def halves(self, i: int) -> tuple[EncodedHalf, EncodedHalf]:
        """(spoken, written) of pool entry ``i`` (wrapping around)."""
        j = i % len(self.spoken)
        return self.spoken[j], self.written[j]


def stamped(half: EncodedHalf, produced_ms: int) -> Headers:
    return half.headers + [(wire.H_PRODUCED_MS, str(produced_ms).encode())]
