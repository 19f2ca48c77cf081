"""The temporal codec as it ships: closed-loop coding of KPI measurements into at most L lattice
words each, and the range-coded payload both ends read. numpy and stdlib only, so the edge runs
exactly what the cloud decodes.

A `TemporalCodec` is everything a trained model leaves (cloud.codec.temporal fits it, the
signed bundle carries it as JSON, `TemporalCodec.from_json` checks every field):

- normalisation per KPI: ``z = clip((f(x) - mean) / std, -clip, clip)``, f = log1p where `log`;
- the decoder's state: one integer per KPI, the value ``origin + units * unit`` (normalised
  units), reconstructed clamped to ±span. A KPI with a native grid (dBm, CQI) has its grid
  step as `unit`, so it decodes to values it can take; edge and cloud keep only integers, so
  they agree bit for bit whatever their floating point;
- the lattice: word k moves KPI ``group[k]`` by ``delta[k]`` units; key words: whole-state
  starts (``keys``: [KW, D] integers) for key measurements, which need no context;
- the encoder's posterior: per slot the word logits ``gain / 2σ² + log_prior[kind]`` and the
  gate, open when the expected gain beats the rate (``gate_prior[kind, slot]``) and the word
  brings the reconstruction closer; kind 0 is a key measurement, 1 one in context;
- static entropy tables as integer frequencies (`shared.rangecoder`).

A measurement's symbols, in order: whether its missing-KPI mask differs from the previous
measurement's (then D bits, 1 = observed), its key word (key measurements), then its words
sorted by KPI and word id, each as the KPI given the previous KPI of this measurement (D = none
yet) and the word among that KPI's words, and the stop symbol D unless the measurement used
its cap (L - 1 words after a key word, else L). One range coder codes a frame's measurements
and ends in at most two bytes. A key measurement resets the state and the mask context, so
decoding can resume at any key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelMismatchError, WireError
from .rangecoder import FrequencyTable, RangeDecoder, RangeEncoder

__all__ = [
    "CODEC_FORMAT",
    "ChainState",
    "Decoded",
    "TemporalCodec",
    "decode_payload",
    "encode_payload",
    "payload_bits",
    "table_counts",
]

CODEC_FORMAT = "sparsetel-temporal-1"
MAX_D = 1024
MAX_WORDS = 1 << 16


@dataclass(frozen=True)
class ChainState:
    """The decoder state a frame leaves to its successor: the integer state per KPI and the
    last measurement's observed-KPI mask. Plain ints and bools, so a store can keep it."""

    units: tuple[int, ...]
    mask: tuple[bool, ...]

    def to_json(self) -> str:
        return json.dumps({"units": list(self.units), "mask": [int(m) for m in self.mask]})

    @classmethod
    def from_json(cls, text: str, D: int) -> ChainState:
        obj = json.loads(text)
        units, mask = obj.get("units"), obj.get("mask")
        if not (isinstance(units, list) and isinstance(mask, list)):
            raise ValueError("a chain state holds 'units' and 'mask' lists")
        if len(units) != D or len(mask) != D or not all(type(u) is int for u in units):
            raise ValueError(f"a chain state holds {D} integer units and {D} mask flags")
        return cls(tuple(units), tuple(bool(m) for m in mask))


@dataclass(frozen=True, eq=False)
class TemporalCodec:
    """A trained temporal codec (see the module docstring). Arrays are read-only numpy."""

    kpis: tuple[str, ...]
    L: int
    gates: bool
    clip: float
    span: float
    sigma2: float
    mean: np.ndarray  # [D] float64
    std: np.ndarray  # [D] float64
    log: np.ndarray  # [D] bool
    unit: np.ndarray  # [D] float64, > 0
    origin: np.ndarray  # [D] float64
    weight: np.ndarray  # [D] float64, > 0
    group: np.ndarray  # [K] int64: the KPI each word moves
    delta: np.ndarray  # [K] int64: by how many units (never 0)
    keys: np.ndarray  # [KW, D] int64
    log_prior: np.ndarray  # [2, K] float64
    gate_prior: np.ndarray  # [2, L] float64
    key_table: FrequencyTable
    kpi_tables: tuple[tuple[FrequencyTable, ...], ...]  # [kind][previous KPI or D], D + 1 symbols
    word_tables: tuple[tuple[FrequencyTable, ...], ...]  # [kind][KPI], that KPI's words
    mask_table: FrequencyTable  # 2 symbols: mask as before, mask changed
    # Per KPI, the decimals its raw values are written with when it has a native grid (1 dB:
    # 0, 0.1 dB: 1), -1 when it has none; () for none at all. `to_raw` rounds onto the grid.
    raw_decimals: tuple[int, ...] = ()
    local: np.ndarray = field(init=False, repr=False)  # [K] a word's index among its KPI's
    members: tuple[np.ndarray, ...] = field(init=False, repr=False)  # per KPI, its word ids
    # Derived once, for the encoder's inner loop (the same values it would compute each time):
    step: np.ndarray = field(init=False, repr=False)  # [K] delta * unit[group]
    key_values: np.ndarray = field(init=False, repr=False)  # [KW, D] value(keys)
    group_ids: tuple[int, ...] = field(init=False, repr=False)  # group as Python ints
    local_ids: tuple[int, ...] = field(init=False, repr=False)  # local as Python ints
    delta_ids: tuple[int, ...] = field(init=False, repr=False)  # delta as Python ints
    member_ids: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # members, ints
    key_ids: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # keys, ints

    def __post_init__(self) -> None:
        D, K = len(self.kpis), len(self.group)
        members = tuple(np.flatnonzero(self.group == j) for j in range(D))
        local = np.zeros(K, dtype=np.int64)
        for ids in members:
            local[ids] = np.arange(len(ids))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "local", local)
        self._validate()
        object.__setattr__(self, "step", self.delta * self.unit[self.group])
        object.__setattr__(self, "key_values", self.value(self.keys))
        object.__setattr__(self, "group_ids", tuple(int(j) for j in self.group))
        object.__setattr__(self, "local_ids", tuple(int(i) for i in local))
        object.__setattr__(self, "delta_ids", tuple(int(d) for d in self.delta))
        object.__setattr__(self, "member_ids", tuple(tuple(int(w) for w in m) for m in members))
        object.__setattr__(self, "key_ids", tuple(tuple(int(u) for u in k) for k in self.keys))

    @property
    def D(self) -> int:
        return len(self.kpis)

    @property
    def K(self) -> int:
        return len(self.group)

    def _validate(self) -> None:
        D, K, L = self.D, self.K, self.L
        if not (1 <= D <= MAX_D and 1 <= K <= MAX_WORDS and 1 <= L <= 255):
            raise ValueError(f"need 1 <= D <= {MAX_D}, 1 <= K <= {MAX_WORDS}, 1 <= L <= 255")
        for name, arr, shape in (
            ("mean", self.mean, (D,)),
            ("std", self.std, (D,)),
            ("log", self.log, (D,)),
            ("unit", self.unit, (D,)),
            ("origin", self.origin, (D,)),
            ("weight", self.weight, (D,)),
            ("delta", self.delta, (K,)),
            ("log_prior", self.log_prior, (2, K)),
            ("gate_prior", self.gate_prior, (2, L)),
        ):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if len(self.raw_decimals) not in (0, D) or not all(
            -1 <= d <= 15 for d in self.raw_decimals
        ):
            raise ValueError(f"raw_decimals must hold {D} values in -1..15, or none")
        floats = (self.mean, self.std, self.unit, self.origin, self.weight, self.log_prior)
        if not all(np.all(np.isfinite(a)) for a in (*floats, self.gate_prior)):
            raise ValueError("codec arrays must be finite")
        if np.any(self.std <= 0) or np.any(self.unit <= 0) or np.any(self.weight <= 0):
            raise ValueError("std, unit and weight must be positive")
        if self.group.min() < 0 or self.group.max() >= D or np.any(self.delta == 0):
            raise ValueError("every word must move one of the D KPIs by a nonzero step")
        if self.keys.ndim != 2 or self.keys.shape[1] != D or len(self.keys) < 1:
            raise ValueError(f"key words must have shape [KW >= 1, {D}]")
        if not (self.clip > 0 and self.span > 0 and self.sigma2 > 0):
            raise ValueError("clip, span and sigma2 must be positive")
        self._validate_tables()

    def _validate_tables(self) -> None:
        D = self.D
        if self.key_table.size != len(self.keys) or self.mask_table.size != 2:
            raise ValueError("the key table must have one symbol per key word, the mask two")
        for kind in range(2):
            if len(self.kpi_tables[kind]) != D + 1 or len(self.word_tables[kind]) != D:
                raise ValueError("need D + 1 KPI tables and D word tables per kind")
            if any(t.size != D + 1 for t in self.kpi_tables[kind]):
                raise ValueError("a KPI table has D + 1 symbols (the KPIs and stop)")
            for j, t in enumerate(self.word_tables[kind]):
                if t.size != max(len(self.members[j]), 1):
                    raise ValueError(f"word table of KPI {j} must have one symbol per word")
        if len(self.kpi_tables) != 2 or len(self.word_tables) != 2:
            raise ValueError("tables come for two kinds of measurement: key and context")

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
        """The key word nearest to measurement z (observed KPIs only; [D] each)."""
        d = ((self.key_values - z) ** 2 * mask).sum(1)
        return int(d.argmin())

    def choose_words(
        self, z: np.ndarray, mask: np.ndarray, units: np.ndarray, kind: int
    ) -> list[int]:
        """The model's exact posterior, slot by slot: the words (ids, in slot order) that
        code measurement z (normalised, 0 where missing; mask [D] bool) from state `units`
        (int64 [D], updated in place); at most L - 1 after a key word (kind 0), else L."""
        # Per KPI where it can (D values, gathered per word: the same numbers), per word
        # where it must; each value is computed exactly as ``u = (origin + units * unit)[g]``,
        # ``gain = wg * ((xg - clip(u))**2 - (xg - clip(u + step))**2)`` would.
        g, step, span, origin, unit = self.group, self.step, self.span, self.origin, self.unit
        xg, wg = z[g], (self.weight * mask)[g]
        prior = self.log_prior[kind]
        twice = 2 * self.sigma2
        gate_prior = self.gate_prior[kind].tolist()
        total = np.add.reduce  # what ndarray.sum runs, without its Python layers
        out: list[int] = []
        for slot in range(self.L - 1 if kind == 0 else self.L):
            ud = origin + units * unit
            near = ((z - _clip(ud, span)) ** 2)[g]
            gain = wg * (near - (xg - _clip(ud[g] + step, span)) ** 2)
            alpha = gain / twice + prior
            c = int(alpha.argmax())
            if self.gates:
                p = np.exp(alpha - alpha[c])
                expected = float(total(p * alpha) / total(p))
                if not (expected + gate_prior[slot] > 0 and gain[c] > 0):
                    break
            units[self.group_ids[c]] += self.delta_ids[c]
            out.append(c)
        return out

    def sorted_words(self, words: Sequence[int]) -> list[int]:
        """Words in the order they are sent: by KPI, then by id."""
        group = self.group_ids
        return sorted(words, key=lambda w: (group[w], w))

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The codec as canonical JSON (what the bundle signs and hashes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CODEC_FORMAT,
            "kpis": list(self.kpis),
            "L": self.L,
            "gates": self.gates,
            "clip": self.clip,
            "span": self.span,
            "sigma2": self.sigma2,
            **{
                k: getattr(self, k).tolist()
                for k in ("mean", "std", "log", "unit", "origin", "weight", "group", "delta")
            },
            "keys": self.keys.tolist(),
            "log_prior": self.log_prior.tolist(),
            "gate_prior": self.gate_prior.tolist(),
            "key_table": self.key_table.to_list(),
            "kpi_tables": [[t.to_list() for t in row] for row in self.kpi_tables],
            "word_tables": [[t.to_list() for t in row] for row in self.word_tables],
            "mask_table": self.mask_table.to_list(),
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

        kpis = obj["kpis"]
        if not (isinstance(kpis, list) and all(isinstance(k, str) for k in kpis)):
            raise ValueError("kpis must be a list of names")
        return cls(
            kpis=tuple(kpis),
            L=_int(obj["L"]),
            gates=bool(obj["gates"]),
            clip=float(obj["clip"]),
            span=float(obj["span"]),
            sigma2=float(obj["sigma2"]),
            mean=arr("mean", np.float64),
            std=arr("std", np.float64),
            log=arr("log", np.bool_),
            unit=arr("unit", np.float64),
            origin=arr("origin", np.float64),
            weight=arr("weight", np.float64),
            group=arr("group", np.int64),
            delta=arr("delta", np.int64),
            keys=arr("keys", np.int64),
            log_prior=arr("log_prior", np.float64),
            gate_prior=arr("gate_prior", np.float64),
            key_table=FrequencyTable.from_list(obj["key_table"]),
            kpi_tables=tables("kpi_tables"),
            word_tables=tables("word_tables"),
            mask_table=FrequencyTable.from_list(obj["mask_table"]),
            raw_decimals=tuple(_int(d) for d in obj.get("raw_decimals", [])),
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


# ---------------------------------------------------------------------- frames of symbols


@dataclass(frozen=True)
class Decoded:
    """A payload decoded: the reconstruction (normalised float64 [n, D], NaN where the KPI
    was missing), the codes per measurement (key word first as ``K + kw`` at a key
    measurement, then its lattice words) and the state the next frame continues from."""

    recon: np.ndarray
    codes: tuple[tuple[int, ...], ...]
    state: ChainState


_BIT = FrequencyTable.uniform(2)  # a raw mask bit


class _Sink:
    """Where a measurement's symbols go: a range encoder, or a counter (`counts`) when the
    cloud fits the tables. `put(table id, table, symbol)`; table ids: (0,) mask changed,
    (1,) a raw mask bit, (2,) key word, (3, kind, prev) next KPI, (4, kind, j) word of KPI j."""

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
        self.counts[tid][symbol] += 1


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
    units, mask = _start(codec, state)
    sink = _Sink(counts)
    recon, codes = np.empty(z.shape), []
    observed = seen.tolist()  # per measurement, its mask as Python bools
    last = mask.tolist()
    for t in range(len(z)):
        kw = -1
        if keys[t]:
            kw = codec.key_word(z[t], seen[t])
            units = codec.keys[kw].copy()
        words = codec.sorted_words(codec.choose_words(z[t], seen[t], units, 0 if kw >= 0 else 1))
        _put_measurement(codec, sink, observed[t], last, kw, words)
        last = observed[t]
        recon[t] = codec.value(units)
        codes.append(((codec.K + kw,) if kw >= 0 else ()) + tuple(words))
    recon[~seen] = np.nan
    payload = b"" if counts is not None else sink.encoder.finish()
    return payload, Decoded(recon, tuple(codes), ChainState(tuple(units.tolist()), tuple(last)))


def _start(codec: TemporalCodec, state: ChainState | None) -> tuple[np.ndarray, np.ndarray]:
    if state is None:
        return np.zeros(codec.D, dtype=np.int64), np.ones(codec.D, dtype=bool)
    if len(state.units) != codec.D or len(state.mask) != codec.D:
        raise ValueError(f"the chain state must hold {codec.D} KPIs")
    return np.array(state.units, dtype=np.int64), np.array(state.mask, dtype=bool)


def _state(units: np.ndarray, mask: np.ndarray) -> ChainState:
    return ChainState(tuple(int(u) for u in units), tuple(bool(m) for m in mask))


def _put_measurement(
    codec: TemporalCodec, sink: _Sink, seen: list[bool], mask: list[bool], kw: int, words: list[int]
) -> None:
    """The symbols of one measurement (`seen`: its observed KPIs; `mask`: the previous
    measurement's), in the order the module docstring gives."""
    changed = (not all(seen)) if kw >= 0 else seen != mask
    put = sink.put
    put((0,), codec.mask_table, int(changed))
    if changed:
        for bit in seen:
            put((1,), _BIT, int(bit))
    kind, cap = (0, codec.L - 1) if kw >= 0 else (1, codec.L)
    if kw >= 0:
        put((2,), codec.key_table, kw)
    kpi_tables, word_tables = codec.kpi_tables[kind], codec.word_tables[kind]
    prev = codec.D
    group, local = codec.group_ids, codec.local_ids
    for w in words:
        j = group[w]
        put((3, kind, prev), kpi_tables[prev], j)
        put((4, kind, j), word_tables[j], local[w])
        prev = j
    if len(words) < cap:
        put((3, kind, prev), kpi_tables[prev], codec.D)


def decode_payload(
    codec: TemporalCodec, payload: bytes, keys: Sequence[bool], state: ChainState | None
) -> Decoded:
    """The cloud's side of `encode_payload`: len(keys) measurements from `payload`,
    continuing `state` (None: the frame starts with a key). Raises WireError on a payload
    that does not decode to exactly these measurements."""
    if state is None and len(keys) and not keys[0]:
        raise WireError("a frame without a predecessor must start with a key", reason="no_key")
    start_units, start_mask = _start(codec, state)
    # Python ints and lists in the loop (numpy scalars cost more than the arithmetic); the
    # states are turned into values in one numpy call per frame, as `value` computes them.
    units, mask = [int(u) for u in start_units], [bool(m) for m in start_mask]
    dec, bit = RangeDecoder(payload), _BIT
    decode = dec.decode
    D, K = codec.D, codec.K
    everything = [True] * D
    members, delta, key_ids = codec.member_ids, codec.delta_ids, codec.key_ids
    mask_table, key_table = codec.mask_table, codec.key_table
    states, masks, codes = [], [], []
    for is_key in keys:
        before = everything if is_key else mask
        mask = [bool(decode(bit)) for _ in range(D)] if decode(mask_table) else before
        kind, cap, got = (0, codec.L - 1, []) if is_key else (1, codec.L, [])
        if is_key:
            kw = decode(key_table)
            units = list(key_ids[kw])
            got.append(K + kw)
        kpi_tables, word_tables = codec.kpi_tables[kind], codec.word_tables[kind]
        prev, n = D, 0
        while n < cap:
            j = decode(kpi_tables[prev])
            if j == D:
                break
            local = decode(word_tables[j])
            if local >= len(members[j]):
                raise WireError(f"KPI {j} has no word {local}", reason="payload_word")
            w = members[j][local]
            units[j] += delta[w]
            got.append(w)
            prev, n = j, n + 1
        states.append(list(units))
        masks.append(mask)
        codes.append(tuple(got))
    dec.finish()
    n_rows = len(states)
    seen = np.array(masks, dtype=bool).reshape(n_rows, D)
    values = codec.value(np.array(states, dtype=np.int64).reshape(n_rows, D))
    recon = np.where(seen, values, np.nan)
    return Decoded(recon, tuple(codes), _state(np.array(units), np.array(mask)))


def payload_bits(payload: bytes) -> int:
    """Bits a payload costs as sent."""
    return 8 * len(payload)


def table_counts(codec: TemporalCodec) -> dict[tuple[int, ...], np.ndarray]:
    """Zeroed symbol counts for every table id of `codec` (see `encode_payload`)."""
    D = codec.D
    counts: dict[tuple[int, ...], np.ndarray] = {
        (0,): np.zeros(2),
        (1,): np.zeros(2),
        (2,): np.zeros(len(codec.keys)),
    }
    for kind in range(2):
        for prev in range(D + 1):
            counts[(3, kind, prev)] = np.zeros(D + 1)
        for j in range(D):
            counts[(4, kind, j)] = np.zeros(max(len(codec.members[j]), 1))
    return counts
