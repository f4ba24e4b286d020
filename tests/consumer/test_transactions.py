"""The transaction cycle's arithmetic (consumer/transactions.py); the cycle itself runs on the
in-memory Kafka in test_loop.py and on Apache Kafka in tests/reliability/test_exactly_once.py."""

from __future__ import annotations

from digitmatch.consumer import commit_metadata as cm
from digitmatch.consumer.transactions import evictions_needed, transactional_id


def test_the_fewest_oldest_pending_halves_are_evicted_for_the_metadata_to_fit():
    pending = list(range(0, 4000, 2))
    in_flight = [4001, 4003]
    unfinished = sorted(pending + in_flight)
    needed = evictions_needed(0, 4004, unfinished, pending, budget=100)
    assert needed is not None and 0 < needed < len(pending)
    left = [o for o in unfinished if o not in pending[:needed]]
    assert cm.fits(0, 4004, left, 100)
    assert not cm.fits(0, 4004, [o for o in unfinished if o not in pending[:needed - 1]], 100)


def test_nothing_is_evicted_when_it_fits_and_in_flight_records_alone_may_be_too_many():
    assert evictions_needed(0, 10, [1, 2], [1], budget=100) == 0
    assert evictions_needed(0, 10_000, list(range(0, 10_000, 2)), [0], budget=100) is None


def test_each_process_has_a_transactional_id_of_its_own():
    assert transactional_id("g") != transactional_id("g") and transactional_id("g").startswith("g-")
