"""Bjøntegaard delta rate: how many more (or fewer) bits one codec needs at equal quality.

A rate-distortion curve is a set of operating points ``(bits, snr_db)``, one per setting of a
codec. Only its lower envelope counts: a point is dropped when a point at most as expensive
reaches at least its SNR, so what remains rises strictly in both bits and SNR. Points with
infinite SNR (lossless settings) have no place on the curve and are ignored.

Along the envelope, ``log10(bits)`` is interpolated as a function of SNR with PCHIP (shape
preserving, so no overshoot between points), the classic Bjøntegaard method in its
piecewise-cubic form. `bd_rate` integrates both curves over the SNR interval they share
inside ``[lo, hi]`` and turns the mean log-rate difference ``d`` into percent,
``(10**d - 1) * 100``: -50 means the test codec needs half the bits at equal SNR.

Neither function extrapolates: outside a curve's SNR span there is no answer (None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = ["bd_rate", "bits_at_snr", "lower_envelope"]

RatePoint = tuple[float, float]  # (bits, snr_db)


def lower_envelope(points: Sequence[RatePoint]) -> tuple[np.ndarray, np.ndarray]:
    """The curve's undominated points as ``(bits, snr_db)`` (float64, both shape [m]),
    ordered by SNR, both strictly increasing. A point is dominated when another costs at
    most as many bits and reaches at least its SNR; infinite-SNR (lossless) points are
    ignored.

    Raises ValueError for bits that are not finite and positive, or an SNR that is NaN or
    minus infinity."""
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    bits, snr = arr[:, 0], arr[:, 1]
    if not np.all(np.isfinite(bits) & (bits > 0)):
        raise ValueError("bits must be finite and positive")
    if np.any(np.isnan(snr) | (snr == -np.inf)):
        raise ValueError("snr_db must be a number or +inf (lossless)")
    lossy = np.isfinite(snr)
    bits, snr = bits[lossy], snr[lossy]
    # Cheapest first, and at equal cost the best SNR first, so a point survives only when
    # it beats every point that costs no more than it.
    order = np.lexsort((-snr, bits))
    bits, snr = bits[order], snr[order]
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(snr)[:-1]))
    keep = snr > best_before
    return bits[keep], snr[keep]


def _log_rate(bits: np.ndarray, snr: np.ndarray) -> PchipInterpolator:
    """PCHIP of log10(bits) against SNR on an envelope of at least two points."""
    return PchipInterpolator(snr, np.log10(bits), extrapolate=False)


def bits_at_snr(points: Sequence[RatePoint], snr_db: float) -> float | None:
    """Bits the curve `points` needs to reach `snr_db` dB, interpolated on its lower
    envelope; None when `snr_db` lies outside the envelope's SNR span (no extrapolation)."""
    bits, snr = lower_envelope(points)
    if snr.size == 0 or not snr[0] <= snr_db <= snr[-1]:
        return None
    if snr.size == 1:
        return float(bits[0])
    return float(10.0 ** _log_rate(bits, snr)(snr_db))


def bd_rate(
    ref: Sequence[RatePoint],
    test: Sequence[RatePoint],
    lo: float = 20.0,
    hi: float = 40.0,
    min_points: int = 4,
    min_overlap_db: float = 1.0,
) -> float | None:
    """Bjøntegaard delta rate of `test` against `ref` in percent: the mean extra bits `test`
    needs at equal SNR over the SNR interval both curves cover inside ``[lo, hi]`` dB
    (negative: `test` needs fewer).

    None when the comparison would rest on too little: either envelope has fewer than
    `min_points` points with SNR inside ``[lo, hi]``, or the shared interval is narrower than
    `min_overlap_db` dB. Points outside ``[lo, hi]`` still shape the interpolation near its
    ends; only the integral is confined to the interval."""
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    if min_points < 2:
        raise ValueError(f"min_points must be at least 2 (PCHIP needs two), got {min_points}")
    if not min_overlap_db > 0:
        raise ValueError(f"min_overlap_db must be positive, got {min_overlap_db}")
    curves = [lower_envelope(ref), lower_envelope(test)]
    if any(np.count_nonzero((snr >= lo) & (snr <= hi)) < min_points for _, snr in curves):
        return None
    a = max(lo, *(snr[0] for _, snr in curves))
    b = min(hi, *(snr[-1] for _, snr in curves))
    if b - a < min_overlap_db:
        return None
    ref_area, test_area = (_log_rate(bits, snr).integrate(a, b) for bits, snr in curves)
    d = (test_area - ref_area) / (b - a)
    return float((10.0**d - 1.0) * 100.0)
