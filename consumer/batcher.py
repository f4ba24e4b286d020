"""Dynamic micro-batching (the idea of Triton's dynamic batcher).

Joined pairs accumulate in an open batch that is cut when either

* it holds ``max_size`` pairs (reason ``full``), or
* its oldest pair has waited ``max_delay_s`` (reason ``deadline``), or
* the matcher drains it on a rebalance or at shutdown (reason ``drain``).

Under load, batches fill before the deadline and the model runs at its efficient batch size;
under a trickle, no pair waits longer than ``max_delay_s`` for company. The batcher is driven by
the poll loop (``add`` / ``due`` / ``drain`` with the current monotonic time) and never sleeps.

Batches that are cut while the model is busy wait in a queue; the inference thread scores those
waiting together, up to ``max_size`` pairs (:func:`combine`), so a backlog of small deadline
batches is worked off at the model's efficient batch size instead of one small batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class FlushReason(str, Enum):
    FULL = "full"
    DEADLINE = "deadline"
    DRAIN = "drain"


@dataclass(slots=True)
class Batch(Generic[T]):
    items: list[T]
    reason: FlushReason

    def __len__(self) -> int:
        return len(self.items)


class Batcher(Generic[T]):
    def __init__(self, max_size: int, max_delay_s: float):
        if max_size < 1 or max_delay_s < 0:
            raise ValueError("max_size must be >= 1 and max_delay_s >= 0")
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._items: list[T] = []
        self._opened = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, now: float) -> Batch[T] | None:
        """Add one item; returns the batch if this item filled it."""
        if not self._items:
            self._opened = now
        self._items.append(item)
        if len(self._items) >= self.max_size:
            return self._cut(FlushReason.FULL)
        return None

    def deadline(self) -> float | None:
        """Monotonic time at which the open batch is due (None when empty)."""
        return self._opened + self.max_delay_s if self._items else None

    def due(self, now: float) -> Batch[T] | None:
        """The open batch if its oldest item has waited ``max_delay_s``."""
        if self._items and now - self._opened >= self.max_delay_s:
            return self._cut(FlushReason.DEADLINE)
        return None

    def drain(self, now: float) -> Batch[T] | None:
        """Whatever is open, regardless of size and age."""
        return self._cut(FlushReason.DRAIN) if self._items else None

    def _cut(self, reason: FlushReason) -> Batch[T]:
        batch = Batch(self._items, reason)
        self._items = []
        return batch


def combine(batches: list[Batch[T]]) -> Batch[T]:
    """One batch of the items of ``batches``, in order; it keeps the first batch's flush reason."""
    if len(batches) == 1:
        return batches[0]
    items = [item for batch in batches for item in batch.items]
    return Batch(items, batches[0].reason)
