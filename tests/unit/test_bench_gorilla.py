"""Gorilla XOR coding of float32 series: golden bits, bit-exact round trips, bad streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsetel.cloud.bench import gorilla


def _bits(data: bytes, count: int) -> str:
    return "".join(format(b, "08b") for b in data)[:count]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_golden_vector() -> None:
    # 1.0 = 0x3F800000 verbatim; 1.0 again: '0'; 1.5 = 0x3FC00000, XOR 0x00400000 has 9
    # leading and 22 trailing zeros: '11' + 01001 + (1 - 1 = 00000) + '1'; back to 1.0: the
    # same XOR fits the window: '10' + '1'.
    data, count = gorilla.encode(np.array([1.0, 1.0, 1.5, 1.0], dtype=np.float32))
    expected = (
        "00111111100000000000000000000000" + "0" + "11" + "01001" + "00000" + "1" + "10" + "1"
    )
    assert count == len(expected) == 49
    assert _bits(data, count) == expected
    assert len(data) == 7 and _bits(data, 56)[49:] == "0000000"


def test_a_constant_series_costs_one_bit_per_repeat() -> None:
    _, count = gorilla.encode(np.full(100, 3.25, dtype=np.float32))
    assert count == 32 + 99


def test_special_values_round_trip_bit_exactly() -> None:
    nan_payload = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)[0]
    values = np.array(
        [np.nan, -0.0, 0.0, np.inf, -np.inf, nan_payload, 1e-45, -3.4e38, np.nan], dtype=np.float32
    )
    data, count = gorilla.encode(values)
    assert _same_bits(gorilla.decode(data, len(values), count), values)


def test_random_walk_with_repeats_round_trips_and_compresses() -> None:
    rng = np.random.default_rng(0)
    steps = np.where(rng.random(2000) < 0.6, 0.0, rng.normal(size=2000))
    values = np.round(np.cumsum(steps), 1).astype(np.float32)
    values[rng.integers(0, 2000, 20)] = np.nan
    data, count = gorilla.encode(values)
    assert len(data) == (count + 7) // 8
    assert _same_bits(gorilla.decode(data, len(values), count), values)
    assert count < 32 * len(values) * 0.6


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.uint32, st.integers(0, 80), elements=st.integers(0, 2**32 - 1)))
def test_any_bit_patterns_round_trip(words: np.ndarray) -> None:
    values = words.view(np.float32)
    data, count = gorilla.encode(values)
    assert len(data) == (count + 7) // 8
    assert _same_bits(gorilla.decode(data, len(values), count), values)


def test_empty_series_is_empty() -> None:
    assert gorilla.encode(np.zeros(0, dtype=np.float32)) == (b"", 0)
    assert gorilla.decode(b"", 0).size == 0


def test_encode_rejects_float64_and_2d_input() -> None:
    with pytest.raises(ValueError):
        gorilla.encode(np.zeros(3))
    with pytest.raises(ValueError):
        gorilla.encode(np.zeros((2, 2), dtype=np.float32))


def test_decode_rejects_a_truncated_stream_at_every_cut() -> None:
    values = np.array([1.0, 2.5, 2.5, -7.0, 1e6], dtype=np.float32)
    data, count = gorilla.encode(values)
    for cut in range(len(data) - 1):
        with pytest.raises(ValueError):
            gorilla.decode(data[:cut], len(values), count)


def test_decode_rejects_a_wrong_bit_count() -> None:
    values = np.array([1.0, 2.5, 2.5], dtype=np.float32)
    data, count = gorilla.encode(values)
    with pytest.raises(ValueError):
        gorilla.decode(data, len(values), count + 1)
