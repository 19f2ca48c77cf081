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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelMismatchError
from .rangecoder import PRECISION, FrequencyTable
from .temporaltables import (
    CLASSES,
    ESCAPE,
    MAX_GROUP,
    MOVE_CONTEXTS,
    OWN_CONTEXTS,
    RADIX,
    REACH,
    delta_contexts,
)

__all__ = [
    "CODEC_FORMAT",
    "MAX_UNITS",
    "ChainState",
    "TemporalCodec",
    "move_digit",
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
    mean_f: tuple[float, ...] = field(init=False, repr=False)
    std_f: tuple[float, ...] = field(init=False, repr=False)
    log_columns: tuple[int, ...] = field(init=False, repr=False)  # the KPIs coded as log1p
    origin_f: tuple[float, ...] = field(init=False, repr=False)
    unit_f: tuple[float, ...] = field(init=False, repr=False)
    weight_f: tuple[float, ...] = field(init=False, repr=False)
    steps_i: tuple[int, ...] = field(init=False, repr=False)
    rate_cost: float = field(init=False, repr=False)  # 2 ln 2 sigma2: squared error per bit
    move_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)
    delta_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)
    class_costs: tuple[tuple[tuple[float, ...], ...], ...] = field(init=False, repr=False)
    # For `to_raw`: the KPIs on a native grid, and 10**decimals of each.
    grid_columns: tuple[np.ndarray, np.ndarray] = field(init=False, repr=False)

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
        object.__setattr__(self, "mean_f", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std_f", tuple(float(v) for v in self.std))
        object.__setattr__(self, "log_columns", tuple(j for j in range(self.D) if self.log[j]))
        object.__setattr__(self, "origin_f", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "unit_f", tuple(float(v) for v in self.unit))
        object.__setattr__(self, "weight_f", tuple(float(v) for v in self.weight))
        object.__setattr__(self, "steps_i", tuple(int(v) for v in self.steps))
        object.__setattr__(self, "rate_cost", 2 * math.log(2) * self.sigma2)
        object.__setattr__(self, "move_costs", _costs(self.move_tables))
        object.__setattr__(self, "delta_costs", _costs(self.delta_tables))
        object.__setattr__(self, "class_costs", _costs(self.class_tables))
        columns = [j for j, d in enumerate(self.raw_decimals) if d >= 0]
        scale = np.array([10.0 ** self.raw_decimals[j] for j in columns])
        object.__setattr__(self, "grid_columns", (np.array(columns, dtype=np.int64), scale))

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

    def normalise_row(self, x: Sequence[float]) -> tuple[list[float], list[bool]]:
        """One measurement (raw, [D], NaN missing) -> its normalised values, 0.0 where it is
        missing, and which KPIs it has: `normalise` of it as a row, bit for bit (the same
        float operations one by one; log1p by numpy, as there, for math.log1p's last bit can
        differ from it), at a fraction of the cost of numpy's calls on a row."""
        if len(x) != self.D:
            raise ValueError(f"expected {self.D} KPIs, got {len(x)}")
        f = [float(v) for v in x]
        if self.log_columns:
            logged = np.log1p(np.maximum(np.array([f[j] for j in self.log_columns]), 0.0))
            for j, v in zip(self.log_columns, logged.tolist(), strict=True):
                f[j] = v
        bound, mean, std = self.clip, self.mean_f, self.std_f
        row, seen = [0.0] * self.D, [False] * self.D
        for j in range(self.D):
            z = (f[j] - mean[j]) / std[j]
            if z != z:  # NaN: missing
                continue
            row[j] = bound if z > bound else -bound if z < -bound else z
            seen[j] = True
        return row, seen

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
        columns, scale = self.grid_columns
        if len(columns):  # np.round(v, d) is rint(v * 10**d) / 10**d, on all such KPIs at once
            raw[..., columns] = np.rint(raw[..., columns] * scale) / scale
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

    def word_cap(self, key: bool) -> int:
        """Words a measurement sends within L: L - 1 after a key word, else L (a lossless
        codec sends more, as escape words)."""
        return self.L - 1 if key else self.L

    def word_id(self, group: int, moves: Sequence[int]) -> int:
        """The id of group `group`'s joint move `moves` (q per member; an escaped q reads as
        the escape digit)."""
        digit = sum(move_digit(q) * RADIX**i for i, q in enumerate(moves))
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


def move_digit(q: int) -> int:
    """The digit a move q is sent as: ``q + REACH`` within reach, else ESCAPE."""
    return q + REACH if -REACH <= q <= REACH else ESCAPE


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
