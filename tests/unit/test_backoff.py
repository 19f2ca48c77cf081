"""The edge's reconnect waits: exponential, capped, jittered, reset on a connect."""

from __future__ import annotations

import random

import pytest

from sparsetel.edge.backoff import Backoff


def test_waits_double_up_to_the_cap_each_in_the_upper_half_of_its_window() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(3))
    waits = [backoff.next() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))


def test_a_fleet_that_lost_the_broker_together_does_not_reconnect_in_lockstep() -> None:
    fleet = [Backoff(1.0, 60.0, random.Random(seed)) for seed in range(200)]
    for _ in range(5):
        waits = [b.next() for b in fleet]
    # the fifth wait of 200 edges: spread over [8, 16] s, not one instant
    assert min(waits) < 9.0 and max(waits) > 15.0
    assert len({round(w, 3) for w in waits}) > 150


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(0.5, 10.0, random.Random(0))
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)
