"""The temporal codec as it ships: each measurement coded closed loop against the previous decoded
one as at most L lattice words, and the context-coded payload both ends read. numpy and stdlib
only, so the edge runs exactly what the cloud decodes.

A `TemporalCodec` is everything a trained model leaves (`cloud.codec.shipping` fits it, the
signed bundle carries it as JSON, `TemporalCodec.from_json` checks every field):

- normalisation per KPI: ``z = clip((f(x) - mean) / std, -clip, clip)``, f = log1p where `log`;
- the decoder's state: one integer per KPI, the value ``origin + units * unit`` (normalised
  units), reconstructed clamped to ±span. A KPI with a native grid (dBm, CQI) has its grid
  step as `unit`, so it decodes to values it can take; edge and cloud keep only integers, so
  they agree bit for bit whatever their floating point;
- the lattice: KPI j moves by ``q * steps[j]`` units, q any nonzero integer. The KPIs fall into
  `groups` of one to three that move together (RSRP with RSSI, the two bitrates), and a
  **word** is one group's joint move: at most L words per measurement, so a second in which
  six KPIs move in three groups still fits L = 3;
- key words: whole-state starts (``keys``: [KW, D] integers) for key measurements, which need no
  context; a key word counts as one of the L codes;
- `lossless`: every move is sent, and words past the L-th are escape words (counted), so grid
  KPIs whose step is their grid's come back exactly.

The encoder is the model's MAP choice: every group's nearest lattice move, the L whose weighted
squared-error gain is largest kept (L - 1 after a key word). The symbols of a measurement, in
order (`shared.temporaltables` has the contexts and table ids):

1. whether its observed-KPI mask differs from the previous measurement's (a key measurement's
   from "all observed"), then each KPI's observed bit given its previous one;
2. its key word (key measurements only);
3. per group with an observed KPI, while fewer than L words are sent (all groups when
   lossless): whether it moves, given whether it moved in the last two measurements and how
   many groups have moved so far; if it moves, each observed member's q given its own last two
   moves and the signs of the members before it: ``q + 7`` for |q| <= 7, else an escape digit
   followed by the size class of |q| - 7 (given the KPI's last two moves), its sign and its
   low bits.

One range coder codes a frame's measurements and ends in at most one byte. A key measurement
resets the state, the mask and the move history, so decoding can resume at any key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import ModelMismatchError, WireError
from .rangecoder import PRECISION, FrequencyTable, RangeDecoder, RangeEncoder
from .temporaltables import (
    CLASSES,
    ESCAPE,
    MAX_GROUP,
    MOVE_CONTEXTS,
    OWN_CONTEXTS,
    RADIX,
    REACH,
    delta_context,
    delta_contexts,
    move_context,
    own_context,
)

__all__ = [
    "CODEC_FORMAT",
    "ChainState",
    "Decoded",
    "TemporalCodec",
    "decode_payload",
    "encode_payload",
    "fitted",
    "payload_bits",
    "table_counts",
    "uniform_tables",
]

CODEC_FORMAT = "sparsetel-temporal-2"
MAX_D = 1024
MAX_UNITS = 1 << 48  # a state beyond this many units is a hostile payload's


@dataclass(frozen=True)
class ChainState:
    """The decoder state a frame leaves to its successor: the integer state per KPI, the last
    measurement's observed-KPI mask and each KPI's moves (q) in the last two measurements.
    Plain ints and bools, so a store can keep it."""

    units: tuple[int, ...]
    mask: tuple[bool, ...]
    moves: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def history(self, D: int) -> tuple[list[int], list[int]]:
        """The moves of the last and the second-last measurement (zeros where not kept)."""
        last, before = self.moves
        return (list(last) if last else [0] * D), (list(before) if before else [0] * D)

    def to_json(self) -> str:
        return json.dumps(
            {
                "units": list(self.units),
                "mask": [int(m) for m in self.mask],
                "moves": [list(m) for m in self.moves],
            }
        )

    @classmethod
    def from_json(cls, text: str, D: int) -> ChainState:
        obj = json.loads(text)
        units, mask = obj.get("units"), obj.get("mask")
        moves = obj.get("moves", [[], []])
        if not (isinstance(units, list) and isinstance(mask, list) and isinstance(moves, list)):
            raise ValueError("a chain state holds 'units', 'mask' and 'moves' lists")
        if len(units) != D or len(mask) != D or not all(type(u) is int for u in units):
            raise ValueError(f"a chain state holds {D} integer units and {D} mask flags")
        if len(moves) != 2 or not all(
            isinstance(m, list) and len(m) in (0, D) and all(type(q) is int for q in m)
            for m in moves
        ):
            raise ValueError(f"a chain state's moves are two lists of {D} integers")
        return cls(tuple(units), tuple(bool(m) for m in mask), (tuple(moves[0]), tuple(moves[1])))


@dataclass(frozen=True, eq=False)
class TemporalCodec:
    """A trained temporal codec (see the module docstring). Arrays are read-only numpy."""

    kpis: tuple[str, ...]
    L: int
    clip: float
    span: float
    sigma2: float
    mean: np.ndarray  # [D] float64
    std: np.ndarray  # [D] float64
    log: np.ndarray  # [D] bool
    unit: np.ndarray  # [D] float64, > 0
    origin: np.ndarray  # [D] float64
    weight: np.ndarray  # [D] float64, > 0
    steps: np.ndarray  # [D] int64 >= 1: units per lattice step
    groups: tuple[tuple[int, ...], ...]  # a partition of the KPIs, 1..MAX_GROUP each
    keys: np.ndarray  # [KW, D] int64
    lossless: bool
    key_table: FrequencyTable
    mask_tables: tuple[FrequencyTable, FrequencyTable]  # mask changed? [previous all observed]
    bit_tables: tuple[tuple[FrequencyTable, FrequencyTable], ...]  # [KPI][previous bit]
    move_tables: tuple[tuple[FrequencyTable, ...], ...]  # [group][MOVE_CONTEXTS], 2 symbols
    delta_tables: tuple[tuple[FrequencyTable, ...], ...]  # [KPI][its contexts], RADIX symbols
    class_tables: tuple[tuple[FrequencyTable, ...], ...]  # [KPI][OWN_CONTEXTS], CLASSES symbols
    top_tables: tuple[tuple[FrequencyTable, ...], ...]  # [KPI][class]: an escape's second bit
    # Per KPI, the decimals its raw values are written with when it has a native grid (1 dB:
    # 0, 0.1 dB: 1), -1 when it has none; () for none at all. `to_raw` rounds onto the grid.
    raw_decimals: tuple[int, ...] = ()
    offsets: tuple[int, ...] = field(init=False, repr=False)  # first word id of each group
    position: tuple[int, ...] = field(init=False, repr=False)  # a KPI's place in its group
    key_values: np.ndarray = field(init=False, repr=False)  # [KW, D] value(keys)
    key_ids: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # keys, ints
    group_matrix: np.ndarray = field(init=False, repr=False)  # [D, G]: 1 where KPI j is in g
    # For the encoder's inner loop: Python numbers, and each table's cost in bits per symbol.
    origin_f: tuple[float, ...] = field(init=False, repr=False)
    unit_f: tuple[float, ...] = field(init=False, repr=False)
    weight_f: tuple[float, ...] = field(init=False, repr=False)
    steps_i: tuple[int, ...] = field(init=False, repr=False)
    rate_cost: float = field(init=False, repr=False)  # 2 ln 2 sigma2: squared error per bit
    move_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)
    delta_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)
    class_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        offsets, position = [0], [0] * self.D
        for g in self.groups:
            offsets.append(offsets[-1] + RADIX ** len(g))
            for i, j in enumerate(g):
                position[j] = i
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "position", tuple(position))
        object.__setattr__(self, "key_values", self.value(self.keys))
        object.__setattr__(self, "key_ids", tuple(tuple(int(u) for u in k) for k in self.keys))
        member = np.zeros((self.D, len(self.groups)))
        for i, group in enumerate(self.groups):
            member[list(group), i] = 1.0
        object.__setattr__(self, "group_matrix", member)
        object.__setattr__(self, "origin_f", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "unit_f", tuple(float(v) for v in self.unit))
        object.__setattr__(self, "weight_f", tuple(float(v) for v in self.weight))
        object.__setattr__(self, "steps_i", tuple(int(v) for v in self.steps))
        object.__setattr__(self, "rate_cost", 2 * math.log(2) * self.sigma2)
        object.__setattr__(self, "move_costs", _costs(self.move_tables))
        object.__setattr__(self, "delta_costs", _costs(self.delta_tables))
        object.__setattr__(self, "class_costs", _costs(self.class_tables))

    @property
    def D(self) -> int:
        return len(self.kpis)

    @property
    def K(self) -> int:
        """Word ids: group g's joint moves are ``offsets[g] + sum_i digit_i * RADIX**i``."""
        return self.offsets[-1]

    def _validate(self) -> None:
        D, L = self.D, self.L
        if not (1 <= D <= MAX_D and 1 <= L <= 255):
            raise ValueError(f"need 1 <= D <= {MAX_D} and 1 <= L <= 255")
        for name, arr in (
            ("mean", self.mean),
            ("std", self.std),
            ("log", self.log),
            ("unit", self.unit),
            ("origin", self.origin),
            ("weight", self.weight),
            ("steps", self.steps),
        ):
            if arr.shape != (D,):
                raise ValueError(f"{name} must have shape ({D},), got {arr.shape}")
        if len(self.raw_decimals) not in (0, D) or not all(
            -1 <= d <= 15 for d in self.raw_decimals
        ):
            raise ValueError(f"raw_decimals must hold {D} values in -1..15, or none")
        floats = (self.mean, self.std, self.unit, self.origin, self.weight)
        if not all(np.all(np.isfinite(a)) for a in floats):
            raise ValueError("codec arrays must be finite")
        if np.any(self.std <= 0) or np.any(self.unit <= 0) or np.any(self.weight <= 0):
            raise ValueError("std, unit and weight must be positive")
        if np.any(self.steps < 1) or np.any(self.steps > MAX_UNITS):
            raise ValueError(f"steps must be whole numbers of units in 1..{MAX_UNITS}")
        members = sorted(j for g in self.groups for j in g)
        if members != list(range(D)) or not all(1 <= len(g) <= MAX_GROUP for g in self.groups):
            raise ValueError(f"groups must split the {D} KPIs into groups of 1..{MAX_GROUP}")
        if self.keys.ndim != 2 or self.keys.shape[1] != D or len(self.keys) < 1:
            raise ValueError(f"key words must have shape [KW >= 1, {D}]")
        if np.any(np.abs(self.keys) > MAX_UNITS):
            raise ValueError(f"key words lie within ±{MAX_UNITS} units")
        if not (self.clip > 0 and self.span > 0 and self.sigma2 > 0):
            raise ValueError("clip, span and sigma2 must be positive")
        self._validate_tables()

    def _validate_tables(self) -> None:
        if self.key_table.size != len(self.keys) or any(t.size != 2 for t in self.mask_tables):
            raise ValueError("the key table must have one symbol per key word, the mask two")
        if len(self.mask_tables) != 2:
            raise ValueError("need two mask tables")
        if len(self.bit_tables) != self.D or any(
            len(row) != 2 or any(t.size != 2 for t in row) for row in self.bit_tables
        ):
            raise ValueError("need two 2-symbol mask-bit tables per KPI")
        if len(self.move_tables) != len(self.groups) or any(
            len(row) != MOVE_CONTEXTS or any(t.size != 2 for t in row) for row in self.move_tables
        ):
            raise ValueError(f"need {MOVE_CONTEXTS} 2-symbol move tables per group")
        if len(self.delta_tables) != self.D:
            raise ValueError("need the delta tables of every KPI")
        if len(self.class_tables) != self.D or any(
            len(row) != OWN_CONTEXTS or any(t.size != CLASSES for t in row)
            for row in self.class_tables
        ):
            raise ValueError(f"need {OWN_CONTEXTS} class tables of {CLASSES} symbols per KPI")
        if len(self.top_tables) != self.D or any(
            len(row) != CLASSES or any(t.size != 2 for t in row) for row in self.top_tables
        ):
            raise ValueError(f"need {CLASSES} 2-symbol top-bit tables per KPI")
        for g in self.groups:
            for i, j in enumerate(g):
                row = self.delta_tables[j]
                if len(row) != delta_contexts(i) or any(t.size != RADIX for t in row):
                    raise ValueError(
                        f"KPI {j} needs {delta_contexts(i)} delta tables of {RADIX} symbols"
                    )

    # ------------------------------------------------------------------ normalised space

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw KPIs (shape: [n, D], NaN missing) -> normalised float64, NaN stays NaN."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"expected shape [n, {self.D}], got {list(x.shape)}")
        with np.errstate(invalid="ignore"):
            f = np.where(self.log, np.log1p(np.maximum(x, 0.0)), x)
            out: np.ndarray = _clip((f - self.mean) / self.std, self.clip)
        return out

    def denormalise(self, z: np.ndarray) -> np.ndarray:
        """Normalised rows (any leading shape, [..., D]) -> raw units float64."""
        f = np.asarray(z, dtype=np.float64) * self.std + self.mean
        with np.errstate(over="ignore"):
            out: np.ndarray = np.where(self.log, np.expm1(f), f)
        return out

    def to_raw(self, z: np.ndarray) -> np.ndarray:
        """Decoded rows (normalised, [..., D]) -> raw units, as the cloud stores them: a KPI
        on a native grid is rounded to its decimals, so RSRP decodes to -79, not -79.0000036
        (the state is on the grid; only the normalisation's floating point is off it)."""
        raw = np.array(self.denormalise(z), dtype=np.float64)
        for j, decimals in enumerate(self.raw_decimals):
            if decimals >= 0:
                raw[..., j] = np.round(raw[..., j], decimals)
        return raw

    def value(self, units: np.ndarray) -> np.ndarray:
        """The reconstruction (normalised, clamped to ±span) of integer states ([..., D])."""
        return _clip(self.origin + units * self.unit, self.span)

    # ------------------------------------------------------------------ the encoder

    def key_word(self, z: np.ndarray, mask: np.ndarray) -> int:
        """The key word that leaves measurement z (observed KPIs only; [D] each) nearest once
        the L - 1 words after it have moved the groups that are furthest off: the weighted
        error of all but its L - 1 worst groups, smallest."""
        err = ((self.key_values - z) ** 2 * (mask * self.weight)) @ self.group_matrix  # [KW, G]
        keep = err.shape[1] - (self.L - 1)
        if keep <= 0:
            return int(err.sum(1).argmin())
        left = np.partition(err, keep - 1, axis=1)[:, :keep].sum(1)
        return int(left.argmin())

    def word_id(self, group: int, moves: Sequence[int]) -> int:
        """The id of group `group`'s joint move `moves` (q per member; an escaped q reads as
        the escape digit)."""
        digit = sum(_digit(q) * RADIX**i for i, q in enumerate(moves))
        return int(self.offsets[group] + digit)

    def word_moves(self, word: int) -> tuple[int, dict[int, int | None]]:
        """Inverse of `word_id`: the group and each member's q (None: escaped, |q| > 7)."""
        if not 0 <= word < self.K:
            raise ValueError(f"word {word} is outside 0..{self.K - 1}")
        g = int(np.searchsorted(self.offsets, word, side="right")) - 1
        digits, out = word - self.offsets[g], {}
        for j in self.groups[g]:
            digits, d = divmod(digits, RADIX)
            out[j] = None if d == ESCAPE else d - REACH
        return g, out

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The codec as canonical JSON (what the bundle signs and hashes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        def rows(tables: tuple[tuple[FrequencyTable, ...], ...]) -> list[list[list[int]]]:
            return [[t.to_list() for t in row] for row in tables]

        return {
            "format": CODEC_FORMAT,
            "kpis": list(self.kpis),
            "L": self.L,
            "clip": self.clip,
            "span": self.span,
            "sigma2": self.sigma2,
            **{
                k: getattr(self, k).tolist()
                for k in ("mean", "std", "log", "unit", "origin", "weight", "steps")
            },
            "groups": [list(g) for g in self.groups],
            "keys": self.keys.tolist(),
            "lossless": self.lossless,
            "key_table": self.key_table.to_list(),
            "mask_tables": [t.to_list() for t in self.mask_tables],
            "bit_tables": rows(self.bit_tables),
            "move_tables": rows(self.move_tables),
            "delta_tables": rows(self.delta_tables),
            "class_tables": rows(self.class_tables),
            "top_tables": rows(self.top_tables),
            **({"raw_decimals": list(self.raw_decimals)} if self.raw_decimals else {}),
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> TemporalCodec:
        """Parse and check a codec; a bad one raises ModelMismatchError saying what is wrong."""
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict) or obj.get("format") != CODEC_FORMAT:
                raise ValueError(f"not a {CODEC_FORMAT} codec")
            return cls._from_dict(obj)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ModelMismatchError(f"bad temporal codec: {exc}") from exc

    @classmethod
    def _from_dict(cls, obj: dict[str, Any]) -> TemporalCodec:
        def arr(key: str, dtype: type) -> np.ndarray:
            a: np.ndarray = np.array(obj[key], dtype=dtype)
            a.setflags(write=False)
            return a

        def tables(key: str) -> tuple[tuple[FrequencyTable, ...], ...]:
            return tuple(tuple(FrequencyTable.from_list(t) for t in row) for row in obj[key])

        kpis, groups = obj["kpis"], obj["groups"]
        if not (isinstance(kpis, list) and all(isinstance(k, str) for k in kpis)):
            raise ValueError("kpis must be a list of names")
        if not (isinstance(groups, list) and all(isinstance(g, list) for g in groups)):
            raise ValueError("groups must be a list of lists of KPI indices")
        bits = tables("bit_tables")
        return cls(
            kpis=tuple(kpis),
            L=_int(obj["L"]),
            clip=float(obj["clip"]),
            span=float(obj["span"]),
            sigma2=float(obj["sigma2"]),
            mean=arr("mean", np.float64),
            std=arr("std", np.float64),
            log=arr("log", np.bool_),
            unit=arr("unit", np.float64),
            origin=arr("origin", np.float64),
            weight=arr("weight", np.float64),
            steps=arr("steps", np.int64),
            groups=tuple(tuple(_int(j) for j in g) for g in groups),
            keys=arr("keys", np.int64),
            lossless=obj["lossless"] is True,
            key_table=FrequencyTable.from_list(obj["key_table"]),
            mask_tables=_pair(tuple(FrequencyTable.from_list(t) for t in obj["mask_tables"])),
            bit_tables=tuple(_pair(row) for row in bits),
            move_tables=tables("move_tables"),
            delta_tables=tables("delta_tables"),
            class_tables=tables("class_tables"),
            top_tables=tables("top_tables"),
            raw_decimals=tuple(_int(d) for d in obj.get("raw_decimals", [])),
        )


def _costs(
    tables: tuple[tuple[FrequencyTable, ...], ...],
) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """Each table's cost in bits of each of its symbols."""
    return tuple(
        tuple(tuple(PRECISION - math.log2(f) for f in t.freqs) for t in row) for row in tables
    )


def _clip(a: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(a, -bound, bound)``, computed as clip does (max, then min) without its
    Python wrapper, which costs more than the arithmetic on a few dozen values."""
    out: np.ndarray = np.minimum(np.maximum(a, -bound), bound)
    return out


def _int(v: object) -> int:
    if type(v) is not int:
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _pair(row: tuple[FrequencyTable, ...]) -> tuple[FrequencyTable, FrequencyTable]:
    if len(row) != 2:
        raise ValueError("every KPI has two mask-bit tables")
    return row[0], row[1]


def _digit(q: int) -> int:
    return q + REACH if -REACH <= q <= REACH else ESCAPE


# ---------------------------------------------------------------------- frames of symbols


@dataclass(frozen=True)
class Decoded:
    """A payload decoded: the reconstruction (normalised float64 [n, D], NaN where the KPI
    was missing), the codes per measurement (key word first as ``K + kw`` at a key
    measurement, then its words), how many of them were escape words (lossless codecs only)
    and the state the next frame continues from."""

    recon: np.ndarray
    codes: tuple[tuple[int, ...], ...]
    state: ChainState
    escapes: int = 0


_BIT = FrequencyTable.uniform(2)  # a raw bit
RAW_CHUNK = 15  # raw bits coded as one symbol at most
_UNIFORM = (_BIT, *(FrequencyTable.uniform(1 << k) for k in range(1, RAW_CHUNK + 1)))


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
    With `counts` (table id -> symbol counts), symbols are counted instead (tables unfit)."""
    z = codec.normalise(x)
    seen = np.isfinite(z)
    z = np.where(seen, z, 0.0)
    if len(keys) != len(z):
        raise ValueError(f"{len(z)} measurements but {len(keys)} key flags")
    if state is None and len(z) and not keys[0]:
        raise ValueError("a frame without a predecessor starts with a key measurement")
    units, last, (moved, moved2) = _start(codec, state)
    sink = _Sink(counts)
    states, codes, escapes = [], [], 0
    observed = seen.tolist()  # per measurement, its mask as Python bools
    rows = z.tolist()
    for t in range(len(z)):
        kw = -1
        if keys[t]:
            kw = codec.key_word(z[t], seen[t])
            units, moved = list(codec.key_ids[kw]), [0] * codec.D
        own = [own_context(kw >= 0, a, b) for a, b in zip(moved, moved2, strict=True)]
        q = _choose(codec, rows[t], observed[t], units, (moved, moved2), own, kw >= 0)
        _put_mask(codec, sink.put, observed[t], last, kw >= 0)
        if kw >= 0:
            sink.put((2,), codec.key_table, kw)
        words, extra = _put_moves(codec, sink.put, q, observed[t], (moved, moved2), own, kw >= 0)
        for j, step in enumerate(q):
            units[j] += step * int(codec.steps[j])
        moved2, moved, last = moved, q, observed[t]
        states.append(list(units))
        codes.append(((codec.K + kw,) if kw >= 0 else ()) + tuple(words))
        escapes += extra
    payload = b"" if counts is not None else sink.encoder.finish()
    return payload, _decoded(codec, states, observed, codes, units, last, (moved, moved2), escapes)


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
    seen = np.array(masks, dtype=bool).reshape(n, D)
    values = codec.value(np.array(states, dtype=np.int64).reshape(n, D))
    recon = np.where(seen, values, np.nan)
    state = ChainState(
        tuple(int(u) for u in units),
        tuple(bool(m) for m in mask),
        (tuple(moves[0]), tuple(moves[1])),
    )
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
        u, o = unit[j], origin[j]
        v = min(max(o + units[j] * u, -span), span)
        r = z[j] - v
        n = round(r / (steps[j] * u))
        if n:
            after = min(max(o + (units[j] + n * steps[j]) * u, -span), span)
            gain[j] = weight[j] * (r * r - (z[j] - after) ** 2)
            q[j] = n
    if codec.lossless:
        return q
    lam = codec.rate_cost
    picks: list[tuple[float, int, list[int]]] = []
    moved, moved2 = history
    for g, members in enumerate(codec.groups):
        moving = [j for j in members if q[j]]
        if not moving:
            continue
        ctx = move_context(key, members, moved, moved2, len(picks))
        costs = codec.move_costs[g][ctx]
        best, pick = -lam * costs[0], [0] * len(members)
        for subset in range(1, 1 << len(moving)):
            chosen = [
                q[j] if j in moving and (subset >> moving.index(j)) & 1 else 0 for j in members
            ]
            if not any(chosen):
                continue
            bits = costs[1] + _word_bits(codec, members, chosen, seen, own)
            value = sum(gain[j] for j, c in zip(members, chosen, strict=True) if c) - lam * bits
            if value > best:
                best, pick = value, chosen
        if any(pick):
            picks.append((best + lam * costs[0], g, pick))
    cap = codec.L - 1 if key else codec.L
    picks.sort(reverse=True)
    q = [0] * codec.D
    for _, g, pick in picks[:cap]:
        for j, n in zip(codec.groups[g], pick, strict=True):
            q[j] = n
    return q


def _word_bits(
    codec: TemporalCodec,
    members: tuple[int, ...],
    moves: list[int],
    seen: list[bool],
    own: list[int],
) -> float:
    """What a group's word costs in bits after its move flag (the encoder's rate estimate)."""
    observed = [j for j in members if seen[j]]
    signs: list[int] = []
    bits = 0.0
    for j, n in zip(members, moves, strict=True):
        if not seen[j]:
            signs.append(0)
            continue
        forced = j == observed[-1] and not any(signs)
        ctx = delta_context(own[j], signs, forced)
        digit = _digit(n)
        bits += codec.delta_costs[j][ctx][digit]
        if digit == ESCAPE:
            width = (abs(n) - REACH).bit_length()
            bits += codec.class_costs[j][own[j]][width - 1] + width
        signs.append((n > 0) - (n < 0))
    return bits


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
    cap = codec.D + 1 if codec.lossless else (codec.L - 1 if key else codec.L)
    moved, moved2 = history
    words: list[int] = []
    for g, members in enumerate(codec.groups):
        observed = [j for j in members if seen[j]]
        if not observed or len(words) >= cap:
            continue
        moves = any(q[j] for j in members)
        ctx = move_context(key, members, moved, moved2, len(words))
        put((3, g, ctx), codec.move_tables[g][ctx], int(moves))
        if not moves:
            continue
        signs: list[int] = []
        for j in members:
            if not seen[j]:
                signs.append(0)
                continue
            forced = j == observed[-1] and not any(signs)
            ctx = delta_context(own[j], signs, forced)
            n = q[j]
            put((4, j, ctx), codec.delta_tables[j][ctx], _digit(n))
            if _digit(n) == ESCAPE:
                _put_escape(put, codec, j, own[j], n)
            signs.append((n > 0) - (n < 0))
        words.append(codec.word_id(g, [q[j] for j in members]))
    return words, max(len(words) - (codec.L - 1 if key else codec.L), 0)


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


def _read_raw(decode: Callable[[FrequencyTable], int], bits: int) -> int:
    value = 0
    while bits > 0:
        take = min(bits, RAW_CHUNK)
        bits -= take
        value = (value << take) | decode(_UNIFORM[take])
    return value


def decode_payload(
    codec: TemporalCodec, payload: bytes, keys: Sequence[bool], state: ChainState | None
) -> Decoded:
    """The cloud's side of `encode_payload`: len(keys) measurements from `payload`,
    continuing `state` (None: the frame starts with a key). Raises WireError on a payload
    that does not decode to exactly these measurements."""
    if state is None and len(keys) and not keys[0]:
        raise WireError("a frame without a predecessor must start with a key", reason="no_key")
    units, mask, (moved, moved2) = _start(codec, state)
    dec = RangeDecoder(payload)
    decode = dec.decode
    D, K = codec.D, codec.K
    everything = [True] * D
    steps = [int(s) for s in codec.steps]
    states, masks, codes, escapes = [], [], [], 0
    for is_key in keys:
        before = everything if is_key else mask
        if decode(codec.mask_tables[int(all(before))]):
            mask = [bool(decode(codec.bit_tables[j][int(before[j])])) for j in range(D)]
        else:
            mask = before
        got: list[int] = []
        if is_key:
            kw = decode(codec.key_table)
            units, moved = list(codec.key_ids[kw]), [0] * D
            got.append(K + kw)
        q, words = _read_moves(codec, decode, mask, moved, moved2, is_key)
        for j in range(D):
            if q[j]:
                units[j] += q[j] * steps[j]
                if abs(units[j]) > MAX_UNITS:
                    raise WireError(f"KPI {j} moves out of range", reason="payload_word")
        moved2, moved = moved, q
        escapes += max(len(words) - (codec.L - 1 if is_key else codec.L), 0)
        states.append(list(units))
        masks.append(mask)
        codes.append(tuple(got + words))
    dec.finish()
    return _decoded(codec, states, masks, codes, units, mask, (moved, moved2), escapes)


def _read_moves(
    codec: TemporalCodec,
    decode: Callable[[FrequencyTable], int],
    seen: list[bool],
    moved: list[int],
    moved2: list[int],
    key: bool,
) -> tuple[list[int], list[int]]:
    """One measurement's words: each KPI's move and the word ids. The contexts are those of
    `shared.temporaltables`, computed inline here: this loop is the cloud's decoding rate."""
    cap = codec.D + 1 if codec.lossless else (codec.L - 1 if key else codec.L)
    q, words = [0] * codec.D, list[int]()
    move_tables, delta_tables, offsets = codec.move_tables, codec.delta_tables, codec.offsets
    for g, members in enumerate(codec.groups):
        count = len(words)
        if count >= cap:
            break
        observed = [j for j in members if seen[j]]
        if not observed:
            continue
        ctx = move_context(key, members, moved, moved2, count)
        if not decode(move_tables[g][ctx]):
            continue
        last, ctx_signs, word, scale, moving = observed[-1], 0, offsets[g], 1, False
        for i, j in enumerate(members):
            if seen[j]:
                own = own_context(key, moved[j], moved2[j])
                forced = j == last and not moving
                digit = decode(delta_tables[j][2 * (own * scale + ctx_signs) + forced])
                if digit == ESCAPE:
                    n = _read_escape(decode, codec.class_tables[j][own], codec.top_tables[j])
                else:
                    n = digit - REACH
                q[j] = n
                sign = (n > 0) - (n < 0)
                moving = moving or n != 0
            else:
                digit, sign = REACH, 0
            # the context of the members after: own * 3^i + their signs so far, in base 3
            ctx_signs, scale = ctx_signs * 3 + sign + 1, scale * 3
            word += digit * RADIX**i
        if not moving:
            raise WireError(f"group {g} is sent as moving but does not move", "payload_word")
        words.append(word)
    return q, words


def _read_escape(
    decode: Callable[[FrequencyTable], int],
    table: FrequencyTable,
    top: tuple[FrequencyTable, ...],
) -> int:
    width = decode(table) + 1
    m = 1
    if width >= 2:
        m = (m << 1) | decode(top[width - 1])
    low = width - 2 if width >= 2 else 0
    raw = _read_raw(decode, low + 1)
    m = (m << low) | (raw & ((1 << low) - 1))
    n = m + REACH
    return -n if raw >> low else n


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


def uniform_tables(D: int, groups: Sequence[Sequence[int]], n_keys: int) -> dict[str, Any]:
    """Every table of a codec with `groups` and `n_keys` key words, uniform (the
    `TemporalCodec` fields, before the tables are fitted)."""
    u = FrequencyTable.uniform
    position = {j: i for g in groups for i, j in enumerate(g)}
    return {
        "key_table": u(max(n_keys, 1)),
        "mask_tables": (u(2), u(2)),
        "bit_tables": tuple((u(2), u(2)) for _ in range(D)),
        "move_tables": tuple(tuple(u(2) for _ in range(MOVE_CONTEXTS)) for _ in groups),
        "delta_tables": tuple(
            tuple(u(RADIX) for _ in range(delta_contexts(position.get(j, 0)))) for j in range(D)
        ),
        "class_tables": tuple(tuple(u(CLASSES) for _ in range(OWN_CONTEXTS)) for _ in range(D)),
        "top_tables": tuple(tuple(u(2) for _ in range(CLASSES)) for _ in range(D)),
    }
