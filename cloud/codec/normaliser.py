"""Per-KPI normalisation fitted on the training split (log1p, z-score, clamp), and windows.

A KPI gets ``log1p`` when it is never negative in training and heavy-tailed (bitrates): its
z-scores are then spread over the range instead of piling up near zero with a few huge
outliers. Everything else is a plain z-score. Normalised values are clamped to ``[-clip, clip]``
so a wild reading at the edge cannot push the encoder far outside what it was trained on.
The same arithmetic is baked into the ONNX encoder (see ``model.EdgeEncoder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...shared.errors import DataError
from ...shared.manifest import KpiNorm

__all__ = [
    "CLIP",
    "Normaliser",
    "TargetScaler",
    "Windows",
    "fit_normaliser",
    "fit_target_scaler",
    "forward_fill",
    "make_windows",
]

CLIP = 6.0
_SKEW_FOR_LOG = 2.0  # sample skewness above which a non-negative KPI is log1p-transformed


@dataclass(frozen=True)
class Normaliser:
    """``z = clip((f(x) - mean) / std)``, ``f = log1p`` where `log`; NaN stays NaN."""

    norms: tuple[KpiNorm, ...]
    clip: float = CLIP

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.norms)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean = np.array([n.mean for n in self.norms], dtype=np.float64)
        std = np.array([n.std for n in self.norms], dtype=np.float64)
        log = np.array([n.log for n in self.norms], dtype=bool)
        return mean, std, log

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw KPIs (shape: [N, D]) -> normalised float64 (shape: [N, D]); NaN stays NaN."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.norms):
            raise ValueError(f"expected shape [N, {len(self.norms)}], got {list(x.shape)}")
        mean, std, log = self._arrays()
        with np.errstate(invalid="ignore"):
            f = np.where(log, np.log(1.0 + np.maximum(x, 0.0)), x)
            return np.clip((f - mean) / std, -self.clip, self.clip)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Normalised (shape: [N, D]) -> raw units float64 (shape: [N, D])."""
        mean, std, log = self._arrays()
        f = np.asarray(z, dtype=np.float64) * std + mean
        with np.errstate(over="ignore"):
            return np.where(log, np.expm1(f), f)


@dataclass(frozen=True)
class TargetScaler:
    """Plain z-score of the target in raw units, so an MSE on the scaled target is 1 - R²."""

    name: str
    mean: float
    std: float

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64) - self.mean) / self.std

    def inverse(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(u, dtype=np.float64) * self.std + self.mean


def _skewness(v: np.ndarray) -> float:
    std = float(v.std())
    return 0.0 if std == 0 else float(np.mean(((v - v.mean()) / std) ** 3))


def _fit_one(name: str, v: np.ndarray, log: bool) -> KpiNorm:
    v = v[np.isfinite(v)].astype(np.float64)
    if v.size == 0:
        raise DataError(f"KPI {name!r} has no observed value in the training split")
    lo, hi = float(v.min()), float(v.max())
    use_log = log and lo >= 0 and _skewness(v) > _SKEW_FOR_LOG
    f = np.log1p(v) if use_log else v
    std = float(f.std())
    return KpiNorm(
        name=name,
        mean=float(f.mean()),
        std=std if std > 1e-6 else 1.0,
        log=bool(use_log),
        lo=lo,
        hi=hi,
    )


def fit_normaliser(
    x: np.ndarray, names: Sequence[str], clip: float = CLIP, log: bool = True
) -> Normaliser:
    """Fit per-KPI norms on the training rows (shape: [N, D], NaN = missing); `log` False
    keeps every KPI linear (a skewed one is log-scaled otherwise)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"expected shape [N, {len(names)}], got {list(x.shape)}")
    return Normaliser(tuple(_fit_one(n, x[:, i], log) for i, n in enumerate(names)), clip)


def fit_target_scaler(y: np.ndarray, name: str) -> TargetScaler:
    """Fit the target's z-score on the training rows (shape: [N], NaN = missing)."""
    v = np.asarray(y, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise DataError(f"target {name!r} has fewer than 2 observed values in training")
    std = float(v.std())
    return TargetScaler(name=name, mean=float(v.mean()), std=std if std > 1e-9 else 1.0)


@dataclass(frozen=True)
class Windows:
    """Sessions as model inputs: rows of all sessions stacked, and the predictor's windows.

    `z` (float32, shape: [R, D]) is normalised with 0 where missing, `mask` (float32, [R, D])
    is 1 where observed, `y` (float64, [R]) is the raw target, `y_last` (float64, [R]) the last
    observed target at or before each row in its session (persistence), and `ends` (int64,
    [M]) the rows t that end a full window of W rows of one session whose target at t + h
    exists in that session and is observed.
    """

    z: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    y_last: np.ndarray
    ends: np.ndarray
    window: int
    horizon: int

    @property
    def rows(self) -> int:
        return int(self.z.shape[0])

    def window_rows(self, ends: np.ndarray) -> np.ndarray:
        """Row indices (int64, shape: [M, W]) of the windows ending at rows `ends` ([M])."""
        return ends[:, None] + np.arange(1 - self.window, 1)


def forward_fill(y: np.ndarray) -> np.ndarray:
    """Each entry of `y` ([T]) or, where NaN, the last finite one before it (NaN before the
    first)."""
    idx = np.where(np.isfinite(y), np.arange(len(y)), -1)
    idx = np.maximum.accumulate(idx)
    return np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)


def make_windows(
    kpis: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    normaliser: Normaliser,
    window: int,
    horizon: int,
) -> Windows:
    """Stack sessions (kpis: [T_i, D] raw, targets: [T_i] raw) into `Windows`."""
    zs, ys, lasts, ends = [], [], [], []
    offset = 0
    for x, y in zip(kpis, targets, strict=True):
        t = np.arange(window - 1, len(y) - horizon, dtype=np.int64)
        y = np.asarray(y, dtype=np.float64)
        t = t[np.isfinite(y[t + horizon])] if t.size else t
        zs.append(normaliser.transform(x))
        ys.append(y)
        lasts.append(forward_fill(y))
        ends.append(t + offset)
        offset += len(y)
    z = np.concatenate(zs) if zs else np.zeros((0, len(normaliser.norms)))
    mask = np.isfinite(z)
    return Windows(
        z=np.where(mask, z, 0.0).astype(np.float32),
        mask=mask.astype(np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0),
        y_last=np.concatenate(lasts) if lasts else np.zeros(0),
        ends=np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64),
        window=window,
        horizon=horizon,
    )
