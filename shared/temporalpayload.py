"""The temporal codec's payload: `encode_payload` (the edge's closed loop), one range coder a
frame; the symbols and their order are in `shared.temporalcodec`'s docstring, the contexts in
`shared.temporaltables`. The cloud reads payloads back with the compiled
`cloud.codec.payloaddecoder.decode_payload`. `table_counts` and `fitted` let the cloud fit the
tables on what the encoder itself sends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from .rangecoder import FrequencyTable, RangeEncoder
from .temporalcodec import ChainState, TemporalCodec, move_digit
from .temporaltables import (
    CLASSES,
    ESCAPE,
    MOVE_CONTEXTS,
    OWN_CONTEXTS,
    RADIX,
    REACH,
    delta_contexts,
    move_context,
    own_context,
)

__all__ = [
    "Decoded",
    "PayloadEncoder",
    "encode_payload",
    "fitted",
    "payload_bits",
    "table_counts",
]


class Decoded:
    """A payload decoded: the reconstruction (normalised float64 [n, D], NaN where the KPI
    was missing), the codes per measurement (key word first as ``K + kw`` at a key
    measurement, then its words), how many of them were escape words (lossless codecs only)
    and the state the next frame continues from.

    `recon` may be given as a function that makes it: the edge's encoder keeps only the state,
    and at one measurement a frame building an array it never reads was a tenth of its time."""

    __slots__ = ("_recon", "codes", "escapes", "state")

    def __init__(
        self,
        recon: np.ndarray | Callable[[], np.ndarray],
        codes: tuple[tuple[int, ...], ...],
        state: ChainState,
        escapes: int = 0,
    ) -> None:
        self._recon = recon
        self.codes, self.state, self.escapes = codes, state, escapes

    @property
    def recon(self) -> np.ndarray:
        if callable(self._recon):
            self._recon = self._recon()
        return self._recon


RAW_CHUNK = 15  # raw bits coded as one symbol at most
_UNIFORM = tuple(FrequencyTable.uniform(1 << k) for k in range(RAW_CHUNK + 1))  # k raw bits


class _Sink:
    """Where a measurement's symbols go: a range encoder, or a counter (`counts`) when the
    cloud fits the tables. `put(table id, table, symbol)`; the ids are `table_counts`' keys."""

    def __init__(self, counts: dict[tuple[int, ...], np.ndarray] | None):
        self.counts = counts
        self.encoder = RangeEncoder()
        self.put: Callable[[tuple[int, ...], FrequencyTable, int], None] = (
            self._count if counts is not None else self._code
        )

    def _code(self, tid: tuple[int, ...], table: FrequencyTable, symbol: int) -> None:
        self.encoder.encode(symbol, table)

    def _count(self, tid: tuple[int, ...], table: FrequencyTable, symbol: int) -> None:
        assert self.counts is not None
        if tid:
            self.counts[tid][symbol] += 1


# `own_context` of the moves a KPI makes most, looked up (-1: not here, computed)
_OWN = {(a, b): own_context(False, a, b) for a in range(-16, 17) for b in range(-16, 17)}
_RAW: tuple[int, ...] = ()  # table id of a raw bit (never counted)


def encode_payload(
    codec: TemporalCodec,
    x: np.ndarray,
    keys: Sequence[bool],
    state: ChainState | None,
    counts: dict[tuple[int, ...], np.ndarray] | None = None,
) -> tuple[bytes, Decoded]:
    """Code measurements x (raw units, [n, D], NaN missing) closed loop from `state` (None:
    the first measurement must be a key); `keys[i]` marks key measurements. Returns the
    payload and what the decoder will make of it (the edge's copy of the cloud's state).
    With `counts` (table id -> symbol counts), symbols are counted instead (tables unfit).
    The same as a `PayloadEncoder` given the measurements one by one, then finished."""
    z = codec.normalise(x)
    seen = np.isfinite(z)
    z = np.where(seen, z, 0.0)
    if len(keys) != len(z):
        raise ValueError(f"{len(z)} measurements but {len(keys)} key flags")
    encoder = PayloadEncoder(codec, state, counts)
    observed = seen.tolist()  # per measurement, its mask as Python bools
    rows = z.tolist()
    for t in range(len(z)):
        encoder.code(rows[t], observed[t], keys[t], z[t], seen[t])
    return encoder.finish()


class PayloadEncoder:
    """The closed loop one measurement at a time, so an edge codes each measurement as it
    comes and a frame is ready when it is due: `add` codes one (raw units, [D], NaN
    missing), `finish` ends the payload. What it makes is `encode_payload`'s, byte for byte
    (normalising a row alone or among others gives the same floats)."""

    def __init__(
        self,
        codec: TemporalCodec,
        state: ChainState | None,
        counts: dict[tuple[int, ...], np.ndarray] | None = None,
    ) -> None:
        self.codec = codec
        self.units, self.last, (self.moved, self.moved2) = _start(codec, state)
        self.keyed = state is not None  # a first measurement without a state must be a key
        self.sink = _Sink(counts)
        self.states: list[list[int]] = []
        self.masks: list[list[bool]] = []
        self.codes: list[tuple[int, ...]] = []
        self.escapes = 0
        self.done = False

    @property
    def count(self) -> int:
        """Measurements coded so far."""
        return len(self.codes)

    def add(self, x: np.ndarray, key: bool) -> None:
        """Code measurement `x` (raw units, [D], NaN missing); `key`: a key measurement.
        ValueError for a badly shaped `x`, a first measurement without a state that is not a
        key, or a move beyond what a payload carries."""
        row, observed = self.codec.normalise_row(np.asarray(x, dtype=np.float64).tolist())
        self.code(row, observed, key)

    def code(
        self,
        row: list[float],
        observed: list[bool],
        key: bool,
        z: np.ndarray | None = None,
        seen: np.ndarray | None = None,
    ) -> None:
        """Code one normalised measurement: `row` its values (0 where missing), `observed`
        its mask; `z` and `seen` the same as arrays, if they are at hand (a key's word needs
        them)."""
        if self.done:
            raise ValueError("the payload is finished")
        if not key and not self.keyed:
            raise ValueError("a frame without a predecessor starts with a key measurement")
        codec, put = self.codec, self.sink.put
        moved, moved2, units = self.moved, self.moved2, self.units
        kw = -1
        if key:
            z = np.array(row) if z is None else z
            kw = codec.key_word(z, np.array(observed) if seen is None else seen)
            units, moved = list(codec.key_ids[kw]), [0] * codec.D
        if kw >= 0:
            own = [own_context(True, 0, 0)] * codec.D
        else:
            own = [_OWN.get(pair, -1) for pair in zip(moved, moved2, strict=True)]
            if -1 in own:
                own = [own_context(False, a, b) for a, b in zip(moved, moved2, strict=True)]
        q = _choose(codec, row, observed, units, (moved, moved2), own, kw >= 0)
        _put_mask(codec, put, observed, self.last, kw >= 0)
        if kw >= 0:
            put((2,), codec.key_table, kw)
        words, extra = _put_moves(codec, put, q, observed, (moved, moved2), own, kw >= 0)
        for j, step in enumerate(q):
            units[j] += step * codec.steps_i[j]
        self.moved2, self.moved, self.last, self.units = moved, q, observed, units
        self.keyed = True
        self.states.append(list(units))
        self.masks.append(observed)
        self.codes.append(((codec.K + kw,) if kw >= 0 else ()) + tuple(words))
        self.escapes += extra

    def finish(self) -> tuple[bytes, Decoded]:
        """The payload (the range coder ended) and what the decoder will make of it."""
        if self.done:
            raise ValueError("the payload is finished")
        self.done = True
        payload = b"" if self.sink.counts is not None else self.sink.encoder.finish()
        decoded = _decoded(
            self.codec, self.states, self.masks, self.codes, self.units, self.last,
            (self.moved, self.moved2), self.escapes,
        )  # fmt: skip
        return payload, decoded


def _decoded(
    codec: TemporalCodec,
    states: list[list[int]],
    masks: list[list[bool]],
    codes: list[tuple[int, ...]],
    units: list[int],
    mask: list[bool],
    moves: tuple[list[int], list[int]],
    escapes: int,
) -> Decoded:
    n, D = len(states), codec.D

    def recon() -> np.ndarray:
        seen = np.array(masks, dtype=bool).reshape(n, D)
        values = codec.value(np.array(states, dtype=np.int64).reshape(n, D))
        return np.where(seen, values, np.nan)

    state = ChainState(tuple(units), tuple(mask), (tuple(moves[0]), tuple(moves[1])))
    return Decoded(recon, tuple(codes), state, escapes)


def _start(
    codec: TemporalCodec, state: ChainState | None
) -> tuple[list[int], list[bool], tuple[list[int], list[int]]]:
    D = codec.D
    if state is None:
        return [0] * D, [True] * D, ([0] * D, [0] * D)
    if len(state.units) != D or len(state.mask) != D:
        raise ValueError(f"the chain state must hold {D} KPIs")
    return list(state.units), list(state.mask), state.history(D)


def _choose(
    codec: TemporalCodec,
    z: list[float],
    seen: list[bool],
    units: list[int],
    history: tuple[list[int], list[int]],
    own: list[int],
    key: bool,
) -> list[int]:
    """Each KPI's move q (0 where missing or not sent), the model's MAP choice: per group, of
    the moves its members' nearest lattice moves allow (each member moving or not), the one
    whose weighted squared-error gain less ``rate_cost`` per bit it costs is best, if that
    beats not moving; then the L (L - 1 after a key word) best groups. Lossless: every move."""
    span, q = codec.span, [0] * codec.D
    gain = [0.0] * codec.D
    origin, unit, steps, weight = codec.origin_f, codec.unit_f, codec.steps_i, codec.weight_f
    for j in range(codec.D):
        if not seen[j]:
            continue
        u = unit[j]
        v = origin[j] + units[j] * u  # clamped to ±span (as min(max(v, -span), span))
        v = span if v > span else -span if v < -span else v
        r = z[j] - v
        n = round(r / (steps[j] * u))
        if n:
            after = origin[j] + (units[j] + n * steps[j]) * u
            after = span if after > span else -span if after < -span else after
            gain[j] = weight[j] * (r * r - (z[j] - after) ** 2)
            q[j] = n
    if codec.lossless:
        return q
    lam = codec.rate_cost
    picks: list[tuple[float, int, list[int]]] = []
    moved, moved2 = history
    for g, members in enumerate(codec.groups):
        places = [i for i, j in enumerate(members) if q[j]]  # members whose nearest move is not 0
        if not places:
            continue
        costs = codec.move_costs[g][move_context(key, members, moved, moved2, len(picks))]
        last = _last_observed(members, seen)
        best, pick = -lam * costs[0], None
        for subset in range(1, 1 << len(places)):
            chosen = [0] * len(members)
            for b, i in enumerate(places):
                if subset >> b & 1:
                    chosen[i] = q[members[i]]
            bits = costs[1] + _word_bits(codec, members, chosen, seen, own, last)
            value = 0.0
            for j, c in zip(members, chosen, strict=True):
                if c:
                    value += gain[j]
            value -= lam * bits
            if value > best:
                best, pick = value, chosen
        if pick is not None:
            picks.append((best + lam * costs[0], g, pick))
    picks.sort(reverse=True)
    q = [0] * codec.D
    for _, g, pick in picks[: codec.word_cap(key)]:
        for j, n in zip(codec.groups[g], pick, strict=True):
            q[j] = n
    return q


def _word_bits(
    codec: TemporalCodec,
    members: tuple[int, ...],
    moves: list[int],
    seen: list[bool],
    own: list[int],
    last: int,
) -> float:
    """What a group's word costs in bits after its move flag (the encoder's rate estimate);
    the contexts are `_put_word`'s (`last`: the group's last observed member)."""
    bits, signs, scale, moving = 0.0, 0, 1, False
    for j, n in zip(members, moves, strict=True):
        sign = 0
        if seen[j]:
            digit = move_digit(n)
            ctx = 2 * (own[j] * scale + signs) + (j == last and not moving)
            bits += codec.delta_costs[j][ctx][digit]
            if digit == ESCAPE:
                width = (abs(n) - REACH).bit_length()
                bits += codec.class_costs[j][own[j]][width - 1] + width
            sign = (n > 0) - (n < 0)
            moving = moving or n != 0
        signs, scale = signs * 3 + sign + 1, scale * 3
    return bits


def _last_observed(members: tuple[int, ...], seen: list[bool]) -> int:
    """The group's last observed member (the one that must move when the others do not);
    -1 when none is observed."""
    last = -1
    for j in members:
        if seen[j]:
            last = j
    return last


def _put_mask(
    codec: TemporalCodec, put: Callable[..., None], seen: list[bool], last: list[bool], key: bool
) -> None:
    before = [True] * codec.D if key else last
    changed = seen != before
    ctx = int(all(before))
    put((0, ctx), codec.mask_tables[ctx], int(changed))
    if changed:
        for j, bit in enumerate(seen):
            prev = int(before[j])
            put((1, j, prev), codec.bit_tables[j][prev], int(bit))


def _put_moves(
    codec: TemporalCodec,
    put: Callable[..., None],
    q: list[int],
    seen: list[bool],
    history: tuple[list[int], list[int]],
    own: list[int],
    key: bool,
) -> tuple[list[int], int]:
    """The words of one measurement (moves q per KPI) as symbols; their ids and how many
    were escape words."""
    cap = codec.D + 1 if codec.lossless else codec.word_cap(key)
    moved, moved2 = history
    words: list[int] = []
    for g, members in enumerate(codec.groups):
        if len(words) >= cap:
            break
        last = _last_observed(members, seen)
        if last < 0:
            continue
        moves = False
        for j in members:
            if q[j]:
                moves = True
        ctx = move_context(key, members, moved, moved2, len(words))
        put((3, g, ctx), codec.move_tables[g][ctx], int(moves))
        if moves:
            words.append(_put_word(codec, put, g, q, seen, own, last))
    return words, max(len(words) - codec.word_cap(key), 0)


def _put_word(
    codec: TemporalCodec,
    put: Callable[..., None],
    g: int,
    q: list[int],
    seen: list[bool],
    own: list[int],
    last: int,
) -> int:
    """Group g's moves as one digit per observed member (an escape's size and bits after its
    digit); the word id, whose digit for an unobserved member is REACH (no move)."""
    word, power, signs, scale, moving = codec.offsets[g], 1, 0, 1, False
    for j in codec.groups[g]:
        n, sign, digit = q[j], 0, REACH
        if seen[j]:
            digit = move_digit(n)
            ctx = 2 * (own[j] * scale + signs) + (j == last and not moving)
            put((4, j, ctx), codec.delta_tables[j][ctx], digit)
            if digit == ESCAPE:
                _put_escape(put, codec, j, own[j], n)
            sign = (n > 0) - (n < 0)
            moving = moving or n != 0
        signs, scale = signs * 3 + sign + 1, scale * 3
        word += digit * power
        power *= RADIX
    return word


def _put_escape(put: Callable[..., None], codec: TemporalCodec, j: int, own: int, n: int) -> None:
    """KPI j's escaped move n: the size class c of m = |n| - REACH (``2**(c-1) <= m < 2**c``)
    given its history `own`, the bit of m below its leading one given c, then its sign and
    the c - 2 bits below that, raw (`_put_raw`)."""
    m = abs(n) - REACH
    width = m.bit_length()
    if width > CLASSES:
        raise ValueError(f"a move of {n} steps is beyond what a payload carries")
    put((5, j, own), codec.class_tables[j][own], width - 1)
    if width >= 2:
        put((6, j, width - 1), codec.top_tables[j][width - 1], (m >> (width - 2)) & 1)
    low = width - 2 if width >= 2 else 0
    _put_raw(put, (int(n < 0) << low) | (m & ((1 << low) - 1)), low + 1)


def _put_raw(put: Callable[..., None], value: int, bits: int) -> None:
    """`bits` raw bits of `value`, most significant first, up to RAW_CHUNK a symbol."""
    while bits > 0:
        take = min(bits, RAW_CHUNK)
        bits -= take
        put(_RAW, _UNIFORM[take], (value >> bits) & ((1 << take) - 1))


def payload_bits(payload: bytes) -> int:
    """Bits a payload costs as sent."""
    return 8 * len(payload)


def table_counts(codec: TemporalCodec) -> dict[tuple[int, ...], np.ndarray]:
    """Zeroed symbol counts for every table id of `codec` (see `encode_payload`)."""
    counts: dict[tuple[int, ...], np.ndarray] = {
        (0, 0): np.zeros(2),
        (0, 1): np.zeros(2),
        (2,): np.zeros(len(codec.keys)),
    }
    for j in range(codec.D):
        counts[(1, j, 0)], counts[(1, j, 1)] = np.zeros(2), np.zeros(2)
        for ctx in range(delta_contexts(codec.position[j])):
            counts[(4, j, ctx)] = np.zeros(RADIX)
        for ctx in range(OWN_CONTEXTS):
            counts[(5, j, ctx)] = np.zeros(CLASSES)
        for c in range(CLASSES):
            counts[(6, j, c)] = np.zeros(2)
    for g in range(len(codec.groups)):
        for ctx in range(MOVE_CONTEXTS):
            counts[(3, g, ctx)] = np.zeros(2)
    return counts


def fitted(codec: TemporalCodec, counts: dict[tuple[int, ...], np.ndarray]) -> TemporalCodec:
    """`codec` with every table fitted on `counts` (add-one smoothing)."""

    def fit(tid: tuple[int, ...]) -> FrequencyTable:
        return FrequencyTable.from_counts(counts[tid])

    D = codec.D
    return replace(
        codec,
        key_table=fit((2,)),
        mask_tables=(fit((0, 0)), fit((0, 1))),
        bit_tables=tuple((fit((1, j, 0)), fit((1, j, 1))) for j in range(D)),
        move_tables=tuple(
            tuple(fit((3, g, c)) for c in range(MOVE_CONTEXTS)) for g in range(len(codec.groups))
        ),
        delta_tables=tuple(
            tuple(fit((4, j, c)) for c in range(delta_contexts(codec.position[j])))
            for j in range(D)
        ),
        class_tables=tuple(tuple(fit((5, j, c)) for c in range(OWN_CONTEXTS)) for j in range(D)),
        top_tables=tuple(tuple(fit((6, j, c)) for c in range(CLASSES)) for j in range(D)),
    )
