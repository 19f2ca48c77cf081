"""Train the temporal codec and its KPI predictor: `train_temporal_run`, what `sparsetel train`
does unless told ``--codec memoryless``.

1. Split the sessions by file (`split_sessions`), fit the normaliser on the training part.
2. Fit the temporal SDLGM (`cloud.codec.temporal`): what the codec keeps of it are each KPI's
   grid and the key words; the target KPI is weighted TARGET_WEIGHT times the others where it
   is one of them.
3. Make the codec that ships (`cloud.codec.shipping.ship_codec`: integer lattice, groups of
   KPIs per word, entropy tables fitted on training frames coded by the shipped encoder
   itself), its lattice step calibrated on the validation sessions to ``--snr-db`` (default:
   the SNR chosen for L words) unless ``--lossless``, and write it to RUN/codec.json.
   Everything after this uses that codec, never the torch model.
4. Code the training and validation sessions with it, closed loop, as an edge sends them, and
   fit the KPI predictor on what the cloud decodes (`changepredictor`), its shrinkage chosen
   on the validation sessions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...shared.kpi import parse_sentinels
from ...shared.rundir import (
    CODEC_FILE,
    CONFIG_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    PREDICTOR_DIR,
    SPLIT_FILE,
    SUMMARY_FILE,
    write_json,
)
from ...shared.temporalcodec import TemporalCodec
from ...shared.wire import (
    AGENT_BATCH,
    AGENT_KEY_INTERVAL,
    AGENT_MAX_BATCH_DELAY_S,
    records_per_frame,
)
from ..codec.fidelity import snr
from ..codec.normaliser import Normaliser, fit_normaliser
from ..codec.shipping import code_stream, ship_codec
from ..codec.temporal import (
    LR,
    TARGET_WEIGHT,
    TemporalConfig,
    TemporalSDLGM,
    lattice_step,
    target_snr_db,
    train_temporal,
)
from ..data.datasets import Dataset, Session, load_dataset, split_sessions
from .changepredictor import (
    LEARNERS,
    MAX_TRAIN_ROWS,
    ChangePredictor,
    fit_change_predictor,
    target_column,
)
from .options import TrainOptions

__all__ = [
    "TEMPORAL_SIZES",
    "agent_framing",
    "code_sessions",
    "train_temporal_run",
    "validation_snr",
]

log = logging.getLogger(__name__)

# Training steps and batch of the temporal codec (the benchmark's, chosen there), and QUICK's.
TEMPORAL_SIZES = {"steps": 150, "batch": 512}
TEMPORAL_QUICK = {"steps": 30, "batch": 256}
QUICK_LEARNERS = ("linear", "trees")  # --quick: the predictor's learners and training rows
QUICK_PREDICTOR_ROWS = 20_000
PERIOD_S = 1.0  # the agent's measurement interval the predictor is fitted for
N_PROBES = 16
# Rounds of fitting the lattice step to the SNR asked for, and the training frames their
# tables are fitted on (the final codec's are fitted on all).
CALIBRATION_ROUNDS, CALIBRATION_QUICK, CALIBRATION_SAMPLE = 5, 3, 400


def _normalised(norm: Normaliser, s: Session) -> tuple[np.ndarray, np.ndarray]:
    z = norm.transform(s.kpis)
    seen = np.isfinite(z)
    return np.where(seen, z, 0.0).astype(np.float32), seen.astype(np.float32)


def agent_framing() -> tuple[int, int]:
    """Measurements per frame and per key measurement of an agent at 1 Hz with the defaults:
    the cloud's predictor is fitted, and evaluated, on what that agent's frames decode to."""
    return records_per_frame(PERIOD_S, AGENT_BATCH, AGENT_MAX_BATCH_DELAY_S), AGENT_KEY_INTERVAL


def code_sessions(
    codec: TemporalCodec, sessions: Sequence[Session], frame: int, key_interval: int | None
) -> list[np.ndarray]:
    """Each session's decoded KPIs (normalised, [T, D], NaN missing) as the cloud gets them."""
    return [code_stream(codec, s.kpis, frame, key_interval).recon for s in sessions]


def _fit_codec(opts: TrainOptions, train: Dataset, val: Dataset, norm: Normaliser) -> TemporalCodec:
    sizes = TEMPORAL_QUICK if opts.quick else TEMPORAL_SIZES
    pairs = [_normalised(norm, s) for s in train.sessions]
    names = norm.names
    weights = tuple(TARGET_WEIGHT if n == opts.target else 1.0 for n in names)
    cfg = TemporalConfig(
        D=len(names),
        L=opts.L,
        snr_db=opts.snr_db if opts.snr_db is not None else target_snr_db(opts.L),
        frame=opts.key_interval,
        weights=weights,
        steps=opts.steps if opts.steps is not None else sizes["steps"],
        batch=opts.batch if opts.batch is not None else sizes["batch"],
        lr=LR,
        seed=opts.seed,
    )
    model = train_temporal(cfg, [x for x, _ in pairs], [m for _, m in pairs])
    frames = [
        s.kpis[i : i + opts.key_interval]
        for s in train.sessions
        for i in range(0, len(s), opts.key_interval)
    ]
    if opts.lossless:
        return ship_codec(model, norm, frames, lossless=True)
    step = _calibrate(model, norm, frames, val, opts)
    return ship_codec(model, norm, frames, step=step)


def _calibrate(
    model: TemporalSDLGM,
    norm: Normaliser,
    frames: list[np.ndarray],
    val: Dataset,
    opts: TrainOptions,
) -> float:
    """The lattice step whose codec comes nearest the SNR asked for on the validation
    sessions (coded a key every `key_interval`), of those tried: the high-rate guess, then
    the step scaled by the SNR it missed (6 dB per halving) until one step falls short of the
    aim and one passes it, then bisection between the two nearest (geometric). The SNR is
    jagged in the step (a KPI's step jumps a whole grid step at a time), so it is measured,
    never interpolated."""
    aim, step = model.cfg.snr_db, lattice_step(model.cfg.snr_db)
    tried: list[tuple[float, float]] = []  # (SNR dB, step)
    for _ in range(CALIBRATION_QUICK if opts.quick else CALIBRATION_ROUNDS):
        codec = ship_codec(model, norm, frames, step=step, table_sample=CALIBRATION_SAMPLE)
        got = validation_snr(codec, val, opts.key_interval)
        log.info("lattice step %.4g: %.2f dB on validation (aiming at %.1f)", step, got, aim)
        tried.append((got, step))
        above = [s for snr_db, s in tried if snr_db >= aim]
        below = [s for snr_db, s in tried if snr_db < aim]
        if above and below:
            step = math.sqrt(max(above) * min(below))
        else:
            step *= 10 ** ((got - aim) / 20)
    return min(tried, key=lambda t: abs(t[0] - aim))[1]


def validation_snr(codec: TemporalCodec, val: Dataset, key_interval: int) -> float:
    """The SNR (dB) of `val`'s sessions coded in frames of `key_interval`, each from a key."""
    z = [codec.normalise(s.kpis) for s in val.sessions]
    recon = code_sessions(codec, val.sessions, key_interval, None)
    x, r = np.concatenate(z), np.concatenate(recon)
    seen = np.isfinite(x)
    return float(snr(np.where(seen, x, 0.0), np.where(seen, r, 0.0), seen)["snr_db"])


def _fit_predictors(
    opts: TrainOptions, codec: TemporalCodec, train: Dataset, val: Dataset
) -> dict[str, ChangePredictor]:
    """The KPI predictor on decoded KPIs ("decoded", what the cloud runs) and the same
    predictor on raw KPIs ("raw", the ceiling evaluate reports)."""
    j, to_raw = target_column(codec, opts.target)
    per_frame, key_interval = agent_framing()
    learners = QUICK_LEARNERS if opts.quick else LEARNERS
    inputs = {
        "decoded": lambda ds: code_sessions(codec, ds.sessions, per_frame, key_interval),
        "raw": lambda ds: [codec.normalise(s.kpis) for s in ds.sessions],
    }
    out: dict[str, ChangePredictor] = {}
    for name, make in inputs.items():
        parts = [
            [(z, s.target.astype(np.float64)) for z, s in zip(make(ds), ds.sessions, strict=True)]
            for ds in (train, val)
        ]
        out[name] = fit_change_predictor(
            parts[0],
            parts[1],
            target_index=j,
            horizon=opts.horizon,
            window=opts.window,
            to_raw_target=to_raw,
            seed=opts.seed,
            # the ceiling on raw KPIs: the learner the decoded KPIs chose, not a search of its own
            learners=(out["decoded"].learner,) if "decoded" in out else learners,
            max_rows=QUICK_PREDICTOR_ROWS if opts.quick else MAX_TRAIN_ROWS,
        )
    return out


def train_temporal_run(options: TrainOptions) -> Path:
    """Train the temporal codec and its predictor as `options` say; return the run folder."""
    opts = options
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    sentinels = parse_sentinels(opts.sentinels) if opts.sentinels else None
    ds = load_dataset(opts.data, opts.kpis, opts.target, sentinels, opts.time_column)
    train, val, test = split_sessions(ds, seed=opts.seed)
    norm = fit_normaliser(np.concatenate([s.kpis for s in train.sessions]), train.kpis)
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in (ENCODER_FILE, MANIFEST_FILE):  # an old export no longer describes the run
        (out / stale).unlink(missing_ok=True)
    write_json(out / CONFIG_FILE, opts.to_dict())
    write_json(out / SPLIT_FILE, _split(opts, train, val, test))
    started = time.monotonic()
    codec = _fit_codec(opts, train, val, norm)
    (out / CODEC_FILE).write_text(codec.to_json(), encoding="utf-8")
    fitted = time.monotonic()
    predictors = _fit_predictors(opts, codec, train, val)
    for name, predictor in predictors.items():
        predictor.save(out / PREDICTOR_DIR / name)
    summary: dict[str, Any] = {
        "codec": "temporal",
        "L": codec.L,
        "K": codec.K,
        "key_words": len(codec.keys),
        "sigma2": codec.sigma2,
        "lossless": codec.lossless,
        # what the codec reaches on the validation sessions, a key every key_interval
        "validation_snr_db": round(validation_snr(codec, val, opts.key_interval), 2),
        "codec_seconds": round(fitted - started, 1),
        "predictor_seconds": round(time.monotonic() - fitted, 1),
        "probe_inputs": _probes(val).tolist(),
        "predictors": {
            name: {"learner": p.learner, "shrink": p.shrink, "validation": p.validation}
            for name, p in predictors.items()
        },
    }
    write_json(out / SUMMARY_FILE, summary)
    log.info("trained %s: %s", out, summary)
    return out


def _probes(ds: Dataset) -> np.ndarray:
    """N_PROBES raw validation rows in a row (float64, [n, D]): the export's self-test."""
    x = np.concatenate([s.kpis for s in ds.sessions]).astype(np.float64)
    start = max(0, len(x) // 2 - N_PROBES // 2)
    return x[start : start + N_PROBES]


def _split(opts: TrainOptions, *parts: Dataset) -> dict[str, Any]:
    return {
        "data": str(opts.data.resolve()),
        "seed": opts.seed,
        **{
            name: [s.name for s in part.sessions]
            for name, part in zip(("train", "val", "test"), parts, strict=True)
        },
    }
