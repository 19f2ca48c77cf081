"""How close a reconstruction is, the one definition `evaluate` and `benchmark` share.

``nmse = sum (x̂ - x)² / sum x²`` over the observed entries of normalised KPIs (the run's
`Normaliser`), ``snr_db = -10 log10 nmse``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["snr"]


def snr(x: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """nmse and snr_db of `recon` against `x` (normalised, same shape) where `mask` (bool)
    is True; what lies outside the mask is not scored."""
    err = np.where(mask, np.asarray(recon, dtype=np.float64) - x, 0.0)
    power = float(np.sum(np.where(mask, x, 0.0) ** 2))
    nmse = float(np.sum(err**2)) / power if power > 0 else float("nan")
    return {"nmse": nmse, "snr_db": -10 * math.log10(nmse) if nmse > 0 else float("inf")}
