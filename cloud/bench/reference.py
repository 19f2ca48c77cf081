"""The lossless native-grid coder as a reference figure beside a run's own: `grid_lossless_bits`.

The demo prints what the temporal codec sends beside what exact coding of the same
measurements would cost: `gridcode.GridLossless` (each KPI on its native grid, residual from
its previous value, the table kind validation chose), fitted on the run's training sessions
and coding the given sessions in frames of `frame` measurements, as the benchmark does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..codec.normaliser import fit_normaliser
from .gridcode import LOSSLESS_PREDICTOR, LOSSLESS_TABLE, GridLossless
from .method import TrainData, frames

__all__ = ["grid_lossless_bits"]


def grid_lossless_bits(
    train: Sequence[np.ndarray], scored: Sequence[np.ndarray], frame: int, names: Sequence[str]
) -> float:
    """Payload bits per measurement of the lossless native-grid coder on the sessions
    `scored` (frames of `frame`), fitted on the sessions `train`; each session raw KPIs
    (float, [T, D], NaN missing) in the order of `names`."""
    norm = fit_normaliser(np.concatenate(list(train)), list(names))

    def normalised(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = norm.transform(raw)
        seen = np.isfinite(z)
        return np.where(seen, z, 0.0), seen

    pairs = [normalised(x) for x in train]
    data = TrainData(
        names=tuple(names),
        x=tuple(x for x, _ in pairs),
        mask=tuple(m for _, m in pairs),
        to_raw=norm.inverse,
        from_raw=norm.transform,
        frame=frame,
        normaliser=norm,
    )
    coder = GridLossless(LOSSLESS_PREDICTOR, LOSSLESS_TABLE)
    coder.fit(data, seed=0)
    bits = n = 0
    for raw in scored:
        x, seen = normalised(raw)
        for cut in frames(len(x), frame):
            bits += coder.code_frame(x[cut], seen[cut]).bits
        n += len(x)
    return bits / max(n, 1)
