"""The cloud's decoder of temporal-codec payloads, compiled: `decode_payload` reads back what
`shared.temporalpayload.encode_payload` wrote, symbol for symbol, in machine code.

The symbols, their order and their contexts are those of `shared.temporalcodec` and
`shared.temporaltables`; the range decoder's arithmetic is `shared.rangecoder.RangeDecoder`'s
on 64-bit integers (every quantity fits: the code stays below 2**57, a state below 2**49,
checked before it is formed). Decoding in Python cost about a microsecond a symbol, twelve
symbols a measurement, so the cloud decoded 80,000 measurements a second per core; compiled
by numba it is the frame's parsing and numpy, not the symbols, that cost.

Every table of a codec goes into one flat array of starts and one of frequencies, each table
an offset and a size, so the compiled loop indexes plain int64 arrays. A hostile payload can
only pick symbols inside the tables it is read with: every index the loop forms is bounded by
construction (a symbol below its table's size, a context below its count of tables).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from ...shared.errors import WireError
from ...shared.rangecoder import MAX_OVERRUN, PRECISION, TOTAL, FrequencyTable
from ...shared.temporalcodec import MAX_UNITS, ChainState, TemporalCodec
from ...shared.temporalpayload import RAW_CHUNK, Decoded
from ...shared.temporaltables import (
    BEFORE_CLASSES,
    CLASSES,
    COUNTS,
    ESCAPE,
    LAST_CLASSES,
    MAX_GROUP,
    MOVE_CONTEXTS,
    OWN_CONTEXTS,
    RADIX,
    REACH,
)

__all__ = ["decode_payload"]

_TOP = 1 << 24
_KEY_MOVE = MOVE_CONTEXTS - COUNTS  # first "does this group move" context at a key
_KEY_OWN = OWN_CONTEXTS - 1

# Why the compiled loop stopped (its first return value); `detail` says which KPI or group.
_INVALID, _OVERRUN, _RANGE, _IDLE, _TRAILING, _STATE = -1, -2, -3, -4, -5, -6
_BAD_STATE = 1 << 62  # a state no int64 holds, as the loop sees it

# The table layout: mask (2), key (1), then per KPI its bits, per group its move tables, ...
_MASK, _KEY, _BITS = 0, 2, 3


# The codec as the compiled loop reads it: one int64 array, a header of `_FIELDS` and then the
# arrays they point to (one argument rather than sixteen: a call's cost grows with its
# arguments, and at one measurement a frame the call is most of the work).
_FIELDS = (
    "D", "G", "K", "L", "lossless", "move", "klass", "top", "uniform",
    "starts", "freqs", "offset", "size", "delta", "members", "words", "keys", "steps",
)  # fmt: skip
(
    _D, _G, _K_, _L_, _LOSSLESS, _MOVE, _CLASS, _TOPS, _UNIFORM,
    _STARTS, _FREQS, _OFFSET, _SIZE, _DELTA, _MEMBERS, _WORDS, _KEYS, _STEPS,
) = range(len(_FIELDS))  # fmt: skip


def _blob(codec: TemporalCodec) -> np.ndarray:
    """Every table of `codec` in one flat run of starts and one of frequencies (table t at
    ``offset[t]``, ``size[t]`` symbols; ids: the two mask tables, the key table, then per KPI
    its two bit tables, per group its move tables, per KPI its digit, size-class and top-bit
    tables, and the raw-bit tables), with the groups, key words and steps."""
    tables: list[FrequencyTable] = [*codec.mask_tables, codec.key_table]
    for pair in codec.bit_tables:
        tables.extend(pair)
    header = {"D": codec.D, "G": len(codec.groups), "K": codec.K, "L": codec.L}
    header["lossless"] = int(codec.lossless)
    header["move"] = len(tables)
    for row in codec.move_tables:
        tables.extend(row)
    delta = []
    for row in codec.delta_tables:
        delta.append(len(tables))
        tables.extend(row)
    header["klass"] = len(tables)
    for row in codec.class_tables:
        tables.extend(row)
    header["top"] = len(tables)
    for row in codec.top_tables:
        tables.extend(row)
    header["uniform"] = len(tables)
    tables.extend(FrequencyTable.uniform(1 << k) for k in range(RAW_CHUNK + 1))
    sizes = np.array([t.size for t in tables], dtype=np.int64)
    members = np.full((len(codec.groups), MAX_GROUP), -1, dtype=np.int64)
    for g, group in enumerate(codec.groups):
        members[g, : len(group)] = group
    parts = {
        "starts": np.fromiter((s for t in tables for s in t.starts), dtype=np.int64),
        "freqs": np.fromiter((f for t in tables for f in t.freqs), dtype=np.int64),
        "offset": np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        "size": sizes,
        "delta": np.array(delta),
        "members": members.ravel(),
        "words": np.array(codec.offsets[:-1]),
        "keys": np.asarray(codec.keys).ravel(),
        "steps": np.asarray(codec.steps),
    }
    at = len(_FIELDS)
    for name, part in parts.items():
        header[name] = at
        at += len(part)
    head = np.array([header[name] for name in _FIELDS], dtype=np.int64)
    return np.concatenate([head, *parts.values()]).astype(np.int64)


@dataclass(frozen=True)
class _Compiled:
    blob: np.ndarray  # int64, see `_blob`
    reals: np.ndarray  # [3, D] float64: origin, unit, and the span in [2, 0]


# Each codec's tables as the compiled decoder reads them, for the KEEP_TABLES codecs flattened
# most recently (a compiled TemporalCodec takes no weak reference, so they are held here).
KEEP_TABLES = 64
_COMPILED: dict[TemporalCodec, _Compiled] = {}
_COMPILING = threading.Lock()


def _compiled(codec: TemporalCodec) -> _Compiled:
    found = _COMPILED.get(codec)
    if found is None:
        reals = np.zeros((3, codec.D))
        reals[0], reals[1], reals[2, 0] = codec.origin, codec.unit, codec.span
        found = _Compiled(_blob(codec), reals)
        with _COMPILING:
            while len(_COMPILED) >= KEEP_TABLES:
                del _COMPILED[next(iter(_COMPILED))]
            _COMPILED[codec] = found
    return found


def decode_payload(
    codec: TemporalCodec, payload: bytes, keys: Sequence[bool], state: ChainState | None
) -> Decoded:
    """The cloud's side of `encode_payload`: len(keys) measurements from `payload`,
    continuing `state` (None: the frame starts with a key). Raises WireError on a payload
    that does not decode to exactly these measurements, ValueError on a state that is not
    this codec's."""
    n, D = len(keys), codec.D
    if state is None and n and not keys[0]:
        raise WireError("a frame without a predecessor must start with a key", reason="no_key")
    compiled = _compiled(codec)
    chain = _start(codec, state)
    recon = np.empty((n, D))
    out = np.empty((n, len(codec.groups) + 2), dtype=np.int64)  # the codes, then their count
    data = np.frombuffer(bytes(payload) + bytes(MAX_OVERRUN), dtype=np.uint8)
    flags = np.array(keys, dtype=np.bool_).reshape(n)
    status, detail, escapes = _decode(data, len(payload), flags, compiled.blob, compiled.reals,
                                      chain, recon, out)  # fmt: skip
    if status < 0:
        raise _error(status, detail)
    rows = out.tolist()
    codes = tuple(tuple(row[: row[-1]]) for row in rows)
    units, mask, moved, moved2 = chain.tolist()
    after = ChainState(tuple(units), tuple(m == 1 for m in mask), (tuple(moved), tuple(moved2)))
    return Decoded(recon, codes, after, escapes)


def _start(codec: TemporalCodec, state: ChainState | None) -> np.ndarray:
    """The state a frame continues as rows units, mask, moves a measurement ago and two ago,
    the array the compiled loop updates in place."""
    D = codec.D
    if state is None:
        chain = np.zeros((4, D), dtype=np.int64)
        chain[1] = 1
        return chain
    if len(state.units) != D or len(state.mask) != D:
        raise ValueError(f"the chain state must hold {D} KPIs")
    moved, moved2 = state.history(D)
    try:  # its bounds are checked by the compiled loop (_STATE)
        return np.array([state.units, state.mask, moved, moved2], dtype=np.int64)
    except OverflowError:
        return np.full((4, D), _BAD_STATE, dtype=np.int64)


def _error(status: int, detail: int) -> WireError | ValueError:
    if status == _STATE:
        return ValueError(f"a chain state lies within ±{MAX_UNITS} units")
    if status == _INVALID:
        return WireError("range-coded payload holds a value no encoder writes", "payload_invalid")
    if status == _OVERRUN:
        return WireError("range-coded payload ends too early", "payload_overrun")
    if status == _RANGE:
        return WireError(f"KPI {detail} moves out of range", reason="payload_word")
    if status == _IDLE:
        return WireError(f"group {detail} is sent as moving but does not move", "payload_word")
    return WireError(
        f"range-coded payload has {detail} byte(s) after its last symbol", "payload_trailing"
    )


# ---------------------------------------------------------------------- the compiled loop
# `st` is the range decoder: [code, range, position in data]. A symbol below zero is an error.


@njit(cache=True, nogil=True)
def _symbol(st, data, starts, freqs, offset, size, table):  # type: ignore[no-untyped-def]
    n = size[table]
    if n == 1:
        return 0
    base = offset[table]
    r = st[1] >> PRECISION
    code = st[0]
    value = code // r
    if value >= TOTAL:
        return _INVALID
    lo, hi = 0, n  # the last symbol whose start is <= value
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if starts[base + mid] <= value:
            lo = mid
        else:
            hi = mid
    code -= r * starts[base + lo]
    rng = r * freqs[base + lo]
    pos = st[2]
    while rng < _TOP:
        if pos == len(data):
            return _OVERRUN
        code = (code << 8) | data[pos]
        pos += 1
        rng <<= 8
    st[0], st[1], st[2] = code, rng, pos
    return lo


@njit(cache=True, nogil=True)
def _size_class(move, cap):  # type: ignore[no-untyped-def]
    """min(|move|.bit_length(), cap)."""
    v, c = abs(move), 0
    while v and c < cap:
        v >>= 1
        c += 1
    return c


@njit(cache=True, nogil=True)
def _escape(st, data, starts, freqs, offset, size, klass, top):  # type: ignore[no-untyped-def]
    """An escaped move (see `shared.temporalpayload._put_escape`); 0 on an error (in st[3])."""
    width = _symbol(st, data, starts, freqs, offset, size, klass)
    if width < 0:
        st[3] = width
        return 0
    width += 1
    m, low = 1, 0
    if width >= 2:
        bit = _symbol(st, data, starts, freqs, offset, size, top + width - 1)
        if bit < 0:
            st[3] = bit
            return 0
        m, low = 2 | bit, width - 2
    raw, bits = 0, low + 1
    while bits > 0:
        take = min(bits, RAW_CHUNK)
        bits -= take
        chunk = _symbol(st, data, starts, freqs, offset, size, st[4] + take)
        if chunk < 0:
            st[3] = chunk
            return 0
        raw = (raw << take) | chunk
    n = ((m << low) | (raw & ((1 << low) - 1))) + REACH
    return -n if raw >> low else n


@njit(cache=True, nogil=True)
def _decode(data, size_bytes, keys, blob, reals, chain, recon, out):  # type: ignore[no-untyped-def]
    """Decodes len(keys) measurements into `recon` and `out` (each row's codes, then their
    count), continuing `chain` (see `_start`) in place. Returns (status, detail, escape
    words); status < 0 is an error."""
    D, G, K, L, lossless = blob[_D], blob[_G], blob[_K_], blob[_L_], blob[_LOSSLESS] == 1
    move, klass, top = blob[_MOVE], blob[_CLASS], blob[_TOPS]
    starts, freqs = blob[blob[_STARTS] : blob[_FREQS]], blob[blob[_FREQS] : blob[_OFFSET]]
    offset, size = blob[blob[_OFFSET] : blob[_SIZE]], blob[blob[_SIZE] : blob[_DELTA]]
    delta = blob[blob[_DELTA] : blob[_MEMBERS]]
    members = blob[blob[_MEMBERS] : blob[_WORDS]].reshape((G, MAX_GROUP))
    word_offsets = blob[blob[_WORDS] : blob[_KEYS]]
    key_ids = blob[blob[_KEYS] : blob[_STEPS]].reshape((-1, D))
    steps = blob[blob[_STEPS] :]
    origin, unit, span = reals[0], reals[1], reals[2, 0]
    units, mask, moved, moved2 = chain[0], chain[1], chain[2], chain[3]
    for j in range(D):
        if abs(units[j]) > MAX_UNITS or abs(moved[j]) > 2 * MAX_UNITS:
            return _STATE, j, 0
        if abs(moved2[j]) > 2 * MAX_UNITS or not 0 <= mask[j] <= 1:
            return _STATE, j, 0
    st = np.zeros(5, dtype=np.int64)
    st[1], st[4] = (1 << 32) - 1, blob[_UNIFORM]
    for i in range(4):
        st[0] = (st[0] << 8) | data[i]
    st[2] = 4
    before = np.empty(D, dtype=np.int64)
    q = np.zeros(D, dtype=np.int64)
    escapes = 0
    for t in range(keys.shape[0]):
        key = keys[t]
        everything = 1
        for j in range(D):
            before[j] = 1 if key else mask[j]
            everything &= before[j]
        changed = _symbol(st, data, starts, freqs, offset, size, _MASK + everything)
        if changed < 0:
            return changed, 0, 0
        for j in range(D):
            if changed:
                bit = _symbol(st, data, starts, freqs, offset, size, _BITS + 2 * j + before[j])
                if bit < 0:
                    return bit, 0, 0
                mask[j] = bit
            else:
                mask[j] = before[j]
        count = 0
        if key:
            kw = _symbol(st, data, starts, freqs, offset, size, _KEY)
            if kw < 0:
                return kw, 0, 0
            for j in range(D):
                units[j] = key_ids[kw, j]
                moved[j] = 0
            out[t, 0] = K + kw
            count = 1
        cap = D + 1 if lossless else (L - 1 if key else L)
        q[:] = 0
        words = 0
        for g in range(G):
            if words >= cap:
                break
            last = -1
            for i in range(MAX_GROUP):
                j = members[g, i]
                if j >= 0 and mask[j]:
                    last = j
            if last < 0:
                continue
            c = min(words, COUNTS - 1)
            if key:
                ctx = _KEY_MOVE + c
            else:
                was, was2 = 0, 0
                for i in range(MAX_GROUP):
                    j = members[g, i]
                    if j >= 0:
                        was = was | (moved[j] != 0)
                        was2 = was2 | (moved2[j] != 0)
                ctx = (2 * was + was2) * COUNTS + c
            moves = _symbol(st, data, starts, freqs, offset, size, move + g * MOVE_CONTEXTS + ctx)
            if moves < 0:
                return moves, 0, 0
            if not moves:
                continue
            signs, scale, word, power, moving = 0, 1, word_offsets[g], 1, False
            for i in range(MAX_GROUP):
                j = members[g, i]
                if j < 0:
                    break
                digit, sign = REACH, 0
                if mask[j]:
                    own = _KEY_OWN
                    if not key:  # `own_context`: the size classes of its last two moves
                        last_class = _size_class(moved[j], LAST_CLASSES - 1)
                        own = last_class * BEFORE_CLASSES + _size_class(
                            moved2[j], BEFORE_CLASSES - 1
                        )
                    forced = 1 if j == last and not moving else 0
                    ctx = delta[j] + 2 * (own * scale + signs) + forced
                    digit = _symbol(st, data, starts, freqs, offset, size, ctx)
                    if digit < 0:
                        return digit, 0, 0
                    if digit == ESCAPE:
                        st[3] = 0
                        n = _escape(
                            st, data, starts, freqs, offset, size,
                            klass + j * OWN_CONTEXTS + own, top + j * CLASSES,
                        )  # fmt: skip
                        if st[3] < 0:
                            return st[3], 0, 0
                    else:
                        n = digit - REACH
                    q[j] = n
                    sign = (n > 0) - (n < 0)
                    moving = moving or n != 0
                signs, scale = signs * 3 + sign + 1, scale * 3
                word += digit * power
                power *= RADIX
            if not moving:
                return _IDLE, g, 0
            out[t, count] = word
            count += 1
            words += 1
        for j in range(D):
            if q[j]:
                if abs(q[j]) > 2 * MAX_UNITS // steps[j]:
                    return _RANGE, j, 0
                units[j] += q[j] * steps[j]
                if abs(units[j]) > MAX_UNITS:
                    return _RANGE, j, 0
            moved2[j] = moved[j]
            moved[j] = q[j]
            value = min(max(origin[j] + units[j] * unit[j], -span), span)
            recon[t, j] = value if mask[j] else np.nan
        out[t, out.shape[1] - 1] = count
        escapes += max(words - (L - 1 if key else L), 0)
    overrun = max(0, st[2] - size_bytes)
    if overrun < 3:
        return _TRAILING, 3 - overrun, 0
    return 0, 0, escapes
