"""The KPI predictor that scores every method's decoded stream: `fit_predictor`, `score_stream`.

One predictor per seed, the project's ceiling architecture (`model.RawPredictor`), trained on
RAW normalised training windows (`normaliser.make_windows`) exactly as `cloud.training.loop` trains
its raw predictor (Adam on the scaled target's MSE), with the validation sessions choosing
the best state. It is then fed each method's DECODED test stream: the decoded KPIs are the
window inputs and, when the target is one of the KPIs, its decoded value inverse-normalised
is the "target now" input. So ``target_r2`` measures what a cloud predictor that was never
adapted to a codec gets from that codec's stream. Every stream, raw or decoded, in training
and in test, is read the same way: KPIs clamped to the range seen in training (a decoder's
wild value must not turn a log1p KPI into 1e30), the target now taken from its KPI column.
Which KPIs are missing is taken as known (the test mask), for every method alike.

References (`reference_scores`): the same predictor on the raw test stream (the ceiling,
``raw_target_*``) and persistence (the floor, ``persistence_target_*``: y[t + h] := the last
observed y at or before t). Scores are in raw units over the rows t that end a full window of
W rows of one session and whose target at t + h is observed, as `cloud.training.evaluate` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...shared.errors import DataError
from ..codec.model import ModelConfig, RawPredictor
from ..codec.normaliser import TargetScaler, Windows, make_windows
from ..training.evaluate import target_scores
from .dataset import BenchData

__all__ = [
    "KpiPredictor",
    "fit_predictor",
    "persistence_scores",
    "reference_scores",
    "score_stream",
    "test_windows",
]

STEPS, QUICK_STEPS = 800, 200
_BATCH, _LR, _CHECKS, _CHUNK = 128, 2e-3, 4, 8192
_VAL_WINDOWS = 4096  # validation windows scored per check (evenly spread)
_EMPTY = {"target_mae": None, "target_r2": None}


@dataclass(frozen=True, eq=False)
class KpiPredictor:
    """A trained `RawPredictor` and what it needs to read a stream and answer in raw units."""

    net: RawPredictor
    scaler: TargetScaler
    to_raw: Callable[[np.ndarray], np.ndarray]
    target_index: int | None
    z_lo: np.ndarray  # the training range of each KPI, normalised (shape: [D])
    z_hi: np.ndarray

    def _inputs(self, w: Windows, z: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Per-row inputs (z, mask: [R, D]; y_now, y_seen: [R]) from the raw stream or a
        decoded one `z` (normalised, shape: [R, D]), clamped to the training range."""
        z = w.z if z is None else np.nan_to_num(np.asarray(z, dtype=np.float64))
        z = np.clip(z, self.z_lo, self.z_hi) * w.mask
        j = self.target_index
        seen = w.mask[:, j] > 0 if j is not None else np.zeros(len(z), dtype=bool)
        y_now = self.scaler.transform(self.to_raw(z)[:, j]) if j is not None else np.zeros(len(z))
        y_now = np.where(seen, y_now, 0.0)
        return (z.astype(np.float32), w.mask, y_now.astype(np.float32), seen.astype(np.float32))

    def predict(self, w: Windows, z: np.ndarray | None = None) -> np.ndarray:
        """Raw-unit predictions (float64, shape: [M]) of the target h steps after each window
        end in `w.ends`; `z` (shape: [R, D]) a decoded stream in place of the raw `w.z`."""
        inputs = self._inputs(w, z)
        out = []
        for ends in np.array_split(w.ends, max(1, len(w.ends) // _CHUNK)):
            rows = w.window_rows(ends)
            with torch.inference_mode():
                scaled = self.net(*(torch.from_numpy(a[rows]) for a in inputs))
            out.append(scaled.double().numpy())
        return self.scaler.inverse(np.concatenate(out) if out else np.zeros(0))


def _windows(data: BenchData, part: int, window: int, horizon: int) -> Windows:
    ds = data.parts[part]
    kpis, targets = [s.kpis for s in ds.sessions], [s.target for s in ds.sessions]
    return make_windows(kpis, targets, data.normaliser, window, horizon)


def test_windows(data: BenchData, window: int, horizon: int) -> Windows:
    """The scored sessions (`data.test`: test, or validation) as windows; rows are those
    sessions stacked in order."""
    return _windows(data, 1 if data.on == "validation" else 2, window, horizon)


def _range(data: BenchData) -> tuple[np.ndarray, np.ndarray]:
    """The normalised training range of each KPI (each shape: [D])."""
    norms = data.normaliser.norms
    lo, hi = (np.array([[getattr(n, k) for n in norms]]) for k in ("lo", "hi"))
    return data.normaliser.transform(lo)[0], data.normaliser.transform(hi)[0]


def _val_r2(p: KpiPredictor, w: Windows) -> float:
    pick = np.linspace(0, len(w.ends) - 1, num=min(_VAL_WINDOWS, len(w.ends))).astype(int)
    sub = Windows(w.z, w.mask, w.y, w.y_last, w.ends[pick], w.window, w.horizon)
    return target_scores(sub.y[sub.ends + sub.horizon], p.predict(sub))[1]


def fit_predictor(
    data: BenchData, window: int, horizon: int, seed: int, steps: int = STEPS
) -> KpiPredictor:
    """Train the predictor on raw normalised training windows (seeded by `seed`); the state
    with the best validation R² among `_CHECKS` checks is kept. DataError without windows."""
    tw, vw = (_windows(data, part, window, horizon) for part in (0, 1))
    if len(tw.ends) == 0:
        raise DataError("no full window with an observed target in the training sessions")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(D=len(data.kpis), window=window)
    with_target = data.target_index is not None
    net = RawPredictor(cfg.D, window, cfg.pred_embed, cfg.pred_hidden, with_target)
    p = KpiPredictor(net, data.scaler, data.normaliser.inverse, data.target_index, *_range(data))
    z, mask, y_now, seen = (torch.from_numpy(a) for a in p._inputs(tw, None))
    y = torch.from_numpy(np.nan_to_num(data.scaler.transform(tw.y)).astype(np.float32))
    ends, offsets = torch.from_numpy(tw.ends), torch.arange(1 - window, 1)
    optim = torch.optim.Adam(net.parameters(), lr=_LR)
    best, state = -float("inf"), copy.deepcopy(net.state_dict())
    for step in range(steps):
        pick = ends[torch.randint(len(ends), (_BATCH,), generator=gen)]
        rows = pick[:, None] + offsets
        loss = torch.mean(
            (net(z[rows], mask[rows], y_now[rows], seen[rows]) - y[pick + horizon]) ** 2
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if len(vw.ends) >= 2 and (step + 1) % max(1, steps // _CHECKS) == 0:
            r2 = _val_r2(p, vw)
            if r2 > best:
                best, state = r2, copy.deepcopy(net.state_dict())
    if len(vw.ends) >= 2:
        net.load_state_dict(state)
    return p


def score_stream(p: KpiPredictor, w: Windows, z: np.ndarray) -> dict[str, float | None]:
    """target_mae, target_r2 of `p` fed the decoded test stream `z` (shape: [R, D])."""
    if len(w.ends) < 2:
        return dict(_EMPTY)
    mae, r2 = target_scores(w.y[w.ends + w.horizon], p.predict(w, z))
    return {"target_mae": mae, "target_r2": r2}


def persistence_scores(w: Windows, scaler: TargetScaler) -> dict[str, float | None]:
    """persistence_target_mae/_r2: the last observed target at or before t (else the mean)."""
    if len(w.ends) < 2:
        return {"persistence_target_mae": None, "persistence_target_r2": None}
    last = w.y_last[w.ends]
    mae, r2 = target_scores(w.y[w.ends + w.horizon], np.where(np.isfinite(last), last, scaler.mean))
    return {"persistence_target_mae": mae, "persistence_target_r2": r2}


def reference_scores(p: KpiPredictor, w: Windows) -> dict[str, float | None]:
    """The ceiling (raw_target_*: `p` on the raw test stream) and the persistence floor."""
    if len(w.ends) < 2:
        raw: dict[str, float | None] = {"raw_target_mae": None, "raw_target_r2": None}
    else:
        mae, r2 = target_scores(w.y[w.ends + w.horizon], p.predict(w))
        raw = {"raw_target_mae": mae, "raw_target_r2": r2}
    return {**raw, **persistence_scores(w, p.scaler)}
