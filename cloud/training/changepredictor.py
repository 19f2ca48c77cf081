"""Predict a target KPI h steps ahead as a change over its last decoded value: `ChangePredictor`.

The cloud sees decoded KPIs (a lossy reconstruction, normalised), never the raw ones. The
prediction for row t is ``base_t + a * change_t``: `base_t` is the decoded target at t in raw
units (forward-filled within the session; the training mean when the target is not coded or
not yet seen), `change_t` a learner's guess at ``y[t + h] - base_t`` from the last W decoded
measurements, and `a` (the shrinkage) is chosen on the validation sessions by MAE from
`SHRINK_GRID`; ``a = 0`` is decoded persistence, so a learner that finds nothing costs nothing.

Every learner minimises the absolute error, as the metric is MAE: "linear" and "mlp" (torch,
L1 loss; the MLP an average of `_MLP_MEMBERS` nets), run here in numpy, and "trees"
(sklearn's HistGradientBoostingRegressor, ``loss="absolute_error"``), run here from its node
arrays. The learner with the lowest validation MAE after its own shrinkage is kept. `save`
writes plain data (JSON and .npz, no pickle), so loading a run directory runs no code from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from ...shared.temporalcodec import TemporalCodec
from ..codec.normaliser import forward_fill

__all__ = [
    "CONFIG_FILE",
    "LEARNERS",
    "MAX_TRAIN_ROWS",
    "SHRINK_GRID",
    "WEIGHTS_FILE",
    "ChangePredictor",
    "ToRaw",
    "fit_change_predictor",
    "target_column",
    "target_scores",
]

CONFIG_FILE = "change_predictor.json"
WEIGHTS_FILE = "change_predictor.npz"
LEARNERS = ("linear", "mlp", "trees")
SHRINK_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, ..., 1.0
_PROBE = np.linspace(-6.0, 6.0, 25)  # `to_raw_target` is recorded here, and checked on load
_HIDDEN = (128, 64)
_MLP_MEMBERS = 2  # nets averaged: one net's validation MAE swings by about 1% with its seed
_EPOCHS, _BATCH, _LR = 12, 512, 2e-3
_MIN_STEPS = 1000  # small data sets get more epochs, so that a net trains at all
_TREE_ITER = 200
MAX_TRAIN_ROWS = 200_000  # training windows beyond this are thinned evenly (fit time; MAE suffers)

ToRaw = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Spec:
    """What turns decoded KPIs into features: shapes, the target's column, scales."""

    dims: int
    target_index: int | None
    horizon: int
    window: int
    mean: float  # training mean of the raw target: the base when no decoded target is seen
    scale: float  # training std of the raw target: changes are learned in these units
    probe: tuple[float, ...] = ()  # to_raw_target(_PROBE), () when the target is not coded


def _features(zhat: np.ndarray, spec: _Spec, to_raw: ToRaw | None) -> tuple[np.ndarray, ...]:
    """Features (float64, shape: [T - W + 1, F]) and base (raw units, [T - W + 1]) of the
    windows ending at rows W - 1 .. T - 1 of one session (zhat: [T, D], NaN = missing).

    Per window ending at t, in this order: the W rows of KPIs (NaN as 0; KPI-major: KPI d's
    W values, oldest first), which KPIs row t has (1 or 0), each KPI's share of the window it
    was seen in, each KPI's last step (row t less row t - 1; 0 when W is 1); with the target
    coded, also its W - 1 earlier raw values less the base, and the base, both over `scale`."""
    W = spec.window
    seen = np.isfinite(zhat)
    z = np.where(seen, zhat, 0.0)
    if spec.target_index is None or to_raw is None:
        raw = np.empty(0)
        base = np.full(zhat.shape[0] - W + 1, spec.mean)
    else:
        raw = forward_fill(np.asarray(to_raw(zhat[:, spec.target_index]), dtype=np.float64))
        raw = np.where(np.isfinite(raw), raw, spec.mean)
        base = raw[W - 1 :]
    return _window_features(z, seen, raw, W, float(spec.scale)), base


def _features_many(
    zs: Sequence[np.ndarray], spec: _Spec, to_raw: ToRaw | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`_features` of several sessions (each at least W rows), the target converted and
    forward-filled for all at once (the fill restarts at each session's first row)."""
    if spec.target_index is None or to_raw is None:
        pairs = [_features(z, spec, to_raw) for z in zs]
        return [x for x, _ in pairs], [b for _, b in pairs]
    W, lengths = spec.window, [len(z) for z in zs]
    stacked = np.concatenate(zs)
    values = np.asarray(to_raw(stacked[:, spec.target_index]), dtype=np.float64)
    starts = np.cumsum([0, *lengths[:-1]])
    last = np.where(np.isfinite(values), np.arange(len(values)), -1)
    last[starts] = starts  # NaN at a session's start stays NaN: nothing before it counts
    filled = values[np.maximum.accumulate(last)]
    raw = np.where(np.isfinite(filled), filled, spec.mean)
    seen = np.isfinite(stacked)
    z = np.where(seen, stacked, 0.0)
    xs, bases = [], []
    for start, n in zip(starts.tolist(), lengths, strict=True):
        end = start + n
        r = raw[start:end]
        xs.append(_window_features(z[start:end], seen[start:end], r, W, float(spec.scale)))
        bases.append(r[W - 1 :])
    return xs, bases


@njit(cache=True, nogil=True)
def _window_features(z, seen, raw, W, scale):  # type: ignore[no-untyped-def]
    """`_features`' matrix, compiled: at one frame's few rows numpy's calls cost more than the
    arithmetic (the serving path predicts each frame). `raw`: the target's raw values, or an
    empty array when it is not coded. The same floating-point operations in the same order
    as the numpy expression this replaced, so the same features bit for bit."""
    T, D = z.shape
    n = T - W + 1
    F = D * W + 3 * D + (W if raw.shape[0] else 0)
    out = np.empty((n, F))
    for i in range(n):
        t = i + W - 1
        for d in range(D):
            count = 0.0
            for k in range(W):
                out[i, d * W + k] = z[i + k, d]
                count += 1.0 if seen[i + k, d] else 0.0
            out[i, D * W + d] = 1.0 if seen[t, d] else 0.0
            out[i, D * W + D + d] = count / W
            out[i, D * W + 2 * D + d] = z[t, d] - z[t - 1, d] if W > 1 else 0.0
        if raw.shape[0]:
            at = D * W + 3 * D
            for k in range(W - 1):
                out[i, at + k] = (raw[i + k] - raw[t]) / scale
            out[i, at + W - 1] = raw[t] / scale
    return out


def _check_zhat(zhat: np.ndarray, dims: int) -> np.ndarray:
    z = np.asarray(zhat, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != dims:
        raise ValueError(f"zhat must have shape [T, {dims}], got {list(z.shape)}")
    return z


@dataclass(frozen=True)
class _Net:
    """A ReLU MLP on standardised features (no hidden layer: linear), averaged over members.
    `layers[m]` holds member m's (weight [out, in], bias [out]) pairs."""

    mu: np.ndarray
    sd: np.ndarray
    layers: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Changes in scale units (float64, shape: [N]) for features `x` ([N, F])."""
        h0 = (x - self.mu) / self.sd
        out = np.zeros(len(x))
        for member in self.layers:
            h = h0
            for i, (w, b) in enumerate(member):
                h = h @ w.T.astype(np.float64) + b
                h = np.maximum(h, 0.0) if i < len(member) - 1 else h
            out += h[:, 0]
        return out / len(self.layers)

    def arrays(self) -> dict[str, np.ndarray]:
        named = {"mu": self.mu, "sd": self.sd}
        for m, member in enumerate(self.layers):
            for i, (w, b) in enumerate(member):
                named[f"w{m}_{i}"], named[f"b{m}_{i}"] = w, b
        return named

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], members: int, depth: int) -> _Net:
        layers = tuple(
            tuple((a[f"w{m}_{i}"], a[f"b{m}_{i}"]) for i in range(depth)) for m in range(members)
        )
        return cls(a["mu"], a["sd"], layers)


def _fit_net(x: np.ndarray, u: np.ndarray, hidden: tuple[int, ...], seed: int) -> _Net:
    """Train `_MLP_MEMBERS` (1 when linear) nets with L1 loss on x [N, F] -> u [N]."""
    import torch  # deferred: loading and predicting need numpy only

    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xs = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    us = torch.from_numpy(u.astype(np.float32))
    members = []
    for m in range(_MLP_MEMBERS if hidden else 1):
        torch.manual_seed(seed + m)
        sizes = (x.shape[1], *hidden, 1)
        mods: list[torch.nn.Module] = []
        for i in range(len(sizes) - 1):
            mods += [torch.nn.Linear(sizes[i], sizes[i + 1]), torch.nn.ReLU()]
        net = torch.nn.Sequential(*mods[:-1])
        _train_l1(net, xs, us, torch.Generator().manual_seed(seed + m))
        linears = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
        members.append(
            tuple(
                (a.weight.detach().numpy().copy(), a.bias.detach().double().numpy())
                for a in linears
            )
        )
    return _Net(mu, sd, tuple(members))


def _train_l1(net: Any, x: Any, u: Any, gen: Any) -> None:
    import torch

    per_epoch = max(1, len(x) // _BATCH)
    epochs = max(_EPOCHS, -(-_MIN_STEPS // per_epoch))
    opt = torch.optim.Adam(net.parameters(), lr=_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, _LR, total_steps=epochs * per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(per_epoch):
            rows = order[i * _BATCH : (i + 1) * _BATCH]
            loss = (net(x[rows]).squeeze(1) - u[rows]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@dataclass(frozen=True)
class _Trees:
    """Boosted trees as flat node arrays; `roots` [n_trees] index each tree's first node."""

    baseline: float
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        """ValueError unless every walk down a tree ends at a leaf inside the arrays: the
        compiled walk (`_leaves`) checks no index, so the arrays are checked here, once."""
        n = len(self.leaf)
        arrays = (self.feature, self.threshold, self.left, self.right, self.value)
        if any(len(a) != n for a in arrays) or not len(self.roots):
            raise ValueError("a tree predictor's node arrays differ in length, or it has no tree")
        inner = np.flatnonzero(~self.leaf.astype(bool))
        if np.any((self.roots < 0) | (self.roots >= n)):
            raise ValueError("a tree's root lies outside its nodes")
        # sklearn numbers a node's children after it, so every walk goes forward and ends
        if np.any(self.left[inner] <= inner) or np.any(self.right[inner] <= inner):
            raise ValueError("a tree node's children must come after it")
        if np.any(self.left[inner] >= n) or np.any(self.right[inner] >= n):
            raise ValueError("a tree node's children lie outside its nodes")
        if np.any(self.feature[inner] < 0):
            raise ValueError("a tree node splits on a negative feature")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Changes in scale units (float64, shape: [N]) for features `x` ([N, F])."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(len(x), -1)
        node, whole = _leaves(x, self.roots, self.feature, self.threshold, self.left,
                              self.right, self.leaf.astype(np.bool_, copy=False))  # fmt: skip
        if not whole:
            raise ValueError(f"a tree splits on a feature past the {x.shape[1]} given")
        return np.asarray(self.baseline + self.value[node].sum(axis=1), dtype=np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in asdict(self).items()}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> _Trees:
        names = ("roots", "feature", "threshold", "left", "right", "leaf", "value")
        return cls(float(a["baseline"]), *(a[k] for k in names))


@njit(cache=True, nogil=True)
def _leaves(x, roots, feature, threshold, left, right, leaf):  # type: ignore[no-untyped-def]
    """The leaf each row of `x` reaches in each tree ([N, n_trees] node ids): left where its
    feature is <= the threshold, else right (NaN goes right); and False if a node splits on
    a feature `x` does not have."""
    out = np.empty((x.shape[0], roots.shape[0]), dtype=np.int64)
    for i in range(x.shape[0]):
        for k in range(roots.shape[0]):
            node = roots[k]
            while not leaf[node]:
                if feature[node] >= x.shape[1]:
                    return out, False
                node = left[node] if x[i, feature[node]] <= threshold[node] else right[node]
            out[i, k] = node
    return out, True


def _fit_trees(x: np.ndarray, u: np.ndarray, seed: int) -> _Trees:
    """HistGradientBoostingRegressor (L1), read back as node arrays (features have no NaN, so
    `missing_go_to_left` never matters)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=_TREE_ITER, early_stopping=True, random_state=seed
    ).fit(x, u)
    nodes = [p.nodes for (p,) in model._predictors]
    offsets = np.cumsum([0] + [len(n) for n in nodes[:-1]])
    flat = np.concatenate(nodes)
    shift = np.repeat(offsets, [len(n) for n in nodes])
    return _Trees(
        baseline=float(np.ravel(model._baseline_prediction)[0]),
        roots=offsets.astype(np.int64),
        feature=flat["feature_idx"].astype(np.int64),
        threshold=flat["num_threshold"].astype(np.float64),
        left=(flat["left"] + shift).astype(np.int64),
        right=(flat["right"] + shift).astype(np.int64),
        leaf=flat["is_leaf"].astype(bool),
        value=flat["value"].astype(np.float64),
    )


def target_scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(MAE, R²) of `pred` against `y` (both shape: [M]): how `evaluate` scores every
    predictor, and how this one is chosen."""
    err = pred - y
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / sst if sst > 0 else float("nan")
    return float(np.mean(np.abs(err))), r2


def target_column(codec: TemporalCodec, target: str) -> tuple[int | None, ToRaw | None]:
    """The target's column among a temporal codec's KPIs and the map from that normalised
    column to raw units (`to_raw_target`); (None, None) when the target is not coded."""
    if target not in codec.kpis:
        return None, None
    j = codec.kpis.index(target)

    def to_raw(z: np.ndarray) -> np.ndarray:
        full = np.zeros((len(z), codec.D))
        full[:, j] = z
        return np.asarray(codec.denormalise(full)[:, j], dtype=np.float64)

    return j, to_raw


@dataclass(frozen=True)
class ChangePredictor:
    """A fitted predictor: `predict` maps decoded KPIs (one session) to the target at t + h.

    `learner` names the kept learner, `shrink` is a, and `validation` holds its validation
    scores beside those of persistence, decoded persistence and every learner tried."""

    spec: _Spec
    learner: str
    model: _Net | _Trees
    shrink: float
    validation: dict[str, Any] = field(compare=False)
    to_raw: ToRaw | None = field(default=None, repr=False, compare=False)

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    def predict(self, zhat: np.ndarray) -> np.ndarray:
        """Raw-unit predictions of y[t + h] (float64, shape: [T]) for one session's decoded
        KPIs (zhat: [T, D], normalised, NaN = missing); NaN for t < W - 1."""
        z = _check_zhat(zhat, self.spec.dims)
        out = np.full(len(z), np.nan)
        if len(z) >= self.spec.window:
            x, base = _features(z, self.spec, self.to_raw)
            change = self.spec.scale * self.model.predict(x) if self.shrink else 0.0
            out[self.spec.window - 1 :] = base + self.shrink * change
        return out

    def predict_many(self, sessions: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` of each of several sessions (zhat: [T_i, D] each) with one call each of
        the target's raw units, the forward fill and the trees for all their windows: at a
        frame's few rows the calls, not the arithmetic, are the cost. The same values as
        `predict` of each: the operations are elementwise, each window's trees are walked
        alone (a network's matrix products may round by batch size: it predicts each)."""
        zs = [_check_zhat(z, self.spec.dims) for z in sessions]
        W = self.spec.window
        whole = [i for i, z in enumerate(zs) if len(z) >= W]
        if not isinstance(self.model, _Trees) or len(whole) < 2:
            return [self.predict(z) for z in zs]
        out = [np.full(len(z), np.nan) for z in zs]
        xs, bases = _features_many([zs[i] for i in whole], self.spec, self.to_raw)
        x = np.concatenate(xs)
        change = self.spec.scale * self.model.predict(x) if self.shrink else np.zeros(len(x))
        at = 0
        for i, xi, base in zip(whole, xs, bases, strict=True):
            out[i][W - 1 :] = base + self.shrink * change[at : at + len(xi)]
            at += len(xi)
        return out

    def save(self, path: str | Path) -> None:
        """Write CONFIG_FILE (JSON) and WEIGHTS_FILE (npz, no pickled objects) into `path`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        net = isinstance(self.model, _Net)
        config = {
            "spec": asdict(self.spec),
            "learner": self.learner,
            "shrink": self.shrink,
            "validation": self.validation,
            "members": len(self.model.layers) if isinstance(self.model, _Net) else 0,
            "depth": len(self.model.layers[0]) if isinstance(self.model, _Net) else 0,
            "format": "net" if net else "trees",
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        arrays: dict[str, Any] = self.model.arrays()
        np.savez(folder / WEIGHTS_FILE, **arrays)

    @classmethod
    def load(cls, path: str | Path, to_raw_target: ToRaw | None = None) -> ChangePredictor:
        """Read what `save` wrote. `to_raw_target` must be the mapping it was fitted with
        (checked on a grid); ValueError when it is missing or differs."""
        folder = Path(path)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        spec = _Spec(**{**config["spec"], "probe": tuple(config["spec"]["probe"])})
        _check_probe(spec, to_raw_target)
        with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        model: _Net | _Trees
        if config["format"] == "net":
            model = _Net.from_arrays(arrays, int(config["members"]), int(config["depth"]))
        else:
            model = _Trees.from_arrays(arrays)
        raw = to_raw_target if spec.probe else None
        return cls(
            spec, config["learner"], model, float(config["shrink"]), config["validation"], raw
        )


def _probe(to_raw: ToRaw | None) -> tuple[float, ...]:
    return () if to_raw is None else tuple(float(v) for v in to_raw(_PROBE.copy()))


def _check_probe(spec: _Spec, to_raw: ToRaw | None) -> None:
    if bool(spec.probe) != (to_raw is not None):
        raise ValueError("to_raw_target must be given exactly when the target is coded")
    if to_raw is not None and not np.allclose(_probe(to_raw), spec.probe, rtol=1e-9):
        raise ValueError("to_raw_target differs from the mapping the predictor was fitted with")


def _rows(
    sessions: Sequence[tuple[np.ndarray, np.ndarray]], spec: _Spec, to_raw: ToRaw | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scored rows of all sessions: features [M, F], base [M], y[t + h] [M] and y's last
    observed value at or before t [M] (persistence, NaN when none yet)."""
    xs, bases, ys, lasts = [], [], [], []
    W, h = spec.window, spec.horizon
    for zhat, y in sessions:
        z, y = _check_zhat(zhat, spec.dims), np.asarray(y, dtype=np.float64)
        if y.shape != (len(z),):
            raise ValueError(f"y must have shape [{len(z)}] like zhat, got {list(y.shape)}")
        t = np.arange(W - 1, len(y) - h)
        t = t[np.isfinite(y[t + h])]
        if t.size:
            x, base = _features(z, spec, to_raw)
            xs.append(x[t - W + 1])
            bases.append(base[t - W + 1])
            ys.append(y[t + h])
            lasts.append(forward_fill(y)[t])
    if not xs:
        raise ValueError(f"no session has a full window of {W} rows and an observed y[t + {h}]")
    return tuple(np.concatenate(a) for a in (xs, bases, ys, lasts))  # type: ignore[return-value]


def _make_spec(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    target_index: int | None,
    horizon: int,
    window: int,
    to_raw: ToRaw | None,
) -> _Spec:
    if not train:
        raise ValueError("no training session")
    dims = int(np.shape(train[0][0])[1]) if np.ndim(train[0][0]) == 2 else -1
    if dims < 1 or horizon < 1 or window < 1:
        raise ValueError(f"need zhat [T, D >= 1], horizon >= 1, window >= 1 (D={dims})")
    if target_index is not None and not 0 <= target_index < dims:
        raise ValueError(f"target_index {target_index} is not a column of D={dims} KPIs")
    if (target_index is None) != (to_raw is None):
        raise ValueError("to_raw_target must be given exactly when target_index is")
    y = np.concatenate([np.asarray(s[1], dtype=np.float64).ravel() for s in train])
    y = y[np.isfinite(y)]
    if y.size < 2:
        raise ValueError("the training target has fewer than 2 observed values")
    scale = float(y.std()) if y.std() > 1e-9 else 1.0
    return _Spec(dims, target_index, horizon, window, float(y.mean()), scale, _probe(to_raw))


def _fit_learner(name: str, x: np.ndarray, u: np.ndarray, seed: int) -> _Net | _Trees:
    if name == "trees":
        return _fit_trees(x, u, seed)
    return _fit_net(x, u, _HIDDEN if name == "mlp" else (), seed)


def _choose_shrink(base: np.ndarray, change: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The a of SHRINK_GRID with the lowest MAE (the smallest a on ties), and its scores."""
    maes = [target_scores(y, base + a * change)[0] for a in SHRINK_GRID]
    a = SHRINK_GRID[int(np.argmin(maes))]
    mae, r2 = target_scores(y, base + a * change)
    return {"shrink": a, "mae": mae, "r2": r2}


def fit_change_predictor(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    val: Sequence[tuple[np.ndarray, np.ndarray]],
    target_index: int | None,
    horizon: int = 1,
    window: int = 8,
    to_raw_target: ToRaw | None = None,
    seed: int = 0,
    learners: Sequence[str] = LEARNERS,
    max_rows: int = MAX_TRAIN_ROWS,
) -> ChangePredictor:
    """Fit every learner in `learners` on `train`, keep the best by validation MAE.

    train, val: per session (zhat [T, D] normalised decoded KPIs, NaN = missing; y [T] the raw
    target, NaN = missing). `target_index` is the target's column in zhat (None when it is not
    coded) and `to_raw_target` maps that column to raw units (None exactly then). Training
    windows beyond `max_rows` are thinned evenly.
    ValueError on bad shapes or when no session yields a full window with a label."""
    if not learners or set(learners) - set(LEARNERS):
        raise ValueError(f"learners must be some of {LEARNERS}, got {list(learners)}")
    spec = _make_spec(train, target_index, horizon, window, to_raw_target)
    xt, bt, yt, _ = _rows(train, spec, to_raw_target)
    if len(yt) > max_rows:
        keep = np.linspace(0, len(yt) - 1, max_rows).astype(np.int64)
        xt, bt, yt = xt[keep], bt[keep], yt[keep]
    xv, bv, yv, lv = _rows(val, spec, to_raw_target)
    persistence = np.where(np.isfinite(lv), lv, spec.mean)
    validation: dict[str, Any] = {
        "rows": len(yv),
        "persistence": dict(zip(("mae", "r2"), target_scores(yv, persistence), strict=True)),
        "decoded_persistence": dict(zip(("mae", "r2"), target_scores(yv, bv), strict=True)),
        "learners": {},
    }
    models: dict[str, _Net | _Trees] = {}
    for name in learners:
        models[name] = _fit_learner(name, xt, (yt - bt) / spec.scale, seed)
        change = spec.scale * models[name].predict(xv)
        validation["learners"][name] = _choose_shrink(bv, change, yv)
    best = min(learners, key=lambda n: validation["learners"][n]["mae"])
    chosen = validation["learners"][best]
    validation.update(learner=best, mae=chosen["mae"], r2=chosen["r2"])
    return ChangePredictor(spec, best, models[best], chosen["shrink"], validation, to_raw_target)
