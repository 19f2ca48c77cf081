"""Evaluate a run on sessions it never saw: `evaluate_run` -> one JSON-able dict.

The codes are those of the exported ONNX encoder run by onnxruntime, exactly what an edge
sends (the run is exported first when it is not yet). On the training data folder only the
test sessions recorded in split.json are used (``"split": "test"``); any other data is used
whole (``"split": "all"``).

- nmse: over observed entries in the model's normalised space, sum (x_hat - x)² / sum x²;
  snr_db = -10 log10 nmse; per KPI, nmse_per_kpi and mse_per_kpi (mean (x_hat - x)² in the
  normalised space: the error in squared training standard deviations, which a shift of the
  KPI's level does not dilute as it does the nmse).
- bits_per_measurement: mean code payload bits (`shared.wire.record_bits`);
  wire_bytes_per_measurement: frames of 50 records at 1 Hz with MQTT framing, as the agent
  publishes them (`shared.wire.wire_bytes_per_measurement`).
- sparsity (`codestats.sparsity_report`): codes used per measurement (histogram 0..L, mean,
  share at the cap) overall and per regime: by the size of the change from the previous
  measurement (tertiles: steady, moderate, changing), by the level of `level_column` (default
  the target; tertiles low, mid, high) and, when the data has hidden labels in
  `state_column`, per state with how well the code sets recover the states.
- target metrics, in raw units, over the rows t that end a full window of W measurements of
  one session and whose target at t + h is observed: the code predictor (target_*), the
  same predictor on raw KPI windows (raw_target_*, the ceiling) and persistence
  (persistence_target_*: y[t + h] := the last observed y at or before t).

The result is also written to RUN/evaluation.json (with the data it came from), where
``sparsetel monitor`` finds the model's offline accuracy, ceiling, floor and per-KPI error
to set beside the live audits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...shared.errors import DataError, ModelMismatchError
from ...shared.rundir import (
    CODEC_FILE,
    ENCODER_FILE,
    EVALUATION_FILE,
    MANIFEST_FILE,
    read_config,
    write_json,
)
from ...shared.topics import data_topic
from ...shared.wire import code_bits, wire_bytes_per_measurement
from ..codec.decoder import CloudCodec
from ..codec.export import encode_onnx, export_run
from ..codec.model import Checkpoint
from ..codec.normaliser import Windows, make_windows
from ..data.datasets import Session, parse_cells
from .codeusage import read_labels, sparsity_report
from .evaldata import eval_sessions, resolve_names, target_scores
from .temporaleval import evaluate_temporal

__all__ = [
    "WIRE_BATCH",
    "WIRE_PERIOD_MS",
    "evaluate_run",
    "target_scores",
]

log = logging.getLogger(__name__)

WIRE_BATCH = 50  # records per frame: the edge agent's default
WIRE_PERIOD_MS = 1000  # 1 Hz
_WINDOW_CHUNK = 4096


def _target_metrics(
    codec: CloudCodec, ckpt: Checkpoint, w: Windows, counts: np.ndarray
) -> dict[str, Any]:
    """Code predictor, raw ceiling and persistence on every full window (raw units)."""
    if len(w.ends) < 2:
        return {
            k: None
            for k in (
                "target_mae",
                "target_r2",
                "raw_target_mae",
                "raw_target_r2",
                "persistence_target_mae",
                "persistence_target_r2",
            )
        }
    y = w.y[w.ends + w.horizon]
    pred, raw = [], []
    y_now = ckpt.scaler.transform(w.y)
    seen = np.isfinite(y_now)
    inputs = (w.z, w.mask, np.where(seen, y_now, 0.0).astype(np.float32), seen.astype(np.float32))
    for ends in np.array_split(w.ends, max(1, len(w.ends) // _WINDOW_CHUNK)):
        rows = w.window_rows(ends)
        pred.append(codec.predict(counts[rows]))
        with torch.inference_mode():
            scaled = ckpt.raw_predictor(*(torch.from_numpy(a[rows]) for a in inputs))
        raw.append(ckpt.scaler.inverse(scaled.double().numpy()))
    last = w.y_last[w.ends]
    persistence = np.where(np.isfinite(last), last, ckpt.scaler.mean)
    out: dict[str, Any] = {"target_rows": len(y)}
    for name, p in (
        ("", np.concatenate(pred)),
        ("raw_", np.concatenate(raw)),
        ("persistence_", persistence),
    ):
        mae, r2 = target_scores(y, p)
        out[f"{name}target_mae"], out[f"{name}target_r2"] = mae, r2
    return out


def _reconstruction(codec: CloudCodec, x: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    z = codec.normalise(x)
    seen = np.isfinite(z)
    err = np.where(seen, codec.decode_normalised(codes) - z, 0.0) ** 2
    power = np.where(seen, z, 0.0) ** 2
    nmse = float(err.sum() / power.sum())
    per = err.sum(0) / np.maximum(power.sum(0), 1e-12)
    mse = err.sum(0) / np.maximum(seen.sum(0), 1)
    kpis = codec.manifest.kpis
    return {
        "nmse": nmse,
        "snr_db": float(-10 * np.log10(nmse)) if nmse > 0 else float("inf"),
        "nmse_per_kpi": {k: float(v) for k, v in zip(kpis, per, strict=True)},
        "mse_per_kpi": {k: float(v) for k, v in zip(kpis, mse, strict=True)},
    }


def _rate(codec: CloudCodec, codes: np.ndarray, nnz: np.ndarray) -> dict[str, Any]:
    L, K = codec.L, codec.K
    nnz_bits, index_bits = code_bits(L, K)
    records = [tuple(r[:k]) for r, k in zip(codes.tolist(), nnz.tolist(), strict=True)]
    topic = data_topic("fleet", "edge-0001")
    used = np.unique(codes[codes < K])
    return {
        "mean_nonzeros": float(nnz.mean()),
        "max_nonzeros": int(nnz.max()),
        "bits_per_measurement": float(nnz_bits + index_bits * nnz.mean()),
        "wire_bytes_per_measurement": wire_bytes_per_measurement(
            records, L, K, WIRE_PERIOD_MS, WIRE_BATCH, topic
        ),
        "codewords_used_share": len(used) / K,
    }


def _level(
    sessions: Sequence[Session], data: Path, names: tuple[str, ...], target: str, column: str
) -> np.ndarray:
    """The values of `column` (a KPI, the target or any numeric column of the data) on the
    evaluated rows (float64, shape: [N], NaN = missing)."""
    if column in names:
        return np.concatenate([s.kpis[:, names.index(column)] for s in sessions]).astype(float)
    if column == target:
        return np.concatenate([s.target for s in sessions]).astype(np.float64)
    labels = read_labels(data, [s.name for s in sessions], column, [len(s) for s in sessions])
    return np.concatenate([parse_cells(v, column)[0] for v in labels])


def _states(sessions: Sequence[Session], data: Path, column: str | None) -> np.ndarray | None:
    """The hidden labels in `column` on the evaluated rows (object [N]), None without one."""
    if not column:
        return None
    lengths = [len(s) for s in sessions]
    return np.concatenate(read_labels(data, [s.name for s in sessions], column, lengths))


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    kpis: str | Sequence[str] | None = None,
    target: str | None = None,
    horizon: int | None = None,
    sentinels: str | None = None,
    level_column: str | None = None,
    state_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate the run in `run_dir` on `data` (a CSV or a folder); see the module docstring.

    `kpis` and `target` name the data's columns for the model's KPIs (default: the model's
    names); `horizon`, if given, must be the model's. `level_column` (default: the target)
    and `state_column` (default: none) name the data's columns for the sparsity regimes.
    Returns one JSON-able dict, flat but for the per-KPI errors and "sparsity".
    """
    run = Path(run_dir)
    if (run / CODEC_FILE).exists():
        if horizon is not None and horizon != read_config(run)["horizon"]:
            raise ModelMismatchError(f"the model does not predict {horizon} steps ahead")
        return evaluate_temporal(run, data, kpis, target, sentinels)
    if not (run / ENCODER_FILE).exists() or not (run / MANIFEST_FILE).exists():
        export_run(run)
    codec = CloudCodec.load(run)
    m = codec.manifest
    if horizon is not None and horizon != m.horizon:
        raise ModelMismatchError(f"the model predicts {m.horizon} steps ahead, not {horizon}")
    names, target_name = resolve_names(m.kpis, m.target, kpis, target)
    level = level_column or target_name
    sessions, split = eval_sessions(run, Path(data), names, target_name, sentinels)
    x = np.concatenate([s.kpis for s in sessions]).astype(np.float32)
    if len(x) == 0:
        raise DataError(f"{data}: no rows to evaluate")
    codes, nnz = encode_onnx(run / ENCODER_FILE, x)
    counts = codec.counts(codes)
    ckpt = codec.checkpoint
    w = make_windows(
        [s.kpis for s in sessions],
        [s.target for s in sessions],
        ckpt.normaliser,
        m.window,
        m.horizon,
    )
    result: dict[str, Any] = {
        "rows": len(x),
        "sessions": len(sessions),
        "split": split,
        "L": m.L,
        "K": m.K,
        **_reconstruction(codec, x, codes),
        **_rate(codec, codes, nnz),
        **_target_metrics(codec, ckpt, w, counts),
        "sparsity": sparsity_report(
            counts,
            m.L,
            codec.normalise(x),
            [len(s) for s in sessions],
            level=_level(sessions, Path(data), names, target_name, level),
            level_name=level,
            states=_states(sessions, Path(data), state_column),
        ),
        "target": m.target,
        "horizon": m.horizon,
        "seed": m.seed,
        "model_sha256": m.model_sha256,
    }
    log.info("evaluated %s on %d rows (%s): nmse %.4f", run, len(x), split, result["nmse"])
    saved = {**result, "data": str(Path(data).resolve())}
    write_json(run / EVALUATION_FILE, saved)
    return result
