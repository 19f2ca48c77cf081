"""The benchmark's data: one session split and one normaliser, shared by every method and seed.

`load_bench_data` reads a CSV file or folder (`cloud.data.datasets.load_dataset`) and splits it by
session file with ``split_sessions(ds, seed=0)`` -- always seed 0, whatever seeds the
benchmark runs, so every method and every seed sees the very same training, validation and
test sessions (the seeds vary the methods' and the predictor's own randomness, never the
data). Normalisation is fitted on the observed training rows only (`fit_normaliser`), as
`sparsetel train` does; the target's z-score likewise (`fit_target_scaler`).

Methods learn from `train` (a `method.TrainData`); the KPI predictor also watches the
validation sessions to keep its best state; everything is scored on `test`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...shared.errors import DataError
from ...shared.kpi import parse_sentinels
from ..codec.normaliser import Normaliser, TargetScaler, fit_normaliser, fit_target_scaler
from ..data.datasets import Dataset, load_dataset, split_sessions
from .method import TrainData

__all__ = ["SPLIT_SEED", "BenchData", "TestSession", "load_bench_data"]

SPLIT_SEED = 0  # the one session split of every benchmark run


@dataclass(frozen=True, eq=False)
class TestSession:
    """One test session: `x` normalised (float64, [T, D], 0 where missing), `mask` (bool,
    [T, D]), `raw` KPIs (float32, [T, D], NaN where missing), `target` raw (float32, [T],
    NaN where missing) and `t_ms` (int64, [T])."""

    name: str
    t_ms: np.ndarray
    x: np.ndarray
    mask: np.ndarray
    raw: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.t_ms.shape[0])


@dataclass(frozen=True, eq=False)
class BenchData:
    """Training data for the methods, the three raw parts and the test sessions, normalised."""

    kpis: tuple[str, ...]
    target: str
    normaliser: Normaliser
    scaler: TargetScaler
    train: TrainData
    parts: tuple[Dataset, Dataset, Dataset]  # (train, validation, test), raw
    test: tuple[TestSession, ...]  # the scored sessions: test, or validation (`on`)
    on: str = "test"

    @property
    def target_index(self) -> int | None:
        """The target's column among the KPIs, or None when it is not one of them."""
        return self.kpis.index(self.target) if self.target in self.kpis else None

    @property
    def test_rows(self) -> int:
        return sum(len(s) for s in self.test)

    def split(self) -> dict[str, list[str]]:
        """Session names per part (JSON-ready), so a reader can check the split."""
        names = ("train", "val", "test")
        return {
            n: [s.name for s in part.sessions] for n, part in zip(names, self.parts, strict=True)
        }


def _normalised(norm: Normaliser, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw KPIs (shape: [T, D]) -> (x float64 with 0 where missing, mask bool), [T, D] each."""
    z = norm.transform(raw)
    mask = np.isfinite(z)
    return np.where(mask, z, 0.0), mask


def _train_data(ds: Dataset, norm: Normaliser, target: str) -> TrainData:
    pairs = [_normalised(norm, s.kpis) for s in ds.sessions]
    return TrainData(
        names=ds.kpis,
        x=tuple(x for x, _ in pairs),
        mask=tuple(m for _, m in pairs),
        to_raw=norm.inverse,
        from_raw=norm.transform,
        target=target if target in ds.kpis else None,
        normaliser=norm,
    )


def _test_sessions(ds: Dataset, norm: Normaliser) -> tuple[TestSession, ...]:
    out = []
    for s in ds.sessions:
        x, mask = _normalised(norm, s.kpis)
        out.append(TestSession(s.name, s.t_ms, x, mask, s.kpis, s.target))
    return tuple(out)


def load_bench_data(
    path: str | Path,
    kpis: tuple[str, ...],
    target: str,
    sentinels: str | None = None,
    on: str = "test",
) -> BenchData:
    """Load, split (by session file, seed `SPLIT_SEED`) and normalise; see the module doc.
    `on` "validation" scores the validation sessions instead of the test ones (`test` then
    holds them): that is where every choice of the benchmark's methods is made.

    DataError when the files cannot be used (absent columns, too few rows to split)."""
    if on not in ("test", "validation"):
        raise ValueError(f"on must be 'test' or 'validation', got {on!r}")
    marks = parse_sentinels(sentinels) if sentinels else None
    ds = load_dataset(path, kpis, target, marks)
    parts = split_sessions(ds, seed=SPLIT_SEED)
    train, validation, test = parts
    scored = validation if on == "validation" else test
    x_train = np.concatenate([s.kpis for s in train.sessions])
    if not np.isfinite(x_train).any():
        raise DataError(f"{path}: the training sessions have no observed KPI value")
    norm = fit_normaliser(x_train, train.kpis)
    scaler = fit_target_scaler(np.concatenate([s.target for s in train.sessions]), target)
    return BenchData(
        kpis=tuple(ds.kpis),
        target=target,
        normaliser=norm,
        scaler=scaler,
        train=_train_data(train, norm, target),
        parts=parts,
        test=_test_sessions(scored, norm),
        on=on,
    )
