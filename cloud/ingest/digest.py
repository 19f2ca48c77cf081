"""A frame's content digest, to tell a repeat of a stored frame from a clone.

The store keeps each frame's digest beside its key (edge, bd_seq, seq). A frame arriving with
a stored key is a duplicate when the digests match (or the stored row predates digests), and
a clone when they differ: another agent under the same edge id, or a re-imaged device that
started its bdSeq over.

The digest is taken over the decoded frame, never its bytes: what it says (model ref,
period, L, K and every record's time, codes and audit values), not how it was sent. A frame
resent from the spool (flagged historical) or re-encoded in another wire version digests
the same.

A version 3 frame's content is its coded payload, which only its chain can decode, so
`chain_digest` takes every field but the historical flag (`shared.chainframe.ChainFrame`).
"""

from __future__ import annotations

import hashlib
import math
import struct

from ...shared.chainframe import ChainFrame
from ...shared.wire import Frame

__all__ = ["chain_digest", "frame_digest"]

_HEAD = struct.Struct(">8sQQQQ")  # model_ref, period_ms, L, K, records
_RECORD = struct.Struct(">QQ")  # t_ms, number of codes
_NO_AUDIT = b"\x00"


def frame_digest(frame: Frame) -> str:
    """BLAKE2b-128 of the frame's content, as 32 hex digits (NaN audits digest as one NaN)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_HEAD.pack(frame.model_ref, frame.period_ms, frame.L, frame.K, len(frame.records)))
    for record in frame.records:
        codes = record.codes
        h.update(_RECORD.pack(record.t_ms, len(codes)))
        h.update(struct.pack(f">{len(codes)}Q", *codes))
        audit = record.audit
        if audit is None:
            h.update(_NO_AUDIT)
        else:
            values = [math.nan if v != v else v for v in audit]  # one NaN, whatever its bits
            h.update(struct.pack(f">BQ{len(values)}d", 1, len(values), *values))
    return h.hexdigest()


def chain_digest(frame: ChainFrame) -> str:
    """BLAKE2b-128 of a version 3 frame's content (all but `historical`), as 32 hex digits."""
    h = hashlib.blake2b(digest_size=16, person=b"sparsetel-v3")
    head = frame.head
    h.update(struct.pack(">QQQQq", frame.bd_seq, frame.seq, frame.count, len(frame.keys),
                         frame.gap))  # fmt: skip
    h.update(struct.pack(f">{len(frame.keys)}Q", *frame.keys))
    if head is not None:
        h.update(b"H" + head.model_ref + struct.pack(">QQQQ", head.t0_ms, head.period_ms,
                                                     head.L, head.K))  # fmt: skip
    deltas = frame.deltas or ()
    h.update(struct.pack(f">B{len(deltas)}q", frame.deltas is not None, *deltas))
    h.update(struct.pack(">Q", len(frame.payload)) + frame.payload)
    for audit in frame.audit or ():
        if audit is None:
            h.update(_NO_AUDIT)
        else:
            values = [math.nan if v != v else v for v in audit]
            h.update(struct.pack(f">BQ{len(values)}d", 1, len(values), *values))
    return h.hexdigest()
