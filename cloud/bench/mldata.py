"""The data sets of the multi-label benchmark (`multilabel`): Yeast and simulated KPI windows.

- "yeast": the classic Yeast gene-function set (Elisseeff & Weston 2002, as in MULAN:
  2417 genes, 103 features, 14 labels), read from the copy the `river` package ships
  (``river/datasets/yeast.csv.gz``) without importing river; nothing is downloaded. It has
  no official split here, so a seeded 70/10/20 split of the rows is used.
- "simulator": windows of W consecutive measurements of `simulator.simulate_sessions`;
  the labels are the hidden network states (`simulator.STATES`) that occur in the window,
  so a window across a transition carries two or more. Features are per-KPI summaries of
  the window (mean, std, min, max, last; DL and UL bitrate through log1p first): a short
  dip (a handover lasts 2-5 s) shows in the min wherever it falls, which a flattened window
  would leave to the model to find at each of W positions. The KPIs are `FEATURE_KPIS`:
  all but the simulator's cell Load, which the real traces lack and which drives the
  congestion state so directly that its label would be a lookup. Sessions are split
  70/10/20, so no session is in two parts.
Features are standardised with the training part's mean and standard deviation.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...shared.errors import DataError
from ..data.simulator import KPI_COLUMNS, STATES, simulate_sessions

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FEATURE_KPIS",
    "SHARES",
    "MultilabelData",
    "Part",
    "load_simulator",
    "load_yeast",
    "simulator_windows",
    "window_features",
    "yeast_path",
]

SHARES = (0.7, 0.1, 0.2)  # train, validation, test
YEAST_SHAPE = (2417, 103, 14)  # instances, features, labels
_LOG_KPIS = ("DL_bitrate", "UL_bitrate")
# The KPIs the real 5G traces carry too: the simulator's cell Load drives its congestion
# state directly, so reading it would make that label a lookup.
FEATURE_KPIS = tuple(c for c in KPI_COLUMNS if c != "Load")
_SUMMARIES = ("mean", "std", "min", "max", "last")


@dataclass(frozen=True)
class Part:
    """One part of a split: features x (float32, shape: [N, F]), labels y (float32 0/1,
    [N, C]) and the group of each instance (int64, [N]: the session, or the row)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def take(self, rows: np.ndarray) -> Part:
        return Part(self.x[rows], self.y[rows], self.groups[rows])


@dataclass(frozen=True)
class MultilabelData:
    """A data set split into standardised train, validation and test parts."""

    name: str
    labels: tuple[str, ...]
    train: Part
    val: Part
    test: Part

    def summary(self) -> dict[str, object]:
        """Sizes and label statistics, JSON-ready."""
        y = self.train.y
        return {
            "labels": list(self.labels),
            "features": int(self.train.x.shape[1]),
            "sizes": {p: len(getattr(self, p).x) for p in ("train", "val", "test")},
            "train_label_cardinality": round(float(y.sum(1).mean()), 4),
            "train_label_frequency": [round(float(f), 4) for f in y.mean(0)],
        }


def yeast_path() -> Path:
    """Where the installed `river` package keeps yeast.csv.gz; DataError if it is not
    installed or ships no such file."""
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the Yeast data set needs the river package: pip install river==0.26.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "yeast.csv.gz"
    if not path.is_file():
        raise DataError(f"the installed river package has no {path.name} (river==0.26.1 does)")
    return path


def _read_yeast(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features (float32, [2417, 103]), labels (float32 0/1, [2417, 14]), label names."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = f.readline().strip().split(",")
        values = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    labels = tuple(h for h in header if h.startswith("Class"))
    n_x = len(header) - len(labels)
    if values.shape != (YEAST_SHAPE[0], len(header)) or (n_x, len(labels)) != YEAST_SHAPE[1:]:
        raise DataError(f"{path}: expected {YEAST_SHAPE} rows/features/labels, got {values.shape}")
    return values[:, :n_x].astype(np.float32), values[:, n_x:].astype(np.float32), labels


def _split_groups(groups: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Boolean masks (shape: [N] each) of train, val and test: the distinct groups shuffled
    with `seed` and cut by `SHARES`, so a group is in one part only."""
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    cuts = np.round(np.cumsum(SHARES)[:-1] * len(ids)).astype(int)
    return tuple(np.isin(groups, part) for part in np.split(ids, cuts))


def _standardised(name: str, labels: tuple[str, ...], whole: Part, seed: int) -> MultilabelData:
    """Split `whole` by group and standardise every part with the training statistics."""
    train, val, test = (whole.take(mask) for mask in _split_groups(whole.groups, seed))
    if min(len(train.x), len(val.x), len(test.x)) == 0:
        raise DataError(f"{name}: too few groups ({len(np.unique(whole.groups))}) to split")
    mean, std = train.x.mean(0), train.x.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    parts = [
        Part(((p.x - mean) / std).astype(np.float32), p.y, p.groups) for p in (train, val, test)
    ]
    return MultilabelData(name, labels, *parts)


def load_yeast(seed: int = 0) -> MultilabelData:
    """Yeast with a seeded 70/10/20 split of its rows (see the module doc)."""
    x, y, labels = _read_yeast(yeast_path())
    return _standardised("yeast", labels, Part(x, y, np.arange(len(x))), seed)


def simulator_windows(
    frames: list[pd.DataFrame], window: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `window` rows every `stride` rows of each session DataFrame: KPIs
    (float64, shape: [N, W, D] in `FEATURE_KPIS` order, log1p bitrates), labels (float32
    0/1, [N, len(STATES)]: the states present) and the session index of each ([N])."""
    if window < 1 or stride < 1:
        raise ValueError(f"need window >= 1 and stride >= 1; got {window}, {stride}")
    kpis, labels, sessions = [], [], []
    log = np.array([c in _LOG_KPIS for c in FEATURE_KPIS])
    for i, frame in enumerate(frames):
        values = frame[list(FEATURE_KPIS)].to_numpy(dtype=np.float64)
        values[:, log] = np.log1p(np.clip(values[:, log], 0, None))
        states = frame["state"].map({s: j for j, s in enumerate(STATES)}).to_numpy()
        for start in range(0, len(frame) - window + 1, stride):
            kpis.append(values[start : start + window])
            present = np.zeros(len(STATES), dtype=np.float32)
            present[np.unique(states[start : start + window])] = 1.0
            labels.append(present)
            sessions.append(i)
    if not kpis:
        raise DataError(f"no session has {window} rows for one window")
    return np.stack(kpis), np.stack(labels), np.array(sessions, dtype=np.int64)


def window_features(kpis: np.ndarray) -> np.ndarray:
    """Per-KPI summaries of windows (shape: [N, W, D]) -> [N, 5 D] float32, blocks in
    `_SUMMARIES` order (mean, std, min, max, last)."""
    parts = [kpis.mean(1), kpis.std(1), kpis.min(1), kpis.max(1), kpis[:, -1]]
    return np.concatenate(parts, axis=1).astype(np.float32)


def load_simulator(
    sessions: int = 60, rows: int = 600, window: int = 20, stride: int = 10, seed: int = 0
) -> MultilabelData:
    """Simulated sessions as multi-label windows, split by session (see the module doc)."""
    frames = simulate_sessions(sessions, rows, seed)
    kpis, y, groups = simulator_windows(frames, window, stride)
    whole = Part(window_features(kpis), y, groups)
    return _standardised("simulator", STATES, whole, seed)
