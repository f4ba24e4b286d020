import numpy as np

from digitmatch import wire
from digitmatch.consumer.dead_letter import dead_letter, source_of


def test_dead_letter_keeps_the_record_and_adds_the_reason():
    key, value, headers = wire.encode_written("p-1", np.zeros((28, 28), np.uint8), digit=4)
    headers = headers + [("traceparent", b"00-abc")]
    out = dead_letter("pairs.dlq", topic="pairs.in", partition=2, offset=17, key=key, value=value[:10],
                      headers=headers, reason=wire.Reason.SIZE_MISMATCH, detail="too short")
    assert out.topic == "pairs.dlq" and out.key == key and out.value == value[:10]
    got = dict(out.headers)
    assert out.headers[: len(headers)] == headers
    assert got[wire.H_DLQ_REASON] == b"size_mismatch"
    assert got[wire.H_DLQ_DETAIL] == b"too short"
    assert got[wire.H_DLQ_SOURCE] == b"pairs.in:2:17"


def test_record_without_key_or_headers():
    out = dead_letter("d", topic="t", partition=0, offset=0, key=None, value=None, headers=None,
                      reason=wire.Reason.MISSING_KEY, detail="no key")
    assert out.key is None and out.value is None
    assert [name for name, _ in out.headers] == [wire.H_DLQ_REASON, wire.H_DLQ_DETAIL, wire.H_DLQ_SOURCE]


def test_source_format():
    assert source_of("pairs.in", 3, 99) == "pairs.in:3:99"
