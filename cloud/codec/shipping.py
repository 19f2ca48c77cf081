"""From a trained temporal SDLGM (`cloud.codec.temporal`) to the codec that ships
(`shared.temporalcodec.TemporalCodec`): integer lattice, key words, priors, entropy tables.

- The state is counted in integer units per KPI: a KPI's native grid step where it has one
  (its key words are snapped onto the grid, its lattice steps are whole grid steps), else
  its lattice step; key words of a KPI without a grid are rounded to that step.
- Words the training stream hardly uses (fewer than MIN_WORD_USES times on a sample of
  training frames) are pruned, as VQ training resets dead codes; their moves fall to the
  words that stay.
- The entropy tables are the symbol counts of that sample, coded closed loop by the shipped
  encoder itself, add-one smoothed and quantised to integer frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ...shared.rangecoder import FrequencyTable
from ...shared.temporalcodec import TemporalCodec, encode_payload, table_counts
from .normaliser import Normaliser
from .temporal import TemporalSDLGM, lattice_step

__all__ = [
    "MIN_WORD_USES",
    "TABLE_SAMPLE",
    "CodedStream",
    "code_stream",
    "key_flags",
    "raw_decimals",
    "ship_codec",
    "stream_keys",
]

TABLE_SAMPLE = 400  # training frames whose codes fit the entropy tables
MIN_WORD_USES = 3  # uses on that sample below which a word is pruned
MAX_DECIMALS = 9  # of a KPI's native grid in raw units


def key_flags(n: int, interval: int) -> list[bool]:
    """Key measurement flags of a stream of n measurements with a key every `interval`."""
    return [t % interval == 0 for t in range(n)]


def stream_keys(model: TemporalSDLGM) -> int | None:
    """The key interval a model's measurements are coded at: 1 (every measurement a key, no
    temporal context) for a model trained without context, else None (the framing's)."""
    return None if model.cfg.context else 1


def ship_codec(
    model: TemporalSDLGM, norm: Normaliser, frames: Sequence[np.ndarray]
) -> TemporalCodec:
    """The shipped codec of `model`, its tables fitted on `frames` (raw training measurements,
    [n_i, D] each, NaN missing; each coded from a key measurement, as an edge sends them).
    Frames beyond TABLE_SAMPLE are thinned evenly."""
    sample = list(frames[:: max(len(frames) // TABLE_SAMPLE, 1)])
    if not sample:
        raise ValueError("need at least one training frame to fit the entropy tables")
    full = _codec(model, norm, np.arange(model.cfg.K))
    uses = np.zeros(full.K)
    every = stream_keys(model)
    for x in sample:
        flags = key_flags(len(x), every or len(x))
        _, decoded = encode_payload(full, x, flags, None, table_counts(full))
        for code in decoded.codes:
            words = [c for c in code if c < full.K]
            uses += np.bincount(np.asarray(words, dtype=np.int64), minlength=full.K)
    keep = np.flatnonzero(uses >= MIN_WORD_USES)
    codec = _codec(model, norm, keep if len(keep) else np.array([int(uses.argmax())]))
    counts = table_counts(codec)
    for x in sample:
        encode_payload(codec, x, key_flags(len(x), every or len(x)), None, counts)
    return _with_tables(codec, counts)


def _decimals(text: str) -> int:
    """Digits after the point of a number written as `text` ("1" -> 0, "0.25" -> 2)."""
    exponent = Decimal(text).normalize().as_tuple().exponent
    return max(-int(exponent), 0)


def raw_decimals(model: TemporalSDLGM, norm: Normaliser) -> tuple[int, ...]:
    """Per KPI the decimals of its native grid in raw units (-1 without one): those of its
    step (written with 6 significant digits: the grid was found in float32), more while
    the grid's origin is not within a thousandth of a step of a number with that many."""
    grid, out = model.grid, []
    for j, n in enumerate(norm.norms):
        if grid.step[j] <= 0 or n.log:
            out.append(-1)
            continue
        step = float(f"{float(grid.step[j]) * n.std:.6g}")
        origin = float(grid.origin[j]) * n.std + n.mean
        decimals = _decimals(f"{step:.6g}")
        while decimals < MAX_DECIMALS and abs(round(origin, decimals) - origin) > step / 1000:
            decimals += 1
        out.append(decimals)
    return tuple(out)


def _units(model: TemporalSDLGM) -> tuple[np.ndarray, np.ndarray]:
    """(unit, origin) per KPI: the grid step and origin where the KPI has a grid, else the
    lattice step and 0."""
    grid = model.grid
    step = grid.aligned(lattice_step(model.cfg.snr_db))
    unit = np.where(grid.step > 0, grid.step, step)
    origin = np.where(grid.step > 0, grid.origin, 0.0)
    return unit.astype(np.float64), origin.astype(np.float64)


def _codec(model: TemporalSDLGM, norm: Normaliser, keep: np.ndarray) -> TemporalCodec:
    """The codec with words `keep` (ids into the model's lattice) and uniform tables."""
    cfg = model.cfg
    unit, origin = _units(model)
    group = model.group.numpy()[keep].astype(np.int64)
    value = model.value.double().numpy()[keep]
    delta = np.rint(value / unit[group]).astype(np.int64)
    if np.any(delta == 0) or not np.allclose(delta * unit[group], value, rtol=1e-4, atol=1e-6):
        raise ValueError("the lattice words are not whole multiples of their KPI's unit")
    keys = np.rint((model.keys.double().numpy() - origin) / unit).astype(np.int64)
    with torch.no_grad():
        log_prior = F.log_softmax(model.code_prior[:, torch.from_numpy(keep)], -1).double()
        gate_prior = model.gate_prior.detach().double().numpy()
    mean = np.array([n.mean for n in norm.norms])
    D, KW = cfg.D, len(keys)
    sizes = [max(int(np.sum(group == j)), 1) for j in range(D)]
    uniform = FrequencyTable.uniform
    return TemporalCodec(
        kpis=norm.names,
        L=cfg.L,
        gates=cfg.gates,
        clip=float(norm.clip),
        span=float(cfg.span),
        sigma2=float(cfg.sigma2),
        mean=mean,
        std=np.array([n.std for n in norm.norms]),
        log=np.array([n.log for n in norm.norms], dtype=bool),
        unit=unit,
        origin=origin,
        weight=model.weight.double().numpy(),
        group=group,
        delta=delta,
        keys=keys,
        log_prior=log_prior.numpy(),
        gate_prior=gate_prior,
        key_table=uniform(KW),
        kpi_tables=tuple(tuple(uniform(D + 1) for _ in range(D + 1)) for _ in range(2)),
        word_tables=tuple(tuple(uniform(n) for n in sizes) for _ in range(2)),
        mask_table=uniform(2),
        raw_decimals=raw_decimals(model, norm),
    )


def _with_tables(codec: TemporalCodec, counts: dict[tuple[int, ...], np.ndarray]) -> TemporalCodec:
    """`codec` with every table fitted on `counts` (add-one smoothing)."""
    D = codec.D

    def fit(tid: tuple[int, ...]) -> FrequencyTable:
        return FrequencyTable.from_counts(counts[tid])

    return replace(
        codec,
        key_table=fit((2,)),
        mask_table=fit((0,)),
        kpi_tables=tuple(tuple(fit((3, k, p)) for p in range(D + 1)) for k in range(2)),
        word_tables=tuple(tuple(fit((4, k, j)) for j in range(D)) for k in range(2)),
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
