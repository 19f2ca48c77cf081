"""The temporal SDLGM's lattice (`cloud.codec.temporal`): KPI grids, two-scale levels, the per-KPI
gain, the span clamp and the KPI weights. Small hand-made models; no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsetel.cloud.codec.temporal import (
    FINE_LEVELS,
    Grid,
    TemporalConfig,
    TemporalSDLGM,
    _levels,
    code_frames,
    find_grid,
)


def integer_kpis(rows: int = 4000, seed: int = 0) -> np.ndarray:
    """Three KPIs: dBm-like integers, a 0..15 index and a log-scaled rate, z-scored."""
    rng = np.random.default_rng(seed)
    raw = np.stack(
        [
            rng.integers(-120, -60, rows),
            rng.integers(0, 16, rows),
            np.log1p(rng.integers(0, 100_000, rows)),
        ],
        axis=1,
    ).astype(np.float64)
    return (raw - raw.mean(0)) / raw.std(0)


def test_grid_is_found_where_values_are_whole_units_after_a_linear_scaling() -> None:
    x = integer_kpis()
    grid = find_grid(x, np.ones_like(x, dtype=bool))
    assert grid.step[0] == pytest.approx(np.ptp(x[:, 0]) / 59, rel=1e-6)  # 1 dB
    assert grid.step[1] == pytest.approx(np.ptp(x[:, 1]) / 15, rel=1e-6)  # 1 index
    assert grid.step[2] == 0  # log-scaled: no grid
    # Every value lies on origin + n * step.
    n = (x[:, :2] - grid.origin[:2]) / grid.step[:2]
    assert np.abs(n - np.rint(n)).max() < 1e-6


def test_a_few_clipped_values_do_not_hide_the_grid() -> None:
    x = integer_kpis()
    x[:10, 0] = x[:, 0].min() - 0.37  # a normaliser's clip, off the grid
    mask = np.ones_like(x, dtype=bool)
    mask[::7, 1] = False  # missing entries are not values
    x[::7, 1] = 0.123
    grid = find_grid(x, mask)
    assert grid.step[0] > 0 and grid.step[1] > 0


def test_aligned_steps_are_whole_grid_steps_and_snap_lands_on_the_grid() -> None:
    grid = Grid(step=np.array([0.1, 0.0, 0.3]), origin=np.array([0.05, 0.0, 0.0]))
    steps = grid.aligned(0.26)
    assert steps == pytest.approx([0.3, 0.26, 0.3])
    assert grid.aligned(0.01) == pytest.approx([0.1, 0.01, 0.3])  # never finer than the grid
    snapped = grid.snap(np.array([[0.12, 0.777, -0.44]]))
    assert snapped == pytest.approx(np.array([[0.15, 0.777, -0.3]]))


@pytest.mark.parametrize("top", [1, 7, FINE_LEVELS, FINE_LEVELS + 1, 500, 20_000])
def test_levels_reach_every_move_up_to_the_top_in_at_most_two_words(top: int) -> None:
    levels = _levels(top)
    assert levels == sorted(set(levels)) and levels[0] == 1 and levels[-1] >= top
    if top <= FINE_LEVELS:
        assert levels == list(range(1, top + 1))
    else:
        assert len(levels) <= 2 * np.sqrt(top) + 2 + FINE_LEVELS
    one = set(levels)
    two = one | {a + b for a in levels for b in levels if a + b <= top}
    assert set(range(1, top + 1)) <= two


def lattice(values: list[tuple[int, float]], D: int) -> torch.Tensor:
    book = torch.zeros(len(values), D)
    for k, (j, v) in enumerate(values):
        book[k, j] = v
    return book


def model(L: int = 2, span: float = 6.0, weights: tuple[float, ...] = (), snr: float = 60.0):
    words = [(j, s * n * 0.5) for j in range(2) for s in (1, -1) for n in (1, 2, 3)]
    cfg = TemporalConfig(D=2, L=L, K=len(words), snr_db=snr, span=span, weights=weights)
    return TemporalSDLGM(cfg, lattice(words, 2), torch.zeros(1, 2))


def test_a_codeword_that_moves_two_kpis_is_refused() -> None:
    cfg = TemporalConfig(D=2, L=1, K=1)
    with pytest.raises(ValueError, match="single KPI"):
        TemporalSDLGM(cfg, torch.tensor([[0.5, 0.5]]), torch.zeros(1, 2))


@pytest.mark.parametrize("span", [6.0, 0.8])
def test_the_per_kpi_gain_is_the_squared_error_it_removes(span: float) -> None:
    m = model(span=span)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=gen).clamp(-span, span)
    u = torch.randn(64, 2, generator=gen)
    mask = (torch.rand(64, 2, generator=gen) > 0.2).float()
    _, _, gain = m.slot_logits(x, u, mask, torch.zeros(64), 0)
    after = m.clamp(u.unsqueeze(1) + m.codebook.unsqueeze(0))
    brute = (((x - m.clamp(u)) ** 2 * mask).sum(-1, keepdim=True)) - (
        ((x.unsqueeze(1) - after) ** 2) * mask.unsqueeze(1)
    ).sum(-1)
    assert torch.allclose(gain, brute, atol=1e-5)


def test_a_value_at_the_span_is_exact_and_the_next_one_back_on_the_lattice_too() -> None:
    m = model(L=2, span=1.2)
    # KPI 0 sits at the span (a clipped value, off the 0.5 lattice), then returns to 0.5.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.2, 0.0], [0.5, 0.0], [0.5, 0.5]])
    c = code_frames(m, [(x, np.ones_like(x, dtype=bool))])[0]
    assert np.abs(c.recon[2] - x[2]).max() < 1e-6  # 1.0 + 0.5 clamped to 1.2
    assert np.abs(c.recon[3:] - x[3:]).max() < 1e-6  # the state stayed on the lattice


def test_a_heavier_kpi_gets_the_only_word_first() -> None:
    x = np.array([[0.0, 0.0], [1.0, 1.0]])
    mask = np.ones_like(x, dtype=bool)
    plain = code_frames(model(L=1), [(x, mask)])[0]
    heavy = code_frames(model(L=1, weights=(1.0, 4.0)), [(x, mask)])[0]
    assert np.abs(plain.recon[1] - [1.0, 0.0]).max() < 1e-6  # a tie goes to KPI 0
    assert np.abs(heavy.recon[1] - [0.0, 1.0]).max() < 1e-6


def test_weights_must_be_one_positive_number_per_kpi() -> None:
    with pytest.raises(ValueError, match="weights"):
        TemporalConfig(D=2, weights=(1.0,))
    with pytest.raises(ValueError, match="weights"):
        TemporalConfig(D=2, weights=(1.0, 0.0))
