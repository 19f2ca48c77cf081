"""Store receipts (`sparsetel.shared.receipt`): ranges, round trip, and refusal of garbage."""

from __future__ import annotations

import json

import pytest

from sparsetel.shared.errors import WireError
from sparsetel.shared.receipt import MAX_RANGES, decode_receipt, encode_receipt, seq_ranges


def test_ranges_are_sorted_disjoint_and_cover_exactly_the_seqs() -> None:
    assert seq_ranges([5, 1, 2, 3, 9, 3, 10]) == [(1, 3), (5, 5), (9, 10)]
    assert seq_ranges([]) == []


def test_a_receipt_round_trips_and_is_readable_json() -> None:
    (body,) = encode_receipt(7, [4, 2, 3, 8])
    assert json.loads(body) == {"v": 1, "bdSeq": 7, "seqs": [[2, 4], [8, 8]]}
    assert decode_receipt(body) == (7, [(2, 4), (8, 8)])


def test_many_ranges_are_split_over_several_receipts() -> None:
    seqs = range(0, 2 * (MAX_RANGES + 10), 2)  # every other seq: one range each
    bodies = encode_receipt(1, seqs)
    assert len(bodies) == 2
    got = [r for b in bodies for r in decode_receipt(b)[1]]
    assert got == [(s, s) for s in seqs]


def test_values_a_frame_header_cannot_hold_are_refused() -> None:
    with pytest.raises(ValueError, match="bdSeq"):
        encode_receipt(-1, [1])
    with pytest.raises(ValueError, match="seq"):
        encode_receipt(1, [2**32])


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"v": 2, "bdSeq": 1, "seqs": []}',
        b'{"v": 1, "seqs": []}',
        b'{"v": 1, "bdSeq": true, "seqs": []}',
        b'{"v": 1, "bdSeq": 1, "seqs": [[3, 2]]}',
        b'{"v": 1, "bdSeq": 1, "seqs": [[1]]}',
        b'{"v": 1, "bdSeq": 1, "seqs": [[1, 4294967296]]}',
        b'{"v": 1, "bdSeq": 1, "seqs": [[1.5, 2]]}',
        b'{"v": 1, "bdSeq": 1, "seqs": "1-2"}',
        b"[" * 100_000,
    ],
)
def test_garbage_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError) as err:
        decode_receipt(payload)
    assert err.value.reason == "receipt"
