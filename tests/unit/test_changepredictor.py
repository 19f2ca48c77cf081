"""`fit_change_predictor`: a change learned with an L1 loss, shrunk on validation, never worse
than decoded persistence there; plain-data save and load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.codec.normaliser import forward_fill
from sparsetel.cloud.training.changepredictor import (
    SHRINK_GRID,
    ChangePredictor,
    _features,
    _Spec,
    _Trees,
    fit_change_predictor,
)


def _sessions(n: int, seed: int, predictable: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sessions of two KPIs: the target (column 0) and a leading indicator (column 1) that
    announces the target's next change when `predictable`, noise otherwise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        steps = rng.normal(0, 1, 300)
        y = np.cumsum(steps)
        lead = np.roll(steps, -1) if predictable else rng.normal(0, 1, 300)
        z = np.stack([y / 10, lead], axis=1)
        out.append((z, y))
    return out


def _to_raw(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float64) * 10


@pytest.mark.parametrize("learner", ["linear", "trees"])
def test_a_predictable_change_beats_persistence_on_validation(learner: str) -> None:
    train, val = _sessions(4, 0, True), _sessions(2, 1, True)
    p = fit_change_predictor(train, val, 0, 1, 4, _to_raw, seed=0, learners=[learner])
    assert p.shrink > 0.5
    assert p.validation["mae"] < 0.6 * p.validation["persistence"]["mae"]


def test_noise_gets_a_small_shrink_and_is_never_worse_than_decoded_persistence() -> None:
    train, val = _sessions(4, 0, False), _sessions(2, 1, False)
    p = fit_change_predictor(train, val, 0, 1, 4, _to_raw, seed=0, learners=["linear"])
    assert p.shrink in SHRINK_GRID and p.shrink <= 0.5
    assert p.validation["mae"] <= p.validation["decoded_persistence"]["mae"] + 1e-9


def test_save_and_load_keep_the_predictions(tmp_path: Path) -> None:
    train, val = _sessions(3, 0, True), _sessions(1, 1, True)
    p = fit_change_predictor(train, val, 0, 1, 4, _to_raw, seed=0, learners=["trees"])
    p.save(tmp_path)
    q = ChangePredictor.load(tmp_path, _to_raw)
    z = val[0][0]
    assert np.array_equal(p.predict(z), q.predict(z), equal_nan=True)
    assert not any(tmp_path.glob("*.pkl"))


def test_bad_inputs_are_refused_with_a_reason() -> None:
    train = _sessions(1, 0, True)
    with pytest.raises(ValueError, match="learners"):
        fit_change_predictor(train, train, 0, 1, 4, _to_raw, learners=["forest"])
    with pytest.raises(ValueError, match="target_index"):
        fit_change_predictor(train, train, 5, 1, 4, _to_raw)
    with pytest.raises(ValueError, match="exactly"):
        fit_change_predictor(train, train, 0, 1, 4, None)
    with pytest.raises(ValueError, match="full window"):
        fit_change_predictor(train, [(train[0][0][:3], train[0][1][:3])], 0, 1, 4, _to_raw)


def _walk(trees: _Trees, row: np.ndarray) -> float:
    """One row down every tree, node by node: the reference for the compiled walk."""
    total = 0.0
    for root in trees.roots:
        node = int(root)
        while not trees.leaf[node]:
            go_left = row[trees.feature[node]] <= trees.threshold[node]
            node = int(trees.left[node] if go_left else trees.right[node])
        total += trees.value[node]
    return trees.baseline + total


def test_the_compiled_tree_walk_reaches_the_leaves_a_plain_walk_reaches() -> None:
    train, val = _sessions(3, 0, True), _sessions(1, 1, True)
    p = fit_change_predictor(train, val, 0, 1, 4, _to_raw, seed=0, learners=["trees"])
    trees = p.model
    assert isinstance(trees, _Trees)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (300, int(trees.feature.max()) + 1))
    x[rng.random(x.shape) < 0.1] = np.nan  # NaN goes right
    want = np.array([_walk(trees, row) for row in x])
    assert np.allclose(trees.predict(x), want, rtol=0, atol=1e-9)


def _numpy_features(zhat: np.ndarray, spec: _Spec, to_raw: Any) -> tuple[np.ndarray, ...]:
    """The feature matrix as numpy expressions: the reference for the compiled one."""
    W, T = spec.window, zhat.shape[0]
    seen = np.isfinite(zhat)
    z = np.where(seen, zhat, 0.0)
    win = np.lib.stride_tricks.sliding_window_view(z, W, axis=0)  # [T', D, W]
    seen_win = np.lib.stride_tricks.sliding_window_view(seen, W, axis=0).mean(axis=2)
    step = z[W - 1 :] - z[W - 2 : T - 1] if W > 1 else np.zeros_like(z)
    parts = [win.reshape(T - W + 1, -1), seen[W - 1 :], seen_win, step]
    if to_raw is None:
        return np.concatenate(parts, axis=1), np.full(T - W + 1, spec.mean)
    raw = forward_fill(np.asarray(to_raw(zhat[:, spec.target_index]), dtype=np.float64))
    raw = np.where(np.isfinite(raw), raw, spec.mean)
    base = raw[W - 1 :]
    past = np.lib.stride_tricks.sliding_window_view(raw, W)[:, :-1]
    parts += [(past - base[:, None]) / spec.scale, base[:, None] / spec.scale]
    return np.concatenate(parts, axis=1), base


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 12])
@pytest.mark.parametrize("coded", [True, False])
def test_the_compiled_features_are_numpys_bit_for_bit(window: int, coded: bool) -> None:
    rng = np.random.default_rng(window)
    for T in (window, window + 1, 60):
        zhat = rng.normal(0, 1.5, (T, 4))
        zhat[rng.random(zhat.shape) < 0.3] = np.nan
        spec = _Spec(4, 2 if coded else None, 1, window, 3.7, 0.3)
        to_raw = _to_raw if coded else None
        got, want = _features(zhat, spec, to_raw), _numpy_features(zhat, spec, to_raw)
        assert got[0].dtype == np.float64 and got[0].shape == want[0].shape
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _tree(**change: np.ndarray) -> dict[str, Any]:
    """A stump: node 0 splits feature 0 at 0.5 into leaves 1 and 2."""
    arrays = {
        "baseline": 0.0, "roots": np.array([0]), "feature": np.array([0, 0, 0]),
        "threshold": np.array([0.5, 0.0, 0.0]), "left": np.array([1, 0, 0]),
        "right": np.array([2, 0, 0]), "leaf": np.array([False, True, True]),
        "value": np.array([0.0, -1.0, 1.0]),
    }  # fmt: skip
    return {**arrays, **change}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"left": np.array([0, 0, 0])}, "after it"),
        ({"right": np.array([2, 0, 0]), "left": np.array([7, 0, 0])}, "outside its nodes"),
        ({"roots": np.array([3])}, "root"),
        ({"feature": np.array([-1, 0, 0])}, "negative feature"),
        ({"value": np.array([0.0, 1.0])}, "length"),
    ],
    ids=["a loop back", "a child past the end", "a root past the end", "feature -1", "short"],
)
def test_a_tree_that_could_walk_outside_its_nodes_is_refused(change, reason) -> None:
    assert _Trees(**_tree()).predict(np.array([[0.0], [1.0]])).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match=reason):
        _Trees(**_tree(**change))


def test_a_tree_splitting_on_a_feature_not_given_is_refused() -> None:
    with pytest.raises(ValueError, match="feature past"):
        _Trees(**_tree(feature=np.array([3, 0, 0]))).predict(np.zeros((2, 2)))


@pytest.mark.parametrize("learner", ["linear", "trees"])
def test_predicting_many_sessions_at_once_gives_each_ones_predictions(learner: str) -> None:
    """What a worker predicts for a batch of frames: windows of a few rows, NaN among them
    (at a session's start too, where the target's forward fill must not reach back into the
    session before), shorter than the window, and one long session."""
    train, val = _sessions(3, 0, True), _sessions(1, 1, True)
    p = fit_change_predictor(train, val, 0, 1, 4, _to_raw, seed=0, learners=[learner])
    z = val[0][0].copy()
    z[[0, 7, 8, 40], 0] = np.nan
    z[12, 1] = np.inf
    sessions = [z[:4], z[7:11], z[5:7], z[12:16], z[3:9], z, z[38:44], z[:0]]
    many = p.predict_many(sessions)
    assert len(many) == len(sessions)
    for one, got in zip(sessions, many, strict=True):
        assert np.array_equal(p.predict(one), got, equal_nan=True)
    assert np.isfinite(many[1]).any()  # a window starting at a missing target still predicts
