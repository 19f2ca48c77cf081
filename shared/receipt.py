"""Store receipts: the cloud tells an edge which of its frames are safe in the database.

The broker's PUBACK only says the broker has a frame. A broker that restarts can still lose
it: Mosquitto 2.0 does not restore shared subscriptions from its persistence, so a frame
that arrives before the decoders subscribe again matches no one and is acknowledged all the
same. With ``confirm = "store"`` an edge keeps every frame in its spool until a receipt names
it, and publishes it again (flagged historical) when none comes in time; the store drops the
repeats by (edge, bdSeq, seq).

A receipt goes to ``sparsetel/v1/{group}/ACK/{edge}`` (QoS 0: a lost receipt only means one
more resend) after the decoder has committed the frames it names. It is JSON, readable with
``mosquitto_sub``::

    {"v": 1, "bdSeq": 3, "seqs": [[10, 12], [15, 15]]}

`seqs` are inclusive ranges of seq of that bdSeq, sorted and disjoint. A frame is confirmed
once its handling is final: stored, a repeat of a stored one, parked for a model not
registered yet, held for an operator (a clone: its key is stored with other content; or its
times lie outside the window the decoder takes), or refused for a reason that resending
cannot change (its model's L or K differ, its codes do not decode). A frame refused for a
passing reason (the store failed, a flood, the parked or held frames are at their bound, its
bytes were damaged on the way) is not confirmed, so it comes again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .errors import WireError

__all__ = ["MAX_RANGES", "RECEIPT_VERSION", "decode_receipt", "encode_receipt", "seq_ranges"]

RECEIPT_VERSION = 1
MAX_RANGES = 4096  # a receipt names at most this many ranges; more go in further receipts
_U32 = 2**32 - 1
_U64 = 2**64 - 1


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, disjoint, inclusive ranges covering `seqs` (repeats allowed)."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def encode_receipt(bd_seq: int, seqs: Iterable[int]) -> list[bytes]:
    """The receipts (one, or more when there are over MAX_RANGES ranges) naming `seqs` of
    `bd_seq`; ValueError for a value a frame header cannot hold."""
    if not 0 <= bd_seq <= _U64:
        raise ValueError(f"bdSeq must be in 0..2**64-1, got {bd_seq}")
    ranges = seq_ranges(seqs)
    if ranges and not (ranges[0][0] >= 0 and ranges[-1][1] <= _U32):
        raise ValueError(f"seq must be in 0..2**32-1, got {ranges[0][0]}..{ranges[-1][1]}")
    return [
        json.dumps(
            {"v": RECEIPT_VERSION, "bdSeq": bd_seq, "seqs": ranges[i : i + MAX_RANGES]},
            separators=(",", ":"),
        ).encode()
        for i in range(0, len(ranges), MAX_RANGES)
    ]


def decode_receipt(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(bdSeq, ranges) of a receipt; WireError(reason="receipt") when it is not one."""
    try:
        body = json.loads(payload)
        if not isinstance(body, dict) or body.get("v") != RECEIPT_VERSION:
            raise ValueError(f"not a version {RECEIPT_VERSION} receipt")
        bd_seq, raw = body["bdSeq"], body["seqs"]
        if not _is_int(bd_seq) or not 0 <= bd_seq <= _U64:
            raise ValueError(f"bad bdSeq {bd_seq!r}")
        if not isinstance(raw, list) or len(raw) > MAX_RANGES:
            raise ValueError(f"seqs must be a list of at most {MAX_RANGES} ranges")
        ranges = []
        for item in raw:
            ok = isinstance(item, list) and len(item) == 2 and all(_is_int(v) for v in item)
            if not ok or not 0 <= item[0] <= item[1] <= _U32:
                raise ValueError(f"bad range {item!r}")
            ranges.append((int(item[0]), int(item[1])))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise WireError(f"bad receipt: {exc}", reason="receipt") from exc
    return int(bd_seq), ranges


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
