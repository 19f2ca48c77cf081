"""Wire frames: the only code that turns a batch of sparse codes into bytes or back.

A frame carries many measurements of one edge device coded by one model: a 40-byte header
(and a header extension, empty today), the record times (only when irregular), the bit-packed
codes, an optional audit section with raw measurements, and a CRC-32 over all of it.
docs/wire-format.md is the specification; this module implements it. Frames are written as
version 2; version 1 frames (no codec id, no extension, no CRC) are still read. Every frame has
exactly one encoding: the decoder rejects anything else with a WireError whose `reason` tag
says what was wrong.
"""

from __future__ import annotations

import math
import operator
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import WireError

__all__ = [
    "AGENT_BATCH",
    "AGENT_MAX_BATCH_DELAY_S",
    "CODEC_PACKED",
    "CRC_SIZE",
    "FLAG_AUDIT",
    "FLAG_HISTORICAL",
    "FLAG_IRREGULAR",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "HEADER_SIZE_V1",
    "MAGIC",
    "MAX_FRAME_BYTES",
    "MAX_RECORDS",
    "VERSION",
    "VERSIONS",
    "Frame",
    "Record",
    "code_bits",
    "decode_frame",
    "encode_frame",
    "mqtt_publish_overhead",
    "record_bits",
    "records_per_frame",
    "wire_bytes_per_measurement",
]

VERSION = 2  # what encode_frame writes unless a frame says 1
VERSIONS = (1, 2)  # what decode_frame reads
MAGIC = b"ST"
CODEC_PACKED = 0  # the payload: bit-packed codes (the only codec so far)
FLAG_HISTORICAL = 0x01
FLAG_AUDIT = 0x02
FLAG_IRREGULAR = 0x04
MAX_FRAME_BYTES = 262144
MAX_RECORDS = 4096
# The edge agent's default framing: a frame leaves with AGENT_BATCH measurements, or at the
# latest AGENT_MAX_BATCH_DELAY_S after its first one (`records_per_frame`).
AGENT_BATCH = 50
AGENT_MAX_BATCH_DELAY_S = 1.0
# Temporal codec (frames of version 3): the agent's default key measurement interval, in
# measurements. Between keys each measurement is coded against the one before, across frames.
AGENT_KEY_INTERVAL = 60

_KNOWN_FLAGS = FLAG_HISTORICAL | FLAG_AUDIT | FLAG_IRREGULAR
_HEADER_V1 = struct.Struct(">2sBB8sIIQIHBH")
_HEADER_TAIL = struct.Struct(">BH")  # version 2 only: codec, extension length
HEADER_SIZE_V1 = _HEADER_V1.size  # 37
HEADER_SIZE = HEADER_SIZE_V1 + _HEADER_TAIL.size  # 40
CRC_SIZE = 4
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE  # 44 bytes a version 2 frame adds to its sections
_MAX_EXTENSION = 65535
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_MQTT_MAX_REMAINING = 268_435_455  # four remaining-length bytes (MQTT 3.1.1, 2.2.3)


class Record(NamedTuple):
    """One measurement: its time, its code (ascending indices, at most L) and, optionally,
    the raw measurement it was coded from (`audit`, shape [D], NaN = missing KPI).

    A named tuple, not a dataclass: a decoder builds one per measurement, and a tuple is
    made in half the time (the ingest benchmark's frame parser)."""

    t_ms: int
    codes: tuple[int, ...]
    audit: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """A batch of records from one edge (`bd_seq`, `seq`) coded by one model (`model_ref`).

    `period_ms` is the nominal sampling period; records at exactly that spacing cost no time
    bytes on the wire. `historical` marks records replayed from the spool, not live ones.
    `version` is the wire version the frame is written as (and was read as: 1 for an old
    frame). `extension` holds the bytes of a version 2 header extension (none today); a
    decoder skips their meaning but keeps them, so a re-encoded frame has the same bytes.
    """

    model_ref: bytes
    bd_seq: int
    seq: int
    L: int
    K: int
    period_ms: int
    records: tuple[Record, ...]
    historical: bool = False
    version: int = VERSION
    extension: bytes = b""


def _fail(reason: str, message: str) -> WireError:
    return WireError(f"{message} [{reason}]", reason=reason)


def code_bits(L: int, K: int) -> tuple[int, int]:
    """(bits for nnz = ceil(log2(L+1)), bits per index = ceil(log2 K)) for a valid L and K."""
    if not 1 <= L <= 255:
        raise ValueError(f"L must be in 1..255, got {L}")
    if not 2 <= K <= 65535:
        raise ValueError(f"K must be in 2..65535, got {K}")
    return L.bit_length(), (K - 1).bit_length()


def record_bits(nnz: int, L: int, K: int) -> int:
    """Bits one record with `nnz` codes takes in the codes section (before byte padding)."""
    nnz_bits, index_bits = code_bits(L, K)
    if not 0 <= nnz <= L:
        raise ValueError(f"nnz must be in 0..{L}, got {nnz}")
    return nnz_bits + nnz * index_bits


# --------------------------------------------------------------------------- encoding


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes (docs/wire-format.md); WireError when its content breaks the format."""
    L, K, records = frame.L, frame.K, frame.records
    _check_header_fields(frame)
    times = _check_times(records)
    period = frame.period_ms
    regular = all(times[i] - times[i - 1] == period for i in range(1, len(times)))
    has_audit = any(r.audit is not None for r in records)
    flags = (FLAG_HISTORICAL if frame.historical else 0) | (FLAG_AUDIT if has_audit else 0)
    parts = []
    if not regular:
        flags |= FLAG_IRREGULAR
        deltas = [0] + [times[i] - times[i - 1] for i in range(1, len(times))]
        parts.append(b"".join(_varint(d) for d in deltas))
    parts.append(_pack_codes(records, L, K))
    if has_audit:
        parts.append(_pack_audit([r.audit for r in records]))
    header = _HEADER_V1.pack(
        MAGIC, frame.version, flags, frame.model_ref, frame.bd_seq, frame.seq, times[0], period,
        len(records), L, K,
    )  # fmt: skip
    if frame.version == 1:
        data = header + b"".join(parts)
    else:
        tail = _HEADER_TAIL.pack(CODEC_PACKED, len(frame.extension))
        data = b"".join((header, tail, frame.extension, *parts))
        data += zlib.crc32(data).to_bytes(CRC_SIZE, "big")
    if len(data) > MAX_FRAME_BYTES:
        raise _fail("too_large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    return data


def _check_header_fields(frame: Frame) -> None:
    if not isinstance(frame.model_ref, bytes) or len(frame.model_ref) != 8:
        raise _fail("model_ref", "model_ref must be 8 bytes")
    for name in ("version", "bd_seq", "seq", "period_ms", "L", "K"):
        if type(getattr(frame, name)) is not int:
            raise _fail("field_type", f"{name} must be an int")
    if frame.version not in VERSIONS:
        raise _fail("version", f"version must be one of {VERSIONS}, got {frame.version}")
    if not isinstance(frame.extension, bytes):
        raise _fail("field_type", "extension must be bytes")
    if len(frame.extension) > (_MAX_EXTENSION if frame.version > 1 else 0):
        raise _fail("extension", "a header extension is 0..65535 bytes, and none in version 1")
    for name in ("bd_seq", "seq", "period_ms"):
        if not 0 <= getattr(frame, name) <= _U32:
            raise _fail("field_range", f"{name} must be in 0..2**32-1")
    if not 1 <= frame.L <= 255:
        raise _fail("L_range", f"L must be in 1..255, got {frame.L}")
    if not 2 <= frame.K <= 65535:
        raise _fail("K_range", f"K must be in 2..65535, got {frame.K}")
    if not 1 <= len(frame.records) <= MAX_RECORDS:
        raise _fail("n_records", f"a frame holds 1..{MAX_RECORDS} records")


def _check_times(records: Sequence[Record]) -> list[int]:
    try:
        times = [operator.index(r.t_ms) for r in records]
    except TypeError as exc:
        raise _fail("field_type", "t_ms must be an int") from exc
    if not 0 <= times[0] <= _U64 or not 0 <= times[-1] <= _U64:
        raise _fail("time_range", "times must be in 0..2**64-1")
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            raise _fail("time_order", f"record {i} is earlier than record {i - 1}")
    return times


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pack_codes(records: Sequence[Record], L: int, K: int) -> bytes:
    nnz_bits, index_bits = code_bits(L, K)
    out: list[bytes] = []
    acc = nacc = 0
    for i, record in enumerate(records):
        try:
            codes = [operator.index(c) for c in record.codes]
        except TypeError as exc:
            raise _fail("field_type", f"record {i}: codes must be ints") from exc
        if len(codes) > L:
            raise _fail("nnz_gt_L", f"record {i}: {len(codes)} codes, L is {L}")
        prev = 0
        acc = (acc << nnz_bits) | len(codes)
        for c in codes:
            if c < prev:
                reason = "index_negative" if c < 0 else "unsorted"
                raise _fail(reason, f"record {i}: codes must be ascending and >= 0")
            if c >= K:
                raise _fail("index_ge_K", f"record {i}: index {c} >= K={K}")
            acc = (acc << index_bits) | c
            prev = c
        nacc += nnz_bits + len(codes) * index_bits
        if nacc >= 4096:  # flush whole bytes so the accumulator stays small
            keep = nacc & 7
            out.append((acc >> keep).to_bytes(nacc >> 3, "big"))
            acc &= (1 << keep) - 1
            nacc = keep
    pad = -nacc & 7
    out.append((acc << pad).to_bytes((nacc + pad) >> 3, "big"))
    return b"".join(out)


def _pack_audit(audits: Sequence[tuple[float, ...] | None]) -> bytes:
    """The audit section of a frame whose records carry `audits` (one per record, None where
    a record has none, at least one not None); version 3 frames (chainframe.py) share it."""
    present = [(i, a) for i, a in enumerate(audits) if a is not None]
    for i, audit in present:
        if not isinstance(audit, (tuple, list)):
            raise _fail("field_type", f"record {i}: audit must be a tuple of floats")
    dim = len(present[0][1])
    if not 1 <= dim <= 65535:
        raise _fail("audit_dim", f"audit records must hold 1..65535 values, got {dim}")
    bitmap = bytearray((len(audits) + 7) // 8)
    values: list[float] = []
    for i, audit in present:
        if len(audit) != dim:
            raise _fail("audit_length", f"record {i}: audit of {len(audit)} values, D is {dim}")
        bitmap[i >> 3] |= 0x80 >> (i & 7)
        values.extend(audit)
    try:
        packed = struct.pack(f">{len(values)}f", *values)
    except (struct.error, OverflowError, TypeError) as exc:
        raise _fail("audit_value", f"audit values must be float32: {exc}") from exc
    return dim.to_bytes(2, "big") + bytes(bitmap) + packed


# --------------------------------------------------------------------------- decoding


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame strictly; WireError(reason=tag) on anything the format does not allow.

    A version 2 frame's CRC is checked before any field after the version is read, so a
    changed byte is rejected as "crc", never read as another bdSeq, seq or time."""
    data = bytes(data)
    if len(data) > MAX_FRAME_BYTES:
        raise _fail("too_large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    if len(data) < HEADER_SIZE_V1:
        raise _fail("truncated", f"header needs {HEADER_SIZE_V1} bytes, got {len(data)}")
    if data[:2] != MAGIC:
        raise _fail("magic", f"bad magic {data[:2]!r}")
    version = data[2]
    if version == 2:
        data, start, extension = _open_v2(data)
    elif version == 1:
        start, extension = HEADER_SIZE_V1, b""
    else:
        raise _fail("version", f"unknown version {version}")
    _, _, flags, model_ref, bd_seq, seq, base, period, count, L, K = _HEADER_V1.unpack_from(data)
    if flags & ~_KNOWN_FLAGS:
        raise _fail("flags", f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x}")
    if not 1 <= count <= MAX_RECORDS:
        raise _fail("n_records", f"n_records {count} not in 1..{MAX_RECORDS}")
    if L == 0:
        raise _fail("L_range", "L is 0")
    if K < 2:
        raise _fail("K_range", f"K is {K}")
    if flags & FLAG_IRREGULAR:
        times, pos = _read_times(data, start, count, base, period)
    else:
        if base + (count - 1) * period > _U64:
            raise _fail("time_range", "last record time exceeds 2**64-1")
        times, pos = [base + i * period for i in range(count)], start
    codes, pos = _read_codes(data, pos, count, L, K)
    audits: list[tuple[float, ...] | None] = [None] * count
    if flags & FLAG_AUDIT:
        pos = _read_audit(data, pos, audits)
    if pos != len(data):
        raise _fail("trailing", f"{len(data) - pos} bytes after the end of the frame")
    records = tuple(map(Record, times, codes, audits))
    historical = bool(flags & FLAG_HISTORICAL)
    return Frame(model_ref, bd_seq, seq, L, K, period, records, historical, version, extension)


def _open_v2(data: bytes) -> tuple[bytes, int, bytes]:
    """A version 2 frame checked up to its sections: (the frame without its CRC, where the
    sections start, the header extension)."""
    if len(data) < FRAME_OVERHEAD:
        raise _fail("truncated", f"a version 2 frame needs {FRAME_OVERHEAD} bytes, got {len(data)}")
    body = data[:-CRC_SIZE]
    if zlib.crc32(body) != int.from_bytes(data[-CRC_SIZE:]):
        raise _fail("crc", "the CRC-32 does not match the frame")
    codec, ext_len = _HEADER_TAIL.unpack_from(body, HEADER_SIZE_V1)
    if codec != CODEC_PACKED:
        raise _fail("codec", f"unknown codec {codec}")
    start = HEADER_SIZE + ext_len
    if start > len(body):
        raise _fail("extension", f"a header extension of {ext_len} bytes runs past the frame")
    return body, start, body[HEADER_SIZE:start]


def _read_times(data: bytes, pos: int, count: int, base: int, period: int) -> tuple[list[int], int]:
    end = len(data)
    times: list[int] = []
    t = base
    regular = True
    for i in range(count):
        if pos >= end:
            raise _fail("truncated", f"frame ends in the time of record {i}")
        byte = data[pos]
        pos += 1
        delta = byte & 0x7F
        shift = 7
        while byte & 0x80:
            if shift >= 70:
                raise _fail("varint_overflow", f"time delta of record {i} is over 10 bytes")
            if pos >= end:
                raise _fail("truncated", f"frame ends in the time of record {i}")
            byte = data[pos]
            pos += 1
            delta |= (byte & 0x7F) << shift
            shift += 7
            if byte == 0:
                raise _fail("varint_overlong", f"time delta of record {i} is not minimal")
        if delta > _U64:
            raise _fail("varint_overflow", f"time delta of record {i} exceeds 2**64-1")
        if i == 0 and delta != 0:
            raise _fail("first_delta", "the first time delta must be 0")
        regular = regular and (i == 0 or delta == period)
        t += delta
        if t > _U64:
            raise _fail("time_range", f"time of record {i} exceeds 2**64-1")
        times.append(t)
    if regular:
        raise _fail("needless_irregular", "FLAG_IRREGULAR set but every delta is period_ms")
    return times, pos


def _read_codes(
    data: bytes, pos: int, count: int, L: int, K: int
) -> tuple[list[tuple[int, ...]], int]:
    nnz_bits, index_bits = L.bit_length(), (K - 1).bit_length()
    nnz_mask, index_mask = (1 << nnz_bits) - 1, (1 << index_bits) - 1
    shifts = [tuple(range((n - 1) * index_bits, -1, -index_bits)) for n in range(L + 1)]
    max_bits = nnz_bits + L * index_bits
    chunk = max(64, (max_bits + 7) // 8)
    check_k = index_mask >= K  # some index values do not name a codeword
    end, start = len(data), pos
    buf = avail = 0  # `avail` unread bits at the bottom of `buf`, MSB first
    codes: list[tuple[int, ...]] = []
    append = codes.append
    for i in range(count):
        if avail < max_bits and pos < end:
            piece = data[pos : pos + chunk]
            pos += len(piece)
            buf = ((buf & ((1 << avail) - 1)) << (len(piece) << 3)) | int.from_bytes(piece)
            avail += len(piece) << 3
        if avail < nnz_bits:
            raise _fail("truncated", f"frame ends in the codes of record {i}")
        avail -= nnz_bits
        nnz = (buf >> avail) & nnz_mask
        if nnz == 0:
            append(())
            continue
        if nnz > L:
            raise _fail("nnz_gt_L", f"record {i}: nnz {nnz} > L={L}")
        need = nnz * index_bits
        if avail < need:
            raise _fail("truncated", f"frame ends in the codes of record {i}")
        avail -= need
        block = (buf >> avail) & ((1 << need) - 1)
        rec = tuple([(block >> s) & index_mask for s in shifts[nnz]])
        if nnz > 1 and list(rec) != sorted(rec):
            raise _fail("unsorted", f"record {i}: indices are not ascending")
        if check_k and rec[-1] >= K:
            raise _fail("index_ge_K", f"record {i}: index {rec[-1]} >= K={K}")
        append(rec)
    pad = avail & 7
    if (buf >> (avail - pad)) & ((1 << pad) - 1):
        raise _fail("padding", "padding bits after the codes are not 0")
    return codes, start + ((pos - start) - (avail >> 3))


def _read_audit(data: bytes, pos: int, audits: list[tuple[float, ...] | None]) -> int:
    count, end = len(audits), len(data)
    n_bitmap = (count + 7) // 8
    if pos + 2 + n_bitmap > end:
        raise _fail("truncated", "frame ends in the audit header")
    dim = int.from_bytes(data[pos : pos + 2])
    if dim == 0:
        raise _fail("audit_dim", "audit D is 0")
    bitmap = data[pos + 2 : pos + 2 + n_bitmap]
    pos += 2 + n_bitmap
    if count & 7 and bitmap[-1] & ((1 << (8 - (count & 7))) - 1):
        raise _fail("bitmap_padding", "audit bitmap bits past the last record are not 0")
    present = [i for i in range(count) if bitmap[i >> 3] & (0x80 >> (i & 7))]
    if not present:
        raise _fail("audit_empty", "FLAG_AUDIT set but no record has an audit")
    size = 4 * dim * len(present)
    if pos + size > end:
        raise _fail("truncated", "frame ends in the audit values")
    values = struct.unpack_from(f">{dim * len(present)}f", data, pos)
    for j, i in enumerate(present):
        audits[i] = values[j * dim : (j + 1) * dim]
    return pos + size


# --------------------------------------------------------------------------- sizes


def mqtt_publish_overhead(topic: str, payload_len: int, qos: int = 1) -> int:
    """Bytes an MQTT 3.1.1 PUBLISH adds to its payload: fixed header (1 byte + remaining
    length, 1-4 bytes), topic name (2 + UTF-8 length) and, when qos > 0, the packet id (2)."""
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
    if payload_len < 0:
        raise ValueError(f"payload_len must be >= 0, got {payload_len}")
    name = topic.encode("utf-8")
    if not 1 <= len(name) <= 65535 or any(c in topic for c in "+#\0"):
        raise ValueError(f"not a valid MQTT topic name: {topic!r}")
    variable = 2 + len(name) + (2 if qos else 0)
    remaining = variable + payload_len
    if remaining > _MQTT_MAX_REMAINING:
        raise ValueError(f"PUBLISH of {remaining} bytes exceeds the MQTT maximum")
    length_bytes = 1 + (remaining > 127) + (remaining > 16383) + (remaining > 2097151)
    return 1 + length_bytes + variable


def wire_bytes_per_measurement(
    codes: Sequence[tuple[int, ...]], L: int, K: int, period_ms: int, batch: int, topic: str
) -> float:
    """Mean bytes on the wire per measurement when `codes` (one tuple per measurement) go out
    as the agent publishes them: regular frames of `batch` records, QoS 1 PUBLISH to `topic`."""
    if not codes:
        raise ValueError("codes is empty")
    if not 1 <= batch <= MAX_RECORDS:
        raise ValueError(f"batch must be in 1..{MAX_RECORDS}, got {batch}")
    if not 0 <= period_ms <= _U32:
        raise ValueError(f"period_ms must be in 0..2**32-1, got {period_ms}")
    nnz_bits, index_bits = code_bits(L, K)
    total = 0
    for first in range(0, len(codes), batch):
        part = codes[first : first + batch]
        if max(map(len, part)) > L:
            raise ValueError(f"a measurement has more than L={L} codes")
        bits = nnz_bits * len(part) + index_bits * sum(map(len, part))
        size = FRAME_OVERHEAD + math.ceil(bits / 8)
        if size > MAX_FRAME_BYTES:
            raise ValueError(f"a frame of {batch} records exceeds {MAX_FRAME_BYTES} bytes")
        total += size + mqtt_publish_overhead(topic, size, qos=1)
    return total / len(codes)


def records_per_frame(
    interval_s: float, batch: int = AGENT_BATCH, max_delay_s: float = AGENT_MAX_BATCH_DELAY_S
) -> int:
    """Measurements in each frame of an agent that gets one every `interval_s` seconds: its
    first and those that arrive within `max_delay_s` after it (one due on the deadline itself
    counts in: the deadline starts when the first is taken, a moment after it was due), at
    most `batch`. At 1 Hz and the defaults that is two, as measured on the link."""
    if not interval_s > 0 or not max_delay_s > 0 or batch < 1:
        raise ValueError(
            f"need interval_s, max_delay_s > 0 and batch >= 1: {interval_s}, {max_delay_s}, {batch}"
        )
    return min(batch, math.floor(max_delay_s / interval_s + 1e-9) + 1)
