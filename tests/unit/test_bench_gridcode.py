"""The grid-aware baselines on synthetic KPIs: bit-exact round trips, escapes, error bounds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sparsetel.cloud.bench import gridcode
from sparsetel.cloud.bench.escape import ESCAPED, EscapeTable, FrameDecoder, FrameEncoder
from sparsetel.cloud.bench.gridcode import GridLossless, GridPredictive
from sparsetel.cloud.bench.method import TrainData, frames
from sparsetel.cloud.codec.normaliser import CLIP

D = 4  # k0..k2 on a 0.05 grid (whole raw units), k3 continuous
GRIDDED = np.array([True, True, True, False])
SCALE = 20.0  # raw = SCALE * x: the 0.05 grid is whole units, and -0.0 stays -0.0


def _session(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random walks with repeats within ±4: k0..k2 on a 0.05 grid, k3 off any grid; a few
    entries missing."""
    moves = np.where(rng.random((n, D)) < 0.5, 0.0, rng.normal(scale=0.3, size=(n, D)))
    x = np.cumsum(moves, axis=0)
    x[:, GRIDDED] = np.round(x[:, GRIDDED] / 0.05) * 0.05
    x = np.clip(x, -4, 4)
    mask = rng.random((n, D)) > 0.05
    return np.where(mask, x, 0.0), mask


def _train(target_weight: float = 1.0, frame: int = 50, target: str = "k1") -> TrainData:
    rng = np.random.default_rng(0)
    pairs = [_session(rng, 230) for _ in range(6)]
    return TrainData(
        names=tuple(f"k{j}" for j in range(D)),
        x=tuple(p[0] for p in pairs),
        mask=tuple(p[1] for p in pairs),
        to_raw=lambda z: z * SCALE,
        from_raw=lambda r: r / SCALE,
        target=target,
        target_weight=target_weight,
        frame=frame,
    )


@pytest.fixture(scope="module")
def train() -> TrainData:
    return _train()


def _hostile(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame with what a codec can trip on: missing entries, off-grid values, -0.0, huge
    jumps (beyond what int64 grid indices hold, and to inf) and values never seen."""
    x, mask = _session(rng, n)
    cells = rng.integers(0, n * D, size=max(1, n // 3))
    specials = np.array([0.0123, -0.0, 1e6, 5e10, -1e30, 1.5e37, np.inf, 2.5e-40, 7.77])
    x.flat[cells] = rng.choice(specials, size=cells.size)
    mask.flat[cells] = True
    x[:, 1][rng.random(n) < 0.3] += 40.0  # a jump of 800 raw units, far past training
    return x, mask


@pytest.mark.parametrize("predictor", ["delta", "linear"])
@pytest.mark.parametrize("table", ["static", "adaptive"])
@pytest.mark.parametrize("n", [1, 7, 50])
def test_lossless_round_trip_is_bit_exact_on_hostile_frames(predictor, table, n, train) -> None:
    method = GridLossless(predictor, table)
    method.fit(train, seed=0)
    rng = np.random.default_rng(n)
    for _ in range(12):
        x, mask = _hostile(rng, n)
        sent, back, bits = method.round_trip(x, mask)
        assert back.dtype == np.float32 and back.shape == (n, D)
        np.testing.assert_array_equal(sent.view(np.uint32), back.view(np.uint32))
        np.testing.assert_array_equal(np.isnan(back), ~mask)
        assert bits > 0 and bits % 32 == 0


def test_lossless_keeps_negative_zero_on_and_off_the_grid(train) -> None:
    method = GridLossless()
    method.fit(train, 0)
    x = np.array([[-0.0, 0.0, 0.05, -0.0], [0.0, -0.0, -0.0, 0.0]])
    sent, back, _ = method.round_trip(x, np.ones(x.shape, dtype=bool))
    assert np.signbit(sent).sum() == 4
    np.testing.assert_array_equal(sent.view(np.uint32), back.view(np.uint32))


def test_lossless_finds_the_raw_grid_and_beats_raw_floats(train) -> None:
    method = GridLossless()
    method.fit(train, 0)
    np.testing.assert_allclose(method._grid.step[:3], 1.0)
    assert method._grid.step[3] == 0
    x, mask = _session(np.random.default_rng(3), 50)
    coded = method.code_frame(x, mask)
    np.testing.assert_allclose(coded.recon[mask], x[mask], atol=1e-6)
    np.testing.assert_array_equal(coded.recon[~mask], 0.0)
    assert coded.bits < 0.5 * 32 * mask.sum()


def test_lossless_sends_off_grid_values_raw_and_unseen_jumps_escaped(train) -> None:
    method = GridLossless()
    method.fit(train, 0)
    x = np.zeros((5, D))
    x[:, 0] = [0.0, 0.0123, 30.0, 30.05, 0.0]  # off grid, then jumps of 600 raw units
    mask = np.ones(x.shape, dtype=bool)
    tokens, first = (a[0] for a in method._tokens(method.round_trip(x, mask)[0][None]))
    assert tokens[1, 0] == gridcode.OFF_GRID
    rest = method._tables[D]  # KPI 0's table after its first value
    escaped = rest.index(tokens[~first[:, 0], 0]) == rest.escape
    assert escaped.sum() >= 2
    sent, back, bits = method.round_trip(x, mask)
    np.testing.assert_array_equal(sent.view(np.uint32), back.view(np.uint32))
    words, packed_bits = method._pack(sent)
    assert bits == packed_bits == 32 * words.size


def test_lossless_fits_its_tables_for_the_frame_size_it_is_given() -> None:
    method = GridLossless()
    method.fit(_train(frame=10), 0)
    x, mask = _hostile(np.random.default_rng(9), 10)
    sent, back, _ = method.round_trip(x, mask)
    np.testing.assert_array_equal(sent.view(np.uint32), back.view(np.uint32))


def test_escape_table_counts_seen_values_and_singletons_for_the_escape() -> None:
    table = EscapeTable.fit(np.array([3, 3, 3, -1, 7, 9]), always=(100,))
    np.testing.assert_array_equal(table.values, [-1, 3, 7, 9, 100])
    np.testing.assert_array_equal(table.counts, [1, 3, 1, 1, 1, 3])  # escape: 3 singletons
    np.testing.assert_array_equal(table.index(np.array([3, 4, 100, -5])), [1, 5, 4, 5])
    assert EscapeTable.fit(np.zeros(0, dtype=np.int64)).values.size == 1


@pytest.mark.parametrize("memory", [None, 16])
def test_frame_stream_round_trips_any_integers_and_raw_words(memory) -> None:
    rng = np.random.default_rng(4)
    small, binary = (
        EscapeTable.fit(rng.integers(-3, 4, 200)),
        EscapeTable.fit(rng.integers(0, 2, 50)),
    )
    wide = EscapeTable.fit(rng.integers(-300, 300, 2000))  # more symbols than adapt one by one
    assert wide.tail_model is not None
    groups = [
        np.array([0, 1, -2, 2**52, -(2**53) + 1, 5, 0, 3]),
        rng.integers(-3, 4, 40),
        np.array([1, 0, -7, 0]),
        rng.integers(-310, 310, 60),
    ]
    use = [small, small, binary, wide]
    raw = np.array([0, 1, 2**31, 2**32 - 1, 0xDEADBEEF], dtype=np.uint32)
    encoder = FrameEncoder(memory)
    for table, values in zip(use, groups, strict=True):
        encoder.write(table, values)
    encoder.write_raw(raw)
    words = encoder.words()
    decoder = FrameDecoder(words, memory)
    read = [decoder.read(table, v.size) for table, v in zip(use, groups, strict=True)]
    assert (read[0] == ESCAPED).sum() == 3
    for got, want in zip(decoder.resolve(read), groups, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(decoder.read_raw(raw.size), raw)
    assert words.dtype == np.uint32 and words.size >= 1


def test_escapes_cost_more_than_seen_symbols() -> None:
    table = EscapeTable.fit(np.repeat(np.arange(-3, 4), 20))

    def cost(values: np.ndarray) -> int:
        encoder = FrameEncoder()
        encoder.write(table, values)
        return 32 * int(encoder.words().size)

    assert cost(np.zeros(60, dtype=np.int64)) < cost(np.full(60, 1000))


@pytest.mark.parametrize("kind", ["previous", "linear"])
@pytest.mark.parametrize("step", [0.003, 0.1, 0.7])
@pytest.mark.parametrize("table", ["static", "adaptive"])
def test_predictive_error_stays_within_half_of_each_kpis_step(kind, step, table, train) -> None:
    method = GridPredictive(kind, step, table)
    method.fit(train, 0)
    rng = np.random.default_rng(11)
    for n in (1, 7, 50):
        x, mask = _session(rng, n)
        x[n // 2, 0] = 6.0  # at the normaliser's clip
        coded = method.code_frame(x, mask)
        err = np.abs(coded.recon - x)
        assert np.all(err[mask] <= np.broadcast_to(method.steps / 2, x.shape)[mask] + 1e-9)
        assert coded.bits > 0 and coded.bits % 32 == 0


@pytest.mark.parametrize("kind", ["previous", "linear"])
def test_predictive_decoder_tracks_the_encoders_state_exactly(kind, train) -> None:
    method = GridPredictive(kind, 0.07, "adaptive")
    method.fit(train, 0)
    x, mask = _session(np.random.default_rng(13), 50)
    _, state = method._loop(x[None], mask[None])
    recon = method.code_frame(x, mask).recon
    np.testing.assert_array_equal(recon, np.clip(state[0], -CLIP, CLIP))


def test_predictive_steps_are_whole_grid_steps_where_there_is_a_grid(train) -> None:
    method = GridPredictive("previous", 0.12)
    method.fit(train, 0)
    np.testing.assert_allclose(method.steps[[0, 2]], 0.1)  # 0.12 -> two 0.05 steps
    assert method.steps[3] == pytest.approx(0.12)


@pytest.mark.parametrize("kind", ["previous", "linear"])
def test_predictive_gridded_kpis_decode_exactly_at_a_finer_step(kind, train) -> None:
    method = GridPredictive(kind, 1e-3)
    method.fit(train, 0)
    np.testing.assert_allclose(method.steps[GRIDDED], 0.05)
    x, mask = _session(np.random.default_rng(12), 50)
    recon = method.code_frame(x, mask).recon
    on = mask & GRIDDED
    np.testing.assert_allclose(recon[on], x[on], atol=1e-9)
    assert np.abs(recon - x)[mask & ~GRIDDED].max() <= 5e-4 + 1e-12


@pytest.mark.parametrize(("target", "step"), [(1, 0.5), (3, 0.012)])  # on a grid, off any
def test_target_weight_halves_the_targets_step_and_error(target, step) -> None:
    plain, weighted = GridPredictive("previous", step), GridPredictive("previous", step)
    plain.fit(_train(1.0, target=f"k{target}"), 0)
    weighted.fit(_train(4.0, target=f"k{target}"), 0)
    assert weighted.steps[target] == pytest.approx(plain.steps[target] / 2)
    others = [j for j in range(D) if j != target]
    np.testing.assert_array_equal(weighted.steps[others], plain.steps[others])
    x, mask = _session(np.random.default_rng(8), 50)
    err = np.abs(weighted.code_frame(x, mask).recon - x)[:, target][mask[:, target]]
    assert err.max() <= step / 4 + 1e-9


def test_target_weight_leaves_the_step_on_the_grid() -> None:
    weighted = GridPredictive("previous", 0.3)
    weighted.fit(_train(4.0), 0)
    assert weighted.steps[1] == pytest.approx(0.15)  # three grid steps, not 0.3 / 2 off grid


@pytest.mark.parametrize("kind", ["previous", "linear"])
def test_predictive_bits_fall_as_the_step_grows(kind, train) -> None:
    rng = np.random.default_rng(7)
    test = [_session(rng, 50) for _ in range(4)]
    costs = []
    for step in (0.01, 0.1, 0.4, 1.5):
        method = GridPredictive(kind, step)
        method.fit(train, 0)
        costs.append(sum(method.code_frame(x, m).bits for x, m in test))
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]


@pytest.mark.parametrize(
    "method", [GridPredictive("linear", 0.05, "adaptive"), GridLossless("linear", "adaptive")]
)
def test_frames_decode_independently(method, train) -> None:
    method.fit(train, 0)
    x, mask = _session(np.random.default_rng(5), 3 * 50)
    cuts = frames(len(x), 50)
    together = [method.code_frame(x[s], mask[s]) for s in cuts]
    alone = method.code_frame(x[cuts[2]], mask[cuts[2]])
    np.testing.assert_array_equal(alone.recon, together[2].recon)
    assert alone.bits == together[2].bits


def test_code_frame_before_fit_raises() -> None:
    x, mask = _session(np.random.default_rng(1), 5)
    for method in (GridLossless(), GridPredictive("previous", 0.1)):
        with pytest.raises(RuntimeError):
            method.code_frame(x, mask)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        GridLossless("cubic")
    with pytest.raises(ValueError):
        GridLossless(table="dynamic")
    with pytest.raises(ValueError):
        GridPredictive("previous", 0.0)
    with pytest.raises(ValueError):
        GridPredictive("cubic", 0.1)
    with pytest.raises(ValueError):
        GridPredictive("previous", 0.1, "adaptive", memory=0)


def test_grid_methods_sweep_both_ends_densely() -> None:
    methods = gridcode.grid_methods()
    assert [m.family for m in methods[:1]] == ["grid-lossless"]
    for kind in ("previous", "linear"):
        steps = [m.step for m in methods if m.family == f"grid-predictive-{kind}"]
        assert len(steps) >= 20 and min(steps) <= 1e-4 and max(steps) >= 4
        assert max(np.diff(np.log(steps))) < np.log(2.1)  # at most about twice apart
        middle = [s for s in steps if 0.05 <= s <= 0.5]  # 20 to 40 dB on uccmisl
        assert len(middle) >= 10 and max(np.diff(np.log(middle))) < np.log(1.3)
    settings = [(m.family, m.setting) for m in methods]
    assert len(set(settings)) == len(settings)
    for m in methods:
        assert m.seeded is False and m.L is None and isinstance(m.setting, str)
    adaptive = gridcode.grid_methods([0.1], table="adaptive", predictor="linear")
    assert [m.setting for m in adaptive] == ["linear, adaptive", *["step=0.1, adaptive"] * 2]


def test_grid_methods_code_a_short_training_frame_size() -> None:
    train = replace(_train(), frame=7)
    for method in gridcode.grid_methods([0.05]):
        method.fit(train, 0)
        x, mask = _session(np.random.default_rng(2), 7)
        assert method.code_frame(x, mask).recon.shape == (7, D)
