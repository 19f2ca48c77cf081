"""The learned sparse baselines (TopK SAE, OMP dictionary) on synthetic sparse telemetry.

Rows are sums of two atoms of a hidden dictionary plus noise, with a few entries missing
(NaN in x, False in the mask), cut into sessions; the methods run at their quick settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from sparsetel.cloud.bench import learned
from sparsetel.cloud.bench.learned import (
    FitCache,
    OMPDictionary,
    TopKSAE,
    learned_methods,
)
from sparsetel.cloud.bench.method import FRAME, TrainData, frames

D, HIDDEN, K, STEPS = 8, 12, 32, 300

Learned = TopKSAE | OMPDictionary
Factory = Callable[..., Learned]

_SAE_CACHE, _OMP_CACHE = FitCache(), FitCache()


def make_sae(L: int, coef_bits: int = 8, **kw: object) -> TopKSAE:
    kw.setdefault("cache", _SAE_CACHE)
    return TopKSAE(L, K, coef_bits, STEPS, **kw)  # type: ignore[arg-type]


def make_omp(L: int, coef_bits: int = 8, **kw: object) -> OMPDictionary:
    kw.setdefault("cache", _OMP_CACHE)
    return OMPDictionary(L, K, coef_bits, rows=2000, **kw)  # type: ignore[arg-type]


FACTORIES = pytest.mark.parametrize("make", [make_sae, make_omp], ids=["topk-sae", "omp"])


def _sessions(seed: int, count: int, rows: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    atoms = np.random.default_rng(123).normal(size=(HIDDEN, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    xs, masks = [], []
    for _ in range(count):
        index = rng.integers(HIDDEN, size=(rows, 2))
        coef = rng.uniform(0.5, 2.0, size=(rows, 2))
        x = np.einsum("nl,nld->nd", coef, atoms[index]) + 0.03 * rng.normal(size=(rows, D))
        mask = rng.random((rows, D)) > 0.03
        xs.append(np.where(mask, x, np.nan))
        masks.append(mask)
    return xs, masks


@pytest.fixture(scope="module")
def train() -> TrainData:
    xs, masks = _sessions(0, count=3, rows=1500)
    names = tuple(f"k{i}" for i in range(D))
    return TrainData(names, tuple(xs), tuple(masks), lambda z: z, lambda r: r)


@pytest.fixture(scope="module")
def weighted(train: TrainData) -> dict[float, TrainData]:
    """The training data with k0 as the target at weight 1 and 4 (one object per weight, so
    the module's caches learn each once)."""
    return {w: replace(train, target="k0", target_weight=w) for w in (1.0, 4.0)}


@pytest.fixture(scope="module")
def test_rows() -> tuple[np.ndarray, np.ndarray]:
    xs, masks = _sessions(1, count=1, rows=600)
    return xs[0], masks[0]


def code_stream(method: Learned, rows: tuple[np.ndarray, np.ndarray]) -> tuple[float, int]:
    """NMSE over observed entries and total bits, coding frame by frame."""
    x, mask = rows
    recon = np.zeros_like(x)
    bits = 0
    for cut in frames(len(x)):
        coded = method.code_frame(x[cut], mask[cut])
        recon[cut], bits = coded.recon, bits + coded.bits
    err = ((recon - x) ** 2)[mask].sum()
    return float(err / (np.nan_to_num(x) ** 2)[mask].sum()), bits


def fitted(method: Learned, train: TrainData, seed: int = 0) -> Learned:
    torch.set_num_threads(1)
    method.fit(train, seed)
    return method


@FACTORIES
def test_each_code_has_at_most_L_nonzeros(make: Factory, train, test_rows) -> None:
    method = fitted(make(3), train)
    code = method.encode(*test_rows)
    assert code.index.shape == (len(test_rows[0]), 3)
    assert (code.active.sum(axis=1) <= 3).all()
    for index, active in zip(code.index, code.active, strict=True):
        assert len(set(index[active])) == active.sum()  # an atom is sent once per row
    code_stream(method, test_rows)
    stats = method.stats()
    assert stats["max_nonzeros"] <= 3 and 0 < stats["mean_nonzeros"] <= 3
    assert 0.0 <= stats["codewords_unused_share"] < 1.0


@FACTORIES
@pytest.mark.parametrize(("L", "bits"), [(1, 4), (3, 8)])
def test_bits_are_L_times_index_bits_plus_coefficient_bits(make, train, test_rows, L, bits):
    method = fitted(make(L, bits), train)
    x, mask = test_rows
    assert method.code_frame(x[:FRAME], mask[:FRAME]).bits == FRAME * L * (5 + bits)  # K=32
    assert method.code_frame(x[:7], mask[:7]).bits == 7 * method.bits_per_measurement


@FACTORIES
def test_reconstruction_beats_predicting_the_mean(make: Factory, train, test_rows) -> None:
    nmse, _ = code_stream(fitted(make(2), train), test_rows)
    x, mask = test_rows
    mean = np.nanmean(np.concatenate(train.x), axis=0)
    baseline = ((x - mean) ** 2)[mask].sum() / (np.nan_to_num(x) ** 2)[mask].sum()
    assert nmse < 0.5 * baseline


@FACTORIES
def test_more_nonzeros_give_lower_error(make: Factory, train, test_rows) -> None:
    one, _ = code_stream(fitted(make(1), train), test_rows)
    three, _ = code_stream(fitted(make(3), train), test_rows)
    assert three < 0.8 * one


@FACTORIES
def test_more_coefficient_bits_give_lower_error(make: Factory, train, test_rows) -> None:
    coarse, _ = code_stream(fitted(make(2, 2), train), test_rows)
    fine, _ = code_stream(fitted(make(2, 8), train), test_rows)
    assert fine < coarse


@FACTORIES
def test_same_seed_gives_the_same_codes(make: Factory, train, test_rows) -> None:
    a = fitted(make(2, cache=FitCache()), train, seed=5)
    b = fitted(make(2, cache=FitCache()), train, seed=5)
    c = fitted(make(2, cache=FitCache()), train, seed=6)
    x, mask = test_rows
    np.testing.assert_array_equal(a.code_frame(x, mask).recon, b.code_frame(x, mask).recon)
    assert not np.array_equal(a.atoms, c.atoms)


@FACTORIES
def test_decoder_uses_the_quantised_coefficients(make: Factory, train, test_rows) -> None:
    method = fitted(make(1, 2), train)
    x, mask = test_rows
    code = method.encode(x, mask)
    recon = method.code_frame(x, mask).recon
    # L=1 and unit-norm atoms: each row's coefficient is its projection on its one atom.
    atom = method.atoms[code.index[:, 0]]
    coef = np.einsum("nd,nd->n", recon - method.offset, atom)
    q = method.quantiser
    centres = q.lo[code.index[:, 0]] + (code.level[:, 0] + 0.5) / 4 * (
        q.hi[code.index[:, 0]] - q.lo[code.index[:, 0]]
    )
    active = code.active[:, 0]
    np.testing.assert_allclose(coef[active], centres[active], atol=1e-9)
    np.testing.assert_allclose(recon[~active], np.broadcast_to(method.offset, recon[~active].shape))
    assert set(np.unique(code.level)) <= {0, 1, 2, 3}


@FACTORIES
def test_target_weight_one_codes_exactly_as_no_target(make, train, weighted, test_rows) -> None:
    plain, weighted_one = fitted(make(1), train), fitted(make(1), weighted[1.0])
    np.testing.assert_array_equal(weighted_one.scale, np.ones(D))
    for cut in frames(len(test_rows[0])):
        x, mask = test_rows[0][cut], test_rows[1][cut]
        a, b = plain.code_frame(x, mask), weighted_one.code_frame(x, mask)
        np.testing.assert_array_equal(a.recon, b.recon)
        assert a.bits == b.bits


@FACTORIES
def test_target_weight_4_lowers_the_target_error(make, weighted, test_rows) -> None:
    # L=1: one atom cannot fit every KPI, so the weighting decides which it fits best.
    x, mask = test_rows
    errors = {}
    for w, data in weighted.items():
        method = fitted(make(1), data)
        np.testing.assert_array_equal(method.scale, [np.sqrt(w)] + [1.0] * (D - 1))
        recon = method.code_frame(x, mask).recon
        errors[w] = np.mean((recon - x)[:, 0][mask[:, 0]] ** 2)
    assert errors[4.0] < 0.5 * errors[1.0]


def test_aux_loss_turns_dead_latents_towards_the_residual(train, test_rows) -> None:
    # K=64 latents, L=1: some never win the TopK. AuxK trains those on the main residual, so
    # they line up with what the live latents miss. (At this scale it does not make them win:
    # see the module docstring of learned.py.)
    x, mask = test_rows

    def alignment(aux_coef: float) -> float:
        sae = TopKSAE(1, 64, 8, 400, aux_coef=aux_coef, dead_steps=20, cache=FitCache())
        code = fitted(sae, train).encode(x, mask)
        dead = np.ones(64, dtype=bool)
        dead[code.index[code.active]] = False
        resid = (sae.decode(code) - np.nan_to_num(x))[mask.all(axis=1)]
        resid /= np.linalg.norm(resid, axis=1, keepdims=True)
        return float(np.abs(resid @ sae.atoms[dead].T).max(axis=1).mean())

    assert alignment(1 / 32) > alignment(0.0) + 0.05


def test_learned_methods_cover_each_L_at_4_and_8_bits() -> None:
    methods = learned_methods([1, 4], K=K, quick=True)
    seen = {(m.family, m.L, m.setting) for m in methods}
    assert len(seen) == len(methods) == 8
    assert {m.family for m in methods} == {"topk-sae", "omp-dict"}
    assert all(m.lossy and m.seeded for m in methods)


def test_without_a_K_each_baseline_takes_its_own_chosen_on_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(learned, "SAE_K", 24)
    monkeypatch.setattr(learned, "OMP_K", 40)
    own = {(m.family, m.K) for m in learned_methods([1, 2], quick=True)}
    assert own == {("topk-sae", 24), ("omp-dict", 40)}
    assert {m.K for m in learned_methods([1], K=K, quick=True)} == {K}  # --K sets both


def test_settings_differing_only_in_coefficient_bits_share_one_fit(train) -> None:
    sae4, omp4, sae8, omp8 = learned_methods([2], K=K, quick=True)
    for method in (sae4, omp4, sae8, omp8):
        fitted(method, train)  # type: ignore[arg-type]
    assert sae4.atoms is sae8.atoms and omp4.atoms is omp8.atoms  # type: ignore[attr-defined]
    assert (sae4.quantiser.bits, sae8.quantiser.bits) == (4, 8)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "build",
    [
        lambda: TopKSAE(0, K, 8, STEPS),
        lambda: TopKSAE(4, 2, 8, STEPS),
        lambda: TopKSAE(2, K, 0, STEPS),
        lambda: TopKSAE(2, K, 8, 0),
        lambda: OMPDictionary(2, K, 17),
        lambda: OMPDictionary(2, K, 8, rows=0),
        lambda: learned_methods([], K),
    ],
)
def test_bad_arguments_raise_value_error(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_coding_before_fit_raises_runtime_error(test_rows) -> None:
    with pytest.raises(RuntimeError):
        make_omp(2, cache=FitCache()).code_frame(*test_rows)
