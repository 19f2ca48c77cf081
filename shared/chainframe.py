"""Version 3 wire frames: chained frames that carry the temporal codec's payload.

The temporal codec codes each measurement against the previous decoded one, so its state
outlives a frame. A CHAINED frame continues the decoder state of frame (bd_seq, seq - 1) and
inherits that chain's model_ref, period, L and K, which leaves it a header of a few bytes; a
frame that is not chained starts from a key measurement and carries them (`ChainHead`). The
payload is an opaque byte string the codec writes; this module only frames it, with version 2's
audit section and CRC-32. docs/wire-format.md ("Version 3 frames") is the specification. Every
frame has one encoding: the decoder rejects anything else with a WireError whose `reason` tag
says what was wrong.
"""

from __future__ import annotations

import itertools
import operator
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from .manifest import MAX_K
from .wire import (
    CRC_SIZE,
    FLAG_AUDIT,
    FLAG_HISTORICAL,
    FLAG_IRREGULAR,
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_RECORDS,
    _fail,
    _pack_audit,
    _read_audit,
    _varint,
)

__all__ = [
    "CHAIN_VERSION",
    "FLAG_CHAINED",
    "MAX_K",
    "MIN_FRAME_BYTES",
    "ChainFrame",
    "ChainHead",
    "chain_frame",
    "chain_header_bytes",
    "decode_chain_frame",
    "encode_chain_frame",
    "frame_version",
    "is_chain_frame",
]

CHAIN_VERSION = 3
FLAG_CHAINED = 0x08
MIN_FRAME_BYTES = 14  # a chained frame: magic, version, flags, 6 one-byte varints, CRC
_KNOWN_FLAGS = FLAG_HISTORICAL | FLAG_AUDIT | FLAG_IRREGULAR | FLAG_CHAINED
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_I64 = range(-(2**63), 2**63)  # what a zigzag-coded varint holds

Audit = tuple[tuple[float, ...] | None, ...]


class ChainHead(NamedTuple):
    """What a chain's first frame (a frame that is not chained) says for the whole chain."""

    model_ref: bytes  # 8 bytes: the model the payload is coded with
    t0_ms: int  # time of record 0, ms since the Unix epoch, 0..2**64-1
    period_ms: int  # nominal sampling period, 1..2**32-1
    L: int  # most codes per measurement, 1..255
    K: int  # codebook size, 1..2**24


@dataclass(frozen=True, slots=True)
class ChainFrame:
    """One version 3 frame of `count` measurements (records) of edge (`bd_seq`, `seq`).

    `keys` (shape [n_keys], strictly ascending, < count) are the records coded without
    context. `head` is None for a chained frame, which continues the decoder state of frame
    (bd_seq, seq - 1). Times are kept as the wire has them: `gap` is gap_ms - period_ms, where
    gap_ms runs from the predecessor's last record to record 0 (0 when not chained), and
    `deltas` (shape [count - 1], None when every spacing is the period) are delta_ms -
    period_ms between consecutive records; `times` resolves them. `audit` (shape [count],
    None where a record has none) holds raw measurements of D float32 values each.
    """

    bd_seq: int
    seq: int
    count: int
    keys: tuple[int, ...]
    payload: bytes
    head: ChainHead | None
    gap: int = 0
    deltas: tuple[int, ...] | None = None
    historical: bool = False
    audit: Audit | None = None

    @property
    def chained(self) -> bool:
        return self.head is None

    def times(
        self, period_ms: int | None = None, prev_last_ms: int | None = None
    ) -> tuple[int, ...]:
        """Absolute ms of each record (shape [count]). A chained frame needs the chain's
        `period_ms` and `prev_last_ms`, the time of its predecessor's last record; a frame
        that is not chained has both in its head. WireError when a time goes back
        ("time_order") or past 2**64-1 ("time_range")."""
        if self.head is not None:
            if period_ms not in (None, self.head.period_ms):
                raise ValueError(f"the frame's period is {self.head.period_ms}, not {period_ms}")
            return _resolve(self.head.t0_ms, self.head.period_ms, self.deltas, self.count)
        if period_ms is None or prev_last_ms is None:
            raise ValueError("a chained frame's times need period_ms and prev_last_ms")
        if not 1 <= period_ms <= _U32 or not 0 <= prev_last_ms <= _U64:
            raise ValueError(f"bad period_ms {period_ms} or prev_last_ms {prev_last_ms}")
        if period_ms + self.gap < 0:
            raise _fail("time_order", "record 0 is earlier than the predecessor's last record")
        return _resolve(prev_last_ms + period_ms + self.gap, period_ms, self.deltas, self.count)


def _resolve(t0: int, period: int, deltas: Sequence[int] | None, count: int) -> tuple[int, ...]:
    if deltas is None:
        if t0 + (count - 1) * period > _U64:
            raise _fail("time_range", "a record's time exceeds 2**64-1")
        return tuple(range(t0, t0 + count * period, period))
    times = [t0]
    for i, delta in enumerate(deltas, 1):
        if period + delta < 0:
            raise _fail("time_order", f"record {i} is earlier than record {i - 1}")
        times.append(times[-1] + period + delta)
    if times[-1] > _U64:
        raise _fail("time_range", "a record's time exceeds 2**64-1")
    return tuple(times)


def chain_frame(
    bd_seq: int, seq: int, times_ms: Sequence[int], period_ms: int, keys: Sequence[int],
    payload: bytes, head: ChainHead | None, prev_last_ms: int | None,
    historical: bool = False, audit: Sequence[tuple[float, ...] | None] | None = None,
) -> ChainFrame:  # fmt: skip
    """The frame of records at `times_ms` (shape [count]) with the one encoding of its times:
    `gap` from `prev_last_ms` when chained (`head` None), `deltas` only when some spacing is
    not `period_ms`. A head must hold times_ms[0] and period_ms; an audit with no record's
    audit becomes None. WireError ("time_order", "time_range") for times that cannot be sent."""
    try:
        times = [operator.index(t) for t in times_ms]
        keys = tuple(operator.index(k) for k in keys)
    except TypeError as exc:
        raise _fail("field_type", "times and keys must be ints") from exc
    if not times:
        raise _fail("n_records", f"a frame holds 1..{MAX_RECORDS} records")
    if head is not None and (head.t0_ms, head.period_ms) != (times[0], period_ms):
        raise ValueError("head.t0_ms and head.period_ms must be times_ms[0] and period_ms")
    gap = 0
    if head is None:
        if prev_last_ms is None:
            raise ValueError("a chained frame needs prev_last_ms")
        gap = times[0] - operator.index(prev_last_ms) - period_ms
    steps = [b - a for a, b in itertools.pairwise(times)]
    if min(steps, default=0) < 0 or gap + period_ms < 0:
        raise _fail("time_order", "times must not go back")
    deltas = tuple(s - period_ms for s in steps)
    audits = None if audit is None or all(a is None for a in audit) else tuple(audit)
    return ChainFrame(
        bd_seq, seq, len(times), keys, payload, head, gap,
        deltas if any(deltas) else None, historical, audits,
    )  # fmt: skip


# --------------------------------------------------------------------------- encoding


def encode_chain_frame(frame: ChainFrame) -> bytes:
    """The frame's bytes (docs/wire-format.md, version 3); WireError when its content breaks
    the format, with the decoder's reason tags where they apply."""
    _check_fields(frame)
    _check_times(frame)
    head, flags = frame.head, _flags(frame)
    parts = [MAGIC, bytes((CHAIN_VERSION, flags)), _varint(frame.bd_seq), _varint(frame.seq)]
    if head is None:
        parts.append(_varint(_zigzag(frame.gap)))
    else:
        parts += [head.model_ref, _varint(head.t0_ms), _varint(head.period_ms)]
        parts += [bytes((head.L,)), _varint(head.K)]
    parts += [_varint(frame.count), _varint(len(frame.keys))]
    parts += [_varint(k - prev - 1) for prev, k in itertools.pairwise((-1, *frame.keys))]
    parts += [_varint(_zigzag(d)) for d in frame.deltas or ()]
    parts += [_varint(len(frame.payload)), frame.payload]
    if frame.audit is not None:
        parts.append(_pack_audit(frame.audit))
    body = b"".join(parts)
    if len(body) + CRC_SIZE > MAX_FRAME_BYTES:
        raise _fail("too_large", f"frame of {len(body) + CRC_SIZE} bytes > {MAX_FRAME_BYTES}")
    return body + zlib.crc32(body).to_bytes(CRC_SIZE, "big")


def _flags(frame: ChainFrame) -> int:
    return (
        (FLAG_HISTORICAL if frame.historical else 0)
        | (FLAG_AUDIT if frame.audit is not None else 0)
        | (FLAG_IRREGULAR if frame.deltas is not None else 0)
        | (FLAG_CHAINED if frame.head is None else 0)
    )


def _check_fields(frame: ChainFrame) -> None:
    head, deltas = frame.head, frame.deltas
    tuples = isinstance(frame.keys, tuple) and isinstance(deltas, (tuple, type(None)))
    ints = [frame.bd_seq, frame.seq, frame.count, frame.gap]
    ints += [*frame.keys, *(deltas or ()), *(head[1:] if head else ())] if tuples else []
    if not tuples or type(frame.payload) is not bytes or any(type(v) is not int for v in ints):
        raise _fail("field_type", "fields must be ints, keys and deltas tuples, payload bytes")
    if not (0 <= frame.bd_seq <= _U32 and 0 <= frame.seq <= _U32):
        raise _fail("field_range", "bd_seq and seq must be in 0..2**32-1")
    if head is None and frame.seq == 0:
        raise _fail("chain_seq", "a chained frame needs seq >= 1: it continues seq - 1")
    if head is not None:
        _check_head(head, frame.gap)
    if not 1 <= frame.count <= MAX_RECORDS:
        raise _fail("n_records", f"a frame holds 1..{MAX_RECORDS} records")
    keys = frame.keys
    if any(b <= a for a, b in itertools.pairwise(keys)):
        raise _fail("keys_order", "keys must be strictly ascending")
    if keys and not 0 <= keys[0] <= keys[-1] < frame.count:
        raise _fail("key_range", f"keys must be in 0..{frame.count - 1}")
    if head is not None and keys[:1] != (0,):
        raise _fail("no_key_start", "a frame that is not chained starts with a key")
    audit = frame.audit
    if audit is not None and (len(audit) != frame.count or all(a is None for a in audit)):
        raise _fail("audit_count", "audit needs one entry per record, some not None")


def _check_head(head: ChainHead, gap: int) -> None:
    if not isinstance(head.model_ref, bytes) or len(head.model_ref) != 8:
        raise _fail("model_ref", "model_ref must be 8 bytes")
    if gap != 0:
        raise _fail("field_range", "a frame that is not chained has no gap")
    if not 0 <= head.t0_ms <= _U64:
        raise _fail("time_range", "t0_ms must be in 0..2**64-1")
    if not 1 <= head.period_ms <= _U32:
        raise _fail("period_range", f"period_ms must be in 1..2**32-1, got {head.period_ms}")
    if not 1 <= head.L <= 255:
        raise _fail("L_range", f"L must be in 1..255, got {head.L}")
    if not 1 <= head.K <= MAX_K:
        raise _fail("K_range", f"K must be in 1..2**24, got {head.K}")


def _check_times(frame: ChainFrame) -> None:
    deltas = frame.deltas
    if deltas is not None:
        if len(deltas) != frame.count - 1:
            raise _fail("deltas_length", f"{len(deltas)} deltas for {frame.count} records")
        if not any(deltas):
            raise _fail("needless_irregular", "every delta is the period: send no deltas")
    if frame.gap not in _I64 or any(d not in _I64 for d in deltas or ()):
        raise _fail("time_range", "gap and deltas must be in -2**63..2**63-1")
    if frame.head is not None:
        frame.times()  # the decoder checks these times, so refuse what it would


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else (~n << 1) | 1


def _unzigzag(z: int) -> int:
    return ~(z >> 1) if z & 1 else z >> 1


def chain_header_bytes(frame: ChainFrame) -> int:
    """Bytes the encoded frame spends on everything but its payload and audit section."""
    return len(encode_chain_frame(replace(frame, audit=None))) - len(frame.payload)


# --------------------------------------------------------------------------- decoding


def frame_version(data: bytes | bytearray | memoryview) -> int:
    """The version byte of a frame of any version; WireError if too short or not `ST`."""
    if len(data) < 3:
        raise _fail("truncated", f"a frame needs 3 bytes for its version, got {len(data)}")
    if bytes(data[:2]) != MAGIC:
        raise _fail("magic", f"bad magic {bytes(data[:2])!r}")
    return int(data[2])


def is_chain_frame(payload: bytes | bytearray | memoryview) -> bool:
    """Whether `payload` says it is a version 3 frame (anything else, malformed or not, goes
    to `shared.wire.decode_frame`, which says what is wrong with it)."""
    return len(payload) >= 3 and payload[2] == CHAIN_VERSION and bytes(payload[:2]) == MAGIC


def decode_chain_frame(data: bytes | bytearray | memoryview) -> ChainFrame:
    """Parse one version 3 frame strictly; WireError(reason=tag) on anything the format does
    not allow. The CRC is checked before any field after the version is read."""
    body = _open(bytes(data))
    flags = body[3]
    if flags & ~_KNOWN_FLAGS:
        raise _fail("flags", f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}")
    reader = _Reader(body, 4)
    bd_seq, seq = reader.bounded(0, _U32, "field_range"), reader.bounded(0, _U32, "field_range")
    head, gap = None, 0
    if not flags & FLAG_CHAINED:
        head = _read_head(reader)
    elif seq == 0:
        raise _fail("chain_seq", "a chained frame with seq 0 has no predecessor")
    else:
        gap = _unzigzag(reader.varint())
    count = reader.bounded(1, MAX_RECORDS, "n_records")
    keys = _read_keys(reader, count, head is not None)
    deltas = _read_deltas(reader, count) if flags & FLAG_IRREGULAR else None
    if head is not None:
        _resolve(head.t0_ms, head.period_ms, deltas, count)
    payload = reader.take(reader.varint(), "payload_length")
    pos, audit = reader.pos, None
    if flags & FLAG_AUDIT:
        audits: list[tuple[float, ...] | None] = [None] * count
        pos, audit = _read_audit(body, pos, audits), tuple(audits)
    if pos != len(body):
        raise _fail("trailing", f"{len(body) - pos} bytes after the end of the frame")
    historical = bool(flags & FLAG_HISTORICAL)
    return ChainFrame(bd_seq, seq, count, keys, payload, head, gap, deltas, historical, audit)


def _open(data: bytes) -> bytes:
    """The frame without its CRC, once size, magic, version and CRC are checked."""
    if len(data) > MAX_FRAME_BYTES:
        raise _fail("too_large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    version = frame_version(data)
    if version != CHAIN_VERSION:
        raise _fail("version", f"version {version} is not a chained frame's {CHAIN_VERSION}")
    if len(data) < MIN_FRAME_BYTES:
        raise _fail("truncated", f"a version 3 frame needs {MIN_FRAME_BYTES} bytes")
    body = data[:-CRC_SIZE]
    if zlib.crc32(body) != int.from_bytes(data[-CRC_SIZE:], "big"):
        raise _fail("crc", "the CRC-32 does not match the frame")
    return body


class _Reader:
    """Reads `data` from `pos` on: varints (unsigned LEB128, minimal, at most 10 bytes)
    and byte strings, failing with a reason tag where the frame breaks a rule."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def varint(self) -> int:
        data, pos, value, shift = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise _fail("truncated", f"frame ends in a varint at byte {self.pos}")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 70:
                raise _fail("varint_overflow", f"varint at byte {self.pos} is over 10 bytes")
        if byte == 0 and shift:
            raise _fail("varint_overlong", f"varint at byte {self.pos} is not minimal")
        if value > _U64:
            raise _fail("varint_overflow", f"varint at byte {self.pos} exceeds 2**64-1")
        self.pos = pos
        return value

    def take(self, size: int, reason: str = "truncated") -> bytes:
        if size > len(self.data) - self.pos:
            raise _fail(reason, f"{size} bytes at byte {self.pos} run past the frame")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def bounded(self, low: int, high: int, reason: str) -> int:
        value = self.varint()
        if not low <= value <= high:
            raise _fail(reason, f"{value} is not in {low}..{high}")
        return value


def _read_head(reader: _Reader) -> ChainHead:
    model_ref, t0_ms = reader.take(8), reader.varint()
    period_ms = reader.bounded(1, _U32, "period_range")
    L = reader.take(1)[0]
    if L == 0:
        raise _fail("L_range", "L is 0")
    return ChainHead(model_ref, t0_ms, period_ms, L, reader.bounded(1, MAX_K, "K_range"))


def _read_keys(reader: _Reader, count: int, starts: bool) -> tuple[int, ...]:
    n = reader.varint()
    if n > count:
        raise _fail("key_range", f"{n} keys in a frame of {count} records")
    keys: list[int] = []
    key = -1
    for _ in range(n):
        key += reader.varint() + 1
        if key >= count:
            raise _fail("key_range", f"key {key} >= count {count}")
        keys.append(key)
    if starts and keys[:1] != [0]:
        raise _fail("no_key_start", "a frame that is not chained must have a key at 0")
    return tuple(keys)


def _read_deltas(reader: _Reader, count: int) -> tuple[int, ...]:
    deltas = tuple(_unzigzag(reader.varint()) for _ in range(count - 1))
    if not any(deltas):
        raise _fail("needless_irregular", "FLAG_IRREGULAR set but every delta is the period")
    return deltas
