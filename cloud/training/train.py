"""Train an SDLGM codec, its KPI predictor and the raw-KPI ceiling predictor: `train_run`.

The sessions are split by file (`split_sessions`); normalisation and the target's z-score are
fitted on the training part only; windows never cross sessions. Every `eval_every` steps the
deterministic codes (what the edge will send) are scored on the validation sessions and the
best model is kept. A run directory gets checkpoint.pt, config.json, split.json,
train_log.jsonl and summary.json.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from ...shared.errors import ConfigError
from ...shared.kpi import parse_sentinels
from ...shared.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENCODER_FILE,
    MANIFEST_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    TRAIN_LOG_FILE,
    write_json,
)
from ..codec.normaliser import Normaliser, Windows, fit_normaliser, fit_target_scaler, make_windows
from ..data.datasets import Dataset, load_dataset, split_sessions
from .loop import Trainer
from .options import TrainOptions

__all__ = ["TrainOptions", "train_run"]

log = logging.getLogger(__name__)

N_PROBES = 16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load(opts: TrainOptions) -> tuple[Dataset, Dataset, Dataset]:
    sentinels = parse_sentinels(opts.sentinels) if opts.sentinels else None
    ds = load_dataset(opts.data, opts.kpis, opts.target, sentinels, opts.time_column)
    return split_sessions(ds, seed=opts.seed)


def _windows(ds: Dataset, norm: Normaliser, window: int, horizon: int) -> Windows:
    return make_windows(
        [s.kpis for s in ds.sessions], [s.target for s in ds.sessions], norm, window, horizon
    )


def _probes(ds: Dataset) -> np.ndarray:
    """N_PROBES raw validation rows (float32, shape: [16, D]), evenly spread over them."""
    x = np.concatenate([s.kpis for s in ds.sessions]).astype(np.float32)
    idx = np.linspace(0, len(x) - 1, num=min(N_PROBES, len(x))).round().astype(int)
    return x[idx]


def train_run(options: TrainOptions) -> Path:
    """Train a codec as `options` say; return the run directory (options.out)."""
    if options.codec == "temporal":
        from .temporalrun import train_temporal_run

        return train_temporal_run(options)
    opts = options.resolved()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    _seed_everything(opts.seed)
    log.info(
        "training seed %d, L=%d K=%d W=%d h=%d, %s objective, %s sparsity (%d slots)",
        opts.seed,
        opts.L,
        opts.K,
        opts.window,
        opts.horizon,
        opts.objective,
        opts.sparsity,
        opts.slots,
    )
    train, val, test = _load(opts)
    x_train = np.concatenate([s.kpis for s in train.sessions])
    norm = fit_normaliser(x_train, train.kpis)
    scaler = fit_target_scaler(np.concatenate([s.target for s in train.sessions]), train.target)
    tw = _windows(train, norm, opts.window, opts.horizon)
    vw = _windows(val, norm, opts.window, opts.horizon)
    if len(tw.ends) == 0 or len(vw.ends) == 0:
        raise ConfigError(
            "no full window with an observed target in train or validation "
            "sessions (sessions too short for window + horizon?)",
            key="train.window",
        )
    log.info(
        "rows train %d val %d; windows train %d val %d",
        tw.rows,
        vw.rows,
        len(tw.ends),
        len(vw.ends),
    )
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in (ENCODER_FILE, MANIFEST_FILE):  # an old export no longer describes the run
        (out / stale).unlink(missing_ok=True)
    write_json(out / CONFIG_FILE, opts.to_dict())
    write_json(
        out / SPLIT_FILE,
        {
            "data": str(opts.data.resolve()),
            "seed": opts.seed,
            **{
                name: [s.name for s in part.sessions]
                for name, part in (("train", train), ("val", val), ("test", test))
            },
        },
    )
    trainer = Trainer(opts, norm, scaler, tw, vw)
    started = time.monotonic()
    summary = trainer.fit(out / TRAIN_LOG_FILE)
    summary["seconds"] = round(time.monotonic() - started, 1)
    trainer.checkpoint(_probes(val), summary).save(out / CHECKPOINT_FILE)
    write_json(out / SUMMARY_FILE, summary)
    log.info("trained %s in %.1f s: %s", out, summary["seconds"], summary)
    return out
