"""`fit_groups`: KPIs whose moves share information are grouped, at most MAX_GROUP a group."""

from __future__ import annotations

import numpy as np

from sparsetel.cloud.codec.grouping import fit_groups
from sparsetel.shared.temporaltables import MAX_GROUP


def test_kpis_that_move_together_are_grouped_and_independent_ones_stay_alone() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    a, c = rng.integers(-2, 3, n), rng.integers(-2, 3, n)
    moves = np.stack([a, c, a, rng.integers(-2, 3, n), c], axis=1)  # 0 with 2, 1 with 4
    groups = fit_groups(moves, np.ones(moves.shape, dtype=bool))
    assert groups == ((0, 2), (1, 4), (3,))


def test_groups_never_exceed_their_size_and_cover_every_kpi_once() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(-2, 3, 4000)
    moves = np.stack([base] * 7, axis=1)  # all seven move together
    groups = fit_groups(moves, np.ones(moves.shape, dtype=bool))
    assert all(1 <= len(g) <= MAX_GROUP for g in groups)
    assert sorted(j for g in groups for j in g) == list(range(7))


def test_a_missing_value_counts_as_no_move() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(-2, 3, 3000)
    moves = np.stack([a, a], axis=1)
    seen = np.ones(moves.shape, dtype=bool)
    seen[:, 1] = False  # KPI 1 never observed: nothing is shared
    assert fit_groups(moves, seen) == ((0,), (1,))
