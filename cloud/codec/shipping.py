"""From a trained temporal SDLGM (`cloud.codec.temporal`) to the codec that ships
(`shared.temporalcodec.TemporalCodec`): integer lattice, KPI groups, key words, entropy tables.

- The state is counted in integer units per KPI: a KPI's native grid step where it has one
  (its key words are snapped onto the grid), else the lattice step. A move is a whole number
  of `steps` units: the lattice step aligned to the grid (one grid step in `lossless` mode).
- The KPIs that move together are grouped (`cloud.codec.grouping`, from the moves the
  ungrouped codec makes on training frames), so one word moves a group.
- The entropy tables are the symbol counts of a sample of training frames, coded closed loop
  by the shipped encoder itself, add-one smoothed and quantised to integer frequencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import numpy as np

from ...shared.temporalcodec import TemporalCodec, uniform_tables
from ...shared.temporalpayload import encode_payload, fitted, table_counts
from ...shared.temporaltables import RADIX
from .grouping import fit_groups
from .normaliser import Normaliser, fit_normaliser
from .temporal import Grid, TemporalSDLGM, find_grid, lattice_step

__all__ = [
    "TABLE_SAMPLE",
    "CodedStream",
    "code_stream",
    "key_flags",
    "ship_codec",
    "stream_keys",
]

TABLE_SAMPLE = 5000  # training frames whose codes fit the groups and the entropy tables
# The encoder's price of a bit, in weighted squared error: RATE_SCALE step². High-rate theory
# gives 2 ln 2 step² / 12 (0.12); chosen on the validation sessions.
RATE_SCALE = 0.12
NEAREST = 1e-12  # sigma2 of an encoder that takes every nearest move
LOSSLESS_SPAN = 1e9  # clip and span of a lossless codec: none
LOSSLESS_FINE = 1e-4  # its step (std) for a KPI without a native grid
TABLE_PASSES = 3  # fits of the tables: nearest moves, then the MAP choice twice
MAX_DECIMALS = 9  # of a KPI's native grid in raw units


def key_flags(n: int, interval: int) -> list[bool]:
    """Key measurement flags of a stream of n measurements with a key every `interval`."""
    return [t % interval == 0 for t in range(n)]


def stream_keys(model: TemporalSDLGM) -> int | None:
    """The key interval a model's measurements are coded at: 1 (every measurement a key, no
    temporal context) for a model trained without context, else None (the framing's)."""
    return None if model.cfg.context else 1


def ship_codec(
    model: TemporalSDLGM,
    norm: Normaliser,
    frames: Sequence[np.ndarray],
    step: float | None = None,
    lossless: bool = False,
    table_sample: int = TABLE_SAMPLE,
) -> TemporalCodec:
    """The shipped codec of `model` at lattice step `step` (normalised; None: the one the
    model was trained for), grouped and with tables fitted on `frames` (raw training
    measurements, [n_i, D] each, NaN missing; each coded from a key measurement, as an edge
    sends them). Frames beyond `table_sample` are thinned evenly. `lossless`: every move
    sent, one grid step each, in a linear normalisation without a clip, so every KPI on a
    native grid comes back exactly (those without one to within LOSSLESS_FINE std)."""
    sample = list(frames[:: max(len(frames) // max(table_sample, 1), 1)])
    if not sample:
        raise ValueError("need at least one training frame to fit the entropy tables")
    step = lattice_step(model.cfg.snr_db) if step is None else float(step)
    if not step > 0:
        raise ValueError(f"the lattice step must be positive, got {step}")
    every = stream_keys(model)
    space = _lossless_space(model, norm, sample) if lossless else _model_space(model, norm)
    alone = tuple((j,) for j in range(model.cfg.D))
    ungrouped = _codec(model, space, step, alone, lossless=True)
    moves, seen = [], []
    for x in sample:
        flags = key_flags(len(x), every or len(x))
        _, decoded = encode_payload(ungrouped, x, flags, None, table_counts(ungrouped))
        moves.append(_moves(ungrouped, decoded.codes))
        seen.append(np.isfinite(x))
    groups = fit_groups(np.concatenate(moves), np.concatenate(seen))
    # Tables for the nearest moves first (a rate cost of ~0), then for the MAP choice they
    # price: the moves it makes depend on the tables, so they are refitted on them.
    codec = _codec(model, space, step, groups, lossless, sigma2=NEAREST)
    sigma2 = RATE_SCALE * step**2 / (2 * math.log(2))
    for _ in range(TABLE_PASSES):
        counts = table_counts(codec)
        for x in sample:
            encode_payload(codec, x, key_flags(len(x), every or len(x)), None, counts)
        codec = replace(fitted(codec, counts), sigma2=sigma2)
    return codec


def _moves(codec: TemporalCodec, codes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Per measurement each KPI's move (int64, [n, D]; an escaped one as ±(REACH + 1)) from
    the codes of a codec with one KPI per group."""
    out = np.zeros((len(codes), codec.D), dtype=np.int64)
    for t, code in enumerate(codes):
        for w in code:
            if w < codec.K:
                _, moves = codec.word_moves(w)
                for j, q in moves.items():
                    out[t, j] = q if q is not None else RADIX // 2
    return out


def _decimals(text: str) -> int:
    """Digits after the point of a number written as `text` ("1" -> 0, "0.25" -> 2)."""
    exponent = Decimal(text).normalize().as_tuple().exponent
    return max(-int(exponent), 0)


@dataclass(frozen=True)
class _Space:
    """Where the codec counts: its normalisation, each KPI's grid in it, the span values are
    clamped to and the key words in it ([KW, D])."""

    norm: Normaliser
    span: float
    grid: Grid
    keys: np.ndarray

    def raw_decimals(self) -> tuple[int, ...]:
        """Per KPI the decimals of its native grid in raw units (-1 without one): those of its
        step (written with 6 significant digits: the grid was found in float32), more while
        the grid's origin is not within a thousandth of a step of a number with that many."""
        out = []
        for j, n in enumerate(self.norm.norms):
            if self.grid.step[j] <= 0 or n.log:
                out.append(-1)
                continue
            step = float(f"{float(self.grid.step[j]) * n.std:.6g}")
            origin = float(self.grid.origin[j]) * n.std + n.mean
            decimals = _decimals(f"{step:.6g}")
            while decimals < MAX_DECIMALS and abs(round(origin, decimals) - origin) > step / 1000:
                decimals += 1
            out.append(decimals)
        return tuple(out)


def _model_space(model: TemporalSDLGM, norm: Normaliser) -> _Space:
    """The model's own normalisation and grid."""
    return _Space(norm, float(model.cfg.span), model.grid, model.keys.double().numpy())


def _lossless_space(model: TemporalSDLGM, norm: Normaliser, frames: Sequence[np.ndarray]) -> _Space:
    """A linear normalisation (no log, no clip: a value comes back only where its own grid
    holds it) fitted on `frames`, and the grids found in it; the model's key words carried
    over."""
    rows = np.concatenate([np.asarray(f, dtype=np.float64) for f in frames])
    linear = fit_normaliser(rows, norm.names, clip=LOSSLESS_SPAN, log=False)
    z = linear.transform(rows)
    seen = np.isfinite(z)
    keys = linear.transform(norm.inverse(model.keys.double().numpy()))
    return _Space(linear, LOSSLESS_SPAN, find_grid(np.where(seen, z, 0.0), seen), keys)


def _codec(
    model: TemporalSDLGM,
    space: _Space,
    step: float,
    groups: tuple[tuple[int, ...], ...],
    lossless: bool,
    sigma2: float = NEAREST,
) -> TemporalCodec:
    """The codec at lattice step `step` with `groups` and uniform tables."""
    grid = space.grid
    gridded = grid.step > 0
    weight = model.weight.double().numpy()
    fine = step / np.sqrt(weight)  # a KPI weighted w times the others: its error w times less
    if lossless:
        fine = np.full_like(fine, LOSSLESS_FINE)
    unit = np.where(gridded, grid.step, fine).astype(np.float64)
    origin = np.where(gridded, grid.origin, 0.0).astype(np.float64)
    aligned = np.maximum(np.rint(fine / np.where(gridded, grid.step, 1.0)), 1)
    steps = np.where(gridded & ~np.bool_(lossless), aligned, 1).astype(np.int64)
    keys = np.rint((space.keys - origin) / unit).astype(np.int64)
    return TemporalCodec(
        kpis=space.norm.names,
        L=model.cfg.L,
        clip=float(space.norm.clip),
        span=space.span,
        sigma2=sigma2,
        mean=np.array([n.mean for n in space.norm.norms]),
        std=np.array([n.std for n in space.norm.norms]),
        log=np.array([n.log for n in space.norm.norms], dtype=bool),
        unit=unit,
        origin=origin,
        weight=weight,
        steps=steps,
        groups=groups,
        keys=keys,
        lossless=lossless,
        **uniform_tables(model.cfg.D, groups, len(keys)),
        raw_decimals=space.raw_decimals(),
    )


@dataclass(frozen=True)
class CodedStream:
    """A session coded as an edge sends it: per frame its payload and key flags, and per
    measurement the decoder's reconstruction (normalised, [T, D], NaN missing) and codes."""

    payloads: tuple[bytes, ...]
    keys: tuple[tuple[bool, ...], ...]
    recon: np.ndarray
    codes: tuple[tuple[int, ...], ...]

    @property
    def payload_bits(self) -> int:
        return 8 * sum(len(p) for p in self.payloads)


def code_stream(
    codec: TemporalCodec, x: np.ndarray, frame: int, key_interval: int | None = None
) -> CodedStream:
    """Code one session's raw measurements (x: [T, D], NaN missing) in frames of `frame`,
    each continuing its predecessor's state, with a key measurement every `key_interval`
    measurements (None: one at the start of every frame, so frames stand alone)."""
    if frame < 1 or (key_interval is not None and key_interval < 1):
        raise ValueError("frame and key_interval must be positive")
    state = None
    payloads: list[bytes] = []
    keys: list[tuple[bool, ...]] = []
    recon: list[np.ndarray] = []
    codes: list[Any] = []
    for start in range(0, len(x), frame):
        n = min(frame, len(x) - start)
        flags = [(start + i) % key_interval == 0 if key_interval else i == 0 for i in range(n)]
        payload, decoded = encode_payload(codec, x[start : start + n], flags, state)
        state = decoded.state
        payloads.append(payload)
        keys.append(tuple(flags))
        recon.append(decoded.recon)
        codes.extend(decoded.codes)
    out = np.concatenate(recon) if recon else np.zeros((0, codec.D))
    return CodedStream(tuple(payloads), tuple(keys), out, tuple(codes))
