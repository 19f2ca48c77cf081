"""Bjøntegaard delta rate and bits-at-SNR: hand-computed cases, envelopes, refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.bench.bdrate import bd_rate, bits_at_snr, lower_envelope

# A concave curve as codecs draw them: each doubling of bits buys a little less SNR.
# SNRs 16.0, 21.3, 26.2, 30.7, 34.8, 38.5, 41.8 -- five of them inside [20, 40].
CURVE = [(500.0 * 2**k, 16.0 + 5.5 * k - 0.2 * k**2) for k in range(7)]


def _line(a: float, b: float, snrs: range) -> list[tuple[float, float]]:
    """Points on log10(bits) = a + b * snr."""
    return [(10.0 ** (a + b * s), float(s)) for s in snrs]


def _scaled(points: list[tuple[float, float]], factor: float) -> list[tuple[float, float]]:
    return [(bits * factor, snr) for bits, snr in points]


def test_identical_curves_give_zero() -> None:
    assert bd_rate(CURVE, CURVE) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(("factor", "expected"), [(0.5, -50.0), (2.0, 100.0)])
def test_bits_scaled_everywhere_give_the_scale_in_percent(factor: float, expected: float) -> None:
    assert bd_rate(CURVE, _scaled(CURVE, factor)) == pytest.approx(expected, abs=0.1)


def test_two_straight_lines_in_log_rate_match_the_hand_computation() -> None:
    # ref: log10 bits = 1 + 0.10 s, test: log10 bits = 0.5 + 0.11 s, both spanning [20, 40].
    # PCHIP reproduces straight lines, so d = mean over s in [20, 40] of (-0.5 + 0.01 s)
    # = -0.5 + 0.01 * 30 = -0.2, and (10**-0.2 - 1) * 100 = -36.904 %.
    ref = _line(1.0, 0.10, range(16, 45, 4))
    test = _line(0.5, 0.11, range(18, 47, 4))
    assert bd_rate(ref, test) == pytest.approx(-36.90426555198067, abs=1e-9)


def test_integral_is_confined_to_the_span_both_curves_share() -> None:
    # test starts at 25 dB, so the interval is [25, 40]: d = -0.5 + 0.01 * 32.5 = -0.175.
    ref = _line(1.0, 0.10, range(16, 45, 4))
    test = _line(0.5, 0.11, range(25, 46, 4))
    assert bd_rate(ref, test) == pytest.approx(-33.165608243138536, abs=1e-9)


@pytest.mark.parametrize(("shift_db", "sign"), [(2.0, -1.0), (-2.0, 1.0)])
def test_shifted_snr_gives_the_expected_sign(shift_db: float, sign: float) -> None:
    shifted = [(bits, snr + shift_db) for bits, snr in CURVE]
    rate = bd_rate(CURVE, shifted)
    assert rate is not None
    assert sign * rate > 5.0


def test_fewer_than_min_points_in_range_gives_none() -> None:
    sparse = [p for p in CURVE if not 25.0 < p[1] < 32.0]  # drops 26.2 and 30.7: three left
    assert bd_rate(CURVE, sparse) is None
    assert bd_rate(sparse, CURVE) is None
    assert bd_rate(CURVE, sparse, min_points=3) is not None


def test_overlap_narrower_than_min_overlap_gives_none() -> None:
    low = [(100.0, 10.0), (200.0, 20.0), (210.0, 20.2), (220.0, 20.4), (230.0, 20.6)]
    high = [(250.0, 20.0), (400.0, 25.0), (800.0, 30.0), (1600.0, 35.0), (3200.0, 40.0)]
    assert bd_rate(low, high) is None
    assert bd_rate(low, high, min_overlap_db=0.5) is not None


def test_dominated_points_are_dropped() -> None:
    dominated = [
        (3000.0, 25.0),  # costs more than (2000, 26.2) for less SNR
        (9000.0, CURVE[4][1]),  # the SNR of (8000, 34.8) at a higher cost
        (4000.0, 29.0),  # same bits as (4000, 30.7), lower SNR
    ]
    bits, snr = lower_envelope(CURVE + dominated)
    np.testing.assert_array_equal(bits, [b for b, _ in CURVE])
    np.testing.assert_array_equal(snr, [s for _, s in CURVE])
    assert bd_rate(CURVE + dominated, CURVE) == pytest.approx(0.0, abs=1e-12)


def test_envelope_is_sorted_by_snr_whatever_the_input_order() -> None:
    bits, snr = lower_envelope(list(reversed(CURVE)))
    assert np.all(np.diff(snr) > 0)
    assert np.all(np.diff(bits) > 0)


def test_lossless_points_are_ignored() -> None:
    with_lossless = [*CURVE, (90_000.0, math.inf)]
    assert lower_envelope(with_lossless)[0].size == len(CURVE)
    assert bd_rate(with_lossless, CURVE) == pytest.approx(0.0, abs=1e-12)
    assert bits_at_snr(with_lossless, 45.0) is None


def test_bits_at_snr_is_exact_at_a_sample_point() -> None:
    bits, snr = CURVE[3]
    assert bits_at_snr(CURVE, snr) == pytest.approx(bits, rel=1e-12)


def test_bits_at_snr_follows_a_straight_line_between_points() -> None:
    line = _line(1.0, 0.1, range(10, 51, 10))
    assert bits_at_snr(line, 25.0) == pytest.approx(10.0**3.5, rel=1e-12)


@pytest.mark.parametrize("snr_db", [15.9, 41.9])
def test_bits_at_snr_outside_the_span_is_none(snr_db: float) -> None:
    assert bits_at_snr(CURVE, snr_db) is None


@pytest.mark.parametrize(
    "points",
    [[(0.0, 20.0)], [(-5.0, 20.0)], [(math.nan, 20.0)], [(100.0, math.nan)], [(100.0, -math.inf)]],
)
def test_malformed_points_are_rejected(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError):
        lower_envelope(points)


@pytest.mark.parametrize(
    "kwargs", [{"lo": 40.0, "hi": 20.0}, {"min_points": 1}, {"min_overlap_db": 0.0}]
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        bd_rate(CURVE, CURVE, **kwargs)
