"""The classic baselines on synthetic KPIs: round trips, honest bits, error bounds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zstandard

from sparsetel.cloud.bench import classic
from sparsetel.cloud.bench.method import FRAME, TrainData, frames

D = 4


def _session(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random walk with repeats, on a 0.05 grid, within ±4, with a few missing entries."""
    steps = np.where(rng.random((n, D)) < 0.5, 0.0, rng.normal(scale=0.3, size=(n, D)))
    x = np.clip(np.round(np.cumsum(steps, axis=0) / 0.05) * 0.05, -4, 4)
    mask = rng.random((n, D)) > 0.05
    return np.where(mask, x, 0.0), mask


def _train(seed: int = 0, sessions: int = 6, n: int = 230) -> TrainData:
    rng = np.random.default_rng(seed)
    pairs = [_session(rng, n) for _ in range(sessions)]
    return TrainData(
        names=tuple(f"k{j}" for j in range(D)),
        x=tuple(p[0] for p in pairs),
        mask=tuple(p[1] for p in pairs),
        to_raw=lambda z: z * 2.0 - 90.0,
        from_raw=lambda r: (r + 90.0) / 2.0,
    )


@pytest.fixture(scope="module")
def train() -> TrainData:
    return _train(0)


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, np.ndarray]:
    return _session(np.random.default_rng(123), FRAME)


@pytest.mark.parametrize("cls", [classic.Float32, classic.Float32Zstd, classic.Gorilla])
def test_lossless_codecs_reproduce_raw_values_and_nan_positions(cls, train, frame) -> None:
    method = cls()
    method.fit(train, seed=0)
    sent, back, _ = method.round_trip(*frame)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back), ~frame[1])
    np.testing.assert_array_equal(sent.view(np.uint32), back.view(np.uint32))
    coded = method.code_frame(*frame)
    observed = frame[1]
    np.testing.assert_allclose(coded.recon[observed], frame[0][observed], atol=1e-5)
    assert not method.lossy


def test_float32_costs_32_bits_per_kpi(train, frame) -> None:
    method = classic.Float32()
    method.fit(train, 0)
    assert method.code_frame(*frame).bits == 32 * FRAME * D


def test_float32_zstd_bits_are_the_whole_column_major_output(train, frame) -> None:
    method = classic.Float32Zstd()
    method.fit(train, 0)
    sent, _, bits = method.round_trip(*frame)
    column_major = np.ascontiguousarray(sent.T).tobytes()
    expected = zstandard.ZstdCompressor(level=19).compress(column_major)
    assert bits == 8 * len(expected)
    assert bits < 32 * FRAME * D


def test_gorilla_bits_sum_the_column_streams(train, frame) -> None:
    from sparsetel.cloud.bench import gorilla

    method = classic.Gorilla()
    method.fit(train, 0)
    sent, _, bits = method.round_trip(*frame)
    assert bits == sum(gorilla.encode(sent[:, j].copy())[1] for j in range(D))


@pytest.mark.parametrize("bits", [2, 6, 10])
def test_quant_zstd_error_is_within_half_a_cell_inside_the_range(bits, train, frame) -> None:
    method = classic.QuantZstd(bits)
    method.fit(train, 0)
    lo = np.concatenate([q.lo for q in method._quantisers])
    hi = np.concatenate([q.hi for q in method._quantisers])
    x, mask = frame
    inside = mask & (x >= lo) & (x <= hi)
    coded = method.code_frame(x, mask)
    half = (hi - lo) / 2**bits / 2
    assert np.all(np.abs(coded.recon - x)[inside] <= np.broadcast_to(half, x.shape)[inside] + 1e-12)
    assert coded.bits % 8 == 0 and coded.bits > 0


def test_quant_zstd_bits_grow_with_resolution(train, frame) -> None:
    costs = []
    for bits in (2, 6, 10):
        method = classic.QuantZstd(bits)
        method.fit(train, 0)
        costs.append(method.code_frame(*frame).bits)
    assert costs[0] < costs[1] < costs[2]


def test_pca_costs_l_times_coef_bits_and_improves_with_l(train, frame) -> None:
    x, mask = frame
    errors = []
    for L in (1, D):
        method = classic.PCA(L, 8)
        method.fit(train, 0)
        coded = method.code_frame(x, mask)
        assert coded.bits == FRAME * L * 8 and method.L == L
        errors.append(np.mean((coded.recon - x)[mask] ** 2))
    assert errors[1] < errors[0]


def test_pca_rejects_more_components_than_kpis(train) -> None:
    with pytest.raises(ValueError):
        classic.PCA(D + 1, 6).fit(train, 0)


@pytest.mark.parametrize("kind", ["previous", "linear"])
@pytest.mark.parametrize("step", [0.01, 0.1, 0.5])
def test_predictive_error_stays_within_half_a_step(kind, step, train, frame) -> None:
    method = classic.Predictive(kind, step)
    method.fit(train, 0)
    x, mask = frame
    coded = method.code_frame(x, mask)
    assert np.abs(coded.recon - x)[mask].max() <= step / 2 + 1e-9
    assert coded.bits % 32 == 0


@pytest.mark.parametrize("kind", ["previous", "linear"])
def test_predictive_bits_decrease_as_step_grows(kind, train) -> None:
    rng = np.random.default_rng(7)
    test = [_session(rng, FRAME) for _ in range(4)]
    costs = []
    for step in (0.003, 0.03, 0.3, 1.0):
        method = classic.Predictive(kind, step)
        method.fit(train, 0)
        costs.append(sum(method.code_frame(x, m).bits for x, m in test))
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]


def test_predictive_frames_decode_independently(train) -> None:
    x, mask = _session(np.random.default_rng(5), 3 * FRAME)
    method = classic.Predictive("previous", 0.05)
    method.fit(train, 0)
    cuts = frames(len(x))
    together = [method.code_frame(x[s], mask[s]) for s in cuts]
    alone = method.code_frame(x[cuts[2]], mask[cuts[2]])
    np.testing.assert_array_equal(alone.recon, together[2].recon)
    assert alone.bits == together[2].bits


def test_predictive_codes_values_at_the_clip_edge_and_short_frames(train) -> None:
    method = classic.Predictive("linear", 0.02)
    method.fit(train, 0)
    x = np.array([[6.0, -6.0, 0.0, 5.99], [-6.0, 6.0, 0.0, -6.0], [0.0, 0.0, 6.0, 6.0]])
    coded = method.code_frame(x, np.ones(x.shape, dtype=bool))
    assert np.abs(coded.recon - x).max() <= 0.01 + 1e-9


def test_predictive_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        classic.Predictive("cubic", 0.1)
    with pytest.raises(ValueError):
        classic.Predictive("previous", 0.0)


def test_classic_methods_sweep_satisfies_the_method_attributes() -> None:
    methods = classic.classic_methods([2, 3])
    families = {m.family for m in methods}
    assert {"float32", "float32-zstd", "gorilla", "quant-zstd", "pca"} <= families
    assert sum(m.family == "pca" for m in methods) == 6
    for m in methods:
        assert isinstance(m.setting, str) and isinstance(m.lossy, bool) and m.seeded is False
        assert m.L is None or m.L in (2, 3)


def test_code_frame_before_fit_raises(frame) -> None:
    for method in (classic.Float32(), classic.QuantZstd(4), classic.Predictive("previous", 0.1)):
        with pytest.raises(RuntimeError):
            method.code_frame(*frame)


TARGET = 1  # column of the target KPI "k1" in the weighted tests


def _weighted(train: TrainData, weight: float) -> TrainData:
    return replace(train, target=f"k{TARGET}", target_weight=weight)


LOSSY = [
    lambda: classic.QuantZstd(6),
    lambda: classic.QuantZstd(8),  # weight 4 puts the target above 8 bits: mixed widths
    lambda: classic.PCA(2, 6),
    lambda: classic.Predictive("previous", 0.05),
    lambda: classic.Predictive("linear", 0.02),
]


@pytest.mark.parametrize("build", LOSSY)
def test_target_weight_one_codes_exactly_as_no_target(build, train) -> None:
    x, mask = _session(np.random.default_rng(9), 2 * FRAME)
    plain, weighted = build(), build()
    plain.fit(train, 0)
    weighted.fit(_weighted(train, 1.0), 0)
    for cut in frames(len(x)):
        a, b = plain.code_frame(x[cut], mask[cut]), weighted.code_frame(x[cut], mask[cut])
        np.testing.assert_array_equal(a.recon, b.recon)
        assert a.bits == b.bits


@pytest.mark.parametrize("kind", ["previous", "linear"])
def test_predictive_target_step_halves_at_weight_4(kind, train, frame) -> None:
    method = classic.Predictive(kind, 0.1)
    method.fit(_weighted(train, 4.0), 0)
    expected = np.full(D, 0.1)
    expected[TARGET] = 0.05
    np.testing.assert_allclose(method.steps, expected)
    assert method.alphabets[TARGET] == 2 * method.alphabets[0]
    x, mask = frame
    err = np.abs(method.code_frame(x, mask).recon - x)
    assert err[:, TARGET][mask[:, TARGET]].max() <= 0.025 + 1e-9
    others = np.delete(err, TARGET, axis=1)[np.delete(mask, TARGET, axis=1)]
    assert others.max() <= 0.05 + 1e-9 and others.max() > 0.025  # the others stay coarse


@pytest.mark.parametrize(
    ("bits", "weight", "target_bits"), [(6, 4.0, 7), (8, 16.0, 10), (16, 4.0, 16)]
)
def test_quant_zstd_target_gets_log2_sqrt_weight_more_bits(
    bits, weight, target_bits, train, frame
) -> None:
    method = classic.QuantZstd(bits)
    method.fit(_weighted(train, weight), 0)
    expected = [bits] * D
    expected[TARGET] = target_bits
    assert method.column_bits == tuple(expected)
    x, mask = frame
    q = method._quantisers[TARGET]
    inside = mask[:, TARGET] & (x[:, TARGET] >= q.lo) & (x[:, TARGET] <= q.hi)
    err = np.abs(method.code_frame(x, mask).recon - x)[:, TARGET][inside]
    assert err.max() <= (q.hi[0] - q.lo[0]) / 2**target_bits / 2 + 1e-12


def test_pca_reconstructs_the_target_better_at_weight_4(train, frame) -> None:
    # L=1 of 4 similar random walks: the one component follows whichever KPI weighs most.
    x, mask = frame
    errors = []
    for weight in (1.0, 4.0):
        method = classic.PCA(1, 8)
        method.fit(_weighted(train, weight), 0)
        recon = method.code_frame(x, mask).recon
        errors.append(np.mean((recon - x)[:, TARGET][mask[:, TARGET]] ** 2))
    assert errors[1] < 0.5 * errors[0]


def test_training_frames_follow_the_frame_length_of_the_training_data(train) -> None:
    x, mask, valid = classic.training_frames(replace(train, frame=20))
    per_session = -(-230 // 20)  # the last frame of each 230-measurement session is short
    assert x.shape == (6 * per_session, 20, D) and mask.shape == x.shape
    assert valid.sum() == 6 * 230 and not valid[per_session - 1, 230 % 20 :].any()
    np.testing.assert_array_equal(x[1, :20], train.x[0][20:40])
