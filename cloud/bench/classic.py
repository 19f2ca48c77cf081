"""The classic lossy baselines: quantise-and-zstd, PCA and predictive coding.

Every class satisfies `method.Method`: it is fitted on the training sessions and codes one
frame on its own, counting every payload bit. They work in normalised space and may put
anything where the mask is False. The lossless float codecs live in `lossless`;
`classic_methods` sweeps both.

`Predictive` is the strongest baseline: closed-loop predictive coding as LFZip does it,
with entropy-coded residual indices (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA as _SkPCA

from ..codec.normaliser import CLIP
from . import entropy
from .lossless import Float32, Float32Zstd, Gorilla, not_fitted, zstd_compress, zstd_decompress
from .method import (
    Coded,
    Method,
    TrainData,
    UniformQuantiser,
    frames,
)

__all__ = [
    "PCA",
    "Predictive",
    "QuantZstd",
    "classic_methods",
    "fit_gains",
    "observed_columns",
    "training_frames",
]


def observed_columns(train: TrainData) -> list[np.ndarray]:
    """Each KPI's observed training values (float64, [N_j])."""
    rows, mask = train.rows(), np.concatenate(train.mask) if train.mask else None
    if mask is None or rows.shape[0] == 0:
        raise ValueError("training data has no rows")
    return [rows[mask[:, j], j] for j in range(train.D)]


class QuantZstd:
    """Per-KPI uniform quantisation of normalised values (`UniformQuantiser`) on the training
    range (`quantile` 1.0: min..max, so fine settings are not capped by clipping the tails),
    indices as uint8 (uint16 above 8 bits), column-major, then zstd level 19; the bits are
    the whole compressor output. Every KPI gets `bits` bits but the target, which gets
    ``round(log2(sqrt(target_weight)))`` more (capped to 1..16): a cell as much narrower as
    its weight asks, to the nearest power of two."""

    family = "quant-zstd"
    L = None
    lossy = True
    seeded = False

    def __init__(self, bits: int, quantile: float = 1.0) -> None:
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        if not 0.5 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0.5, 1], got {quantile}")
        self.bits, self.quantile = bits, quantile
        self.setting = f"{bits} bits/KPI"
        self._quantisers: list[UniformQuantiser] = []  # one per KPI (lo, hi: [1])

    @property
    def column_bits(self) -> tuple[int, ...]:
        """Each KPI's quantiser bits, once fitted."""
        return tuple(q.bits for q in self._quantisers)

    def fit(self, train: TrainData, seed: int) -> None:
        extra = np.rint(np.log2(np.sqrt(train.weights()))).astype(np.int64)
        bits = np.clip(self.bits + extra, 1, 16)
        self._quantisers = [
            UniformQuantiser.fit(c[:, None], int(b), self.quantile)
            for c, b in zip(observed_columns(train), bits, strict=True)
        ]

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if not self._quantisers:
            raise not_fitted("QuantZstd")
        x = np.asarray(x, dtype=np.float64)
        dtypes = [_index_dtype(q.bits) for q in self._quantisers]
        q = [quant.indices(x[:, j : j + 1])[:, 0] for j, quant in enumerate(self._quantisers)]
        payload = zstd_compress(
            b"".join(c.astype(t).tobytes() for c, t in zip(q, dtypes, strict=True))
        )
        back = _split_columns(zstd_decompress(payload), len(x), dtypes)
        recon = [quant.values(c) for quant, c in zip(self._quantisers, back, strict=True)]
        return Coded(recon=np.stack(recon, axis=1), bits=8 * len(payload))


def _index_dtype(bits: int) -> str:
    """The little-endian unsigned type that holds a `bits`-bit index."""
    return "<u1" if bits <= 8 else "<u2"


def _split_columns(data: bytes, n: int, dtypes: Sequence[str]) -> list[np.ndarray]:
    """Column-major bytes -> each column's `n` indices (int64, [n]) in its own dtype."""
    columns, start = [], 0
    for dtype in dtypes:
        size = n * np.dtype(dtype).itemsize
        columns.append(np.frombuffer(data[start : start + size], dtype=dtype).astype(np.int64))
        start += size
    return columns


class PCA:
    """The first `L` principal components of the observed training rows, columns scaled by
    sqrt(`TrainData.weights`) so the components minimise the weighted squared error; each
    coefficient quantised with `UniformQuantiser(coef_bits)`: ``L * coef_bits`` bits per
    measurement."""

    family = "pca"
    lossy = True
    seeded = False

    def __init__(self, L: int, coef_bits: int) -> None:
        if L < 1:
            raise ValueError(f"L must be >= 1, got {L}")
        self.L = L
        self.coef_bits = coef_bits
        self.setting = f"L={L}, {coef_bits} bits/coef"
        self._pca: _SkPCA | None = None
        self._quantiser: UniformQuantiser | None = None
        self._scale = np.ones(0)  # [D]: sqrt of each KPI's weight

    def fit(self, train: TrainData, seed: int) -> None:
        if self.L > train.D:
            raise ValueError(f"L={self.L} exceeds the {train.D} KPIs")
        self._scale = np.sqrt(train.weights())
        rows = train.rows() * self._scale
        full = rows[np.concatenate(train.mask).all(axis=1)] if train.mask else rows
        rows = full if len(full) > self.L else rows  # complete rows, unless too few
        self._pca = _SkPCA(n_components=self.L, svd_solver="full").fit(rows)
        self._quantiser = UniformQuantiser.fit(self._pca.transform(rows), self.coef_bits)

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if self._pca is None or self._quantiser is None:
            raise not_fitted("PCA")
        scaled = np.asarray(x, dtype=np.float64) * self._scale
        q = self._quantiser.indices(self._pca.transform(scaled))
        recon = self._pca.inverse_transform(self._quantiser.values(q)) / self._scale
        return Coded(recon=recon, bits=int(q.size) * self.coef_bits)


class Predictive:
    """Closed-loop predictive coding as LFZip does it, in normalised space.

    Measurement t of a frame is predicted from the decoder's reconstructions: the first
    (the key) from the training mean, the others from x̂[t-1] ("previous") or, per KPI,
    ``x̂[t-1] + g * (x̂[t-1] - x̂[t-2])`` ("linear"; g fitted by least squares on training
    rows and kept only where it beats persistence there: KPIs logged at 1 Hz repeat often,
    and a predictor that does not return x̂[t-1] on a repeat pays for it). KPI j's residual
    is quantised uniformly with step ``step_j = step / sqrt(w_j)``, w the
    `TrainData.weights` (the same step for KPIs of equal weight: MSE-optimal for the
    weighted error; the target's is half as wide at weight 4), so ``|x̂_j - x_j| <= step_j /
    2`` on every observed entry of |x| <= `span`; a missing entry is coded as its prediction
    (index 0). KPI j's indices are clamped to ±M_j with ``M_j = ceil(2 * span / step_j)``,
    which covers every residual, and range-coded with static tables (one per KPI for the
    key, one per KPI for the rest) fitted by running the same loop over the training frames.
    Frames decode on their own. Bits: 32 per flushed word.
    """

    L = None
    lossy = True
    seeded = False

    def __init__(self, kind: str, step: float, span: float = CLIP, prior: float = 1.0) -> None:
        if kind not in ("previous", "linear"):
            raise ValueError(f"kind must be 'previous' or 'linear', got {kind!r}")
        if not step > 0 or not span > 0:
            raise ValueError(f"step and span must be positive, got {step}, {span}")
        self.kind, self.step, self.span, self.prior = kind, float(step), float(span), prior
        self.family = f"predictive-{kind}"
        self.setting = f"step={step:.4g}"
        self._steps = np.zeros(0)  # [D]
        self._M = np.zeros(0, dtype=np.int64)  # [D]
        self._mean = np.zeros(0)
        self._gains = np.zeros(0)  # [D]: 0 for "previous"
        self._tables: list[entropy.SymbolTable] = []

    @property
    def steps(self) -> np.ndarray:
        """Each KPI's quantiser step (float64, [D]), once fitted."""
        return self._steps

    @property
    def alphabets(self) -> np.ndarray:
        """Each KPI's index bound M (int64, [D]): indices lie in [-M, M], once fitted."""
        return self._M

    def fit(self, train: TrainData, seed: int) -> None:
        self._steps = self.step / np.sqrt(train.weights())
        self._M = np.ceil(2 * self.span / self._steps).astype(np.int64)
        self._mean = np.array([c.mean() if c.size else 0.0 for c in observed_columns(train)])
        self._gains = np.zeros(train.D)
        if self.kind == "linear":
            self._gains = fit_gains(train, self._steps)
        x, mask, valid = training_frames(train)
        symbols, _ = self._loop(x, mask)
        symbols = symbols + self._M
        key = [symbols[:, 0, j][valid[:, 0]] for j in range(train.D)]
        rest = [symbols[:, 1:, j][valid[:, 1:]] for j in range(train.D)]
        sizes = [2 * int(m) + 1 for m in self._M]
        self._tables = [
            entropy.SymbolTable.fit(s, size, self.prior)
            for s, size in zip(key + rest, sizes + sizes, strict=True)
        ]

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if not self._tables:
            raise not_fitted("Predictive")
        symbols, _ = self._loop(np.asarray(x, dtype=np.float64)[None], np.asarray(mask)[None])
        choice = self._choice(*symbols.shape[1:])
        words = entropy.encode(symbols[0] + self._M, self._tables, choice)
        decoded = entropy.decode(words, self._tables, choice) - self._M
        return Coded(recon=self._rebuild(decoded[None])[0], bits=entropy.payload_bits(words))

    def _choice(self, n: int, D: int) -> np.ndarray:
        """Table of each index (int64, [n, D]): key tables 0..D-1, then D..2D-1."""
        choice = np.tile(np.arange(D) + D, (n, 1))
        choice[0] = np.arange(D)
        return choice

    def _predict(self, recon: np.ndarray, t: int) -> np.ndarray:
        """Prediction of measurement t (float64, [F, D]) from recon[:, :t] ([F, n, D])."""
        if t == 0:
            return np.broadcast_to(self._mean, recon[:, 0].shape)
        if t == 1 or self.kind == "previous":
            return recon[:, t - 1]
        trend = self._gains * (recon[:, t - 1] - recon[:, t - 2])
        pred: np.ndarray = np.clip(recon[:, t - 1] + trend, -self.span, self.span)
        return pred

    def _reconstruct(self, pred: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.clip(pred + q * self._steps, -self.span, self.span)

    def _loop(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoder: x, mask ([F, n, D]) -> indices (int64, [F, n, D], KPI j's in
        [-M_j, M_j]) and the decoder's reconstruction (float64, [F, n, D])."""
        x = np.clip(x, -self.span, self.span)
        symbols = np.zeros(x.shape, dtype=np.int64)
        recon = np.zeros(x.shape)
        for t in range(x.shape[1]):
            pred = self._predict(recon, t)
            target = np.where(mask[:, t], x[:, t], pred)
            q = np.clip(np.rint((target - pred) / self._steps), -self._M, self._M)
            symbols[:, t] = q
            recon[:, t] = self._reconstruct(pred, q)
        return symbols, recon

    def _rebuild(self, symbols: np.ndarray) -> np.ndarray:
        """The decoder: indices (int, [F, n, D]) -> reconstruction (float64, [F, n, D])."""
        recon = np.zeros(symbols.shape)
        for t in range(symbols.shape[1]):
            recon[:, t] = self._reconstruct(self._predict(recon, t), symbols[:, t])
        return recon


def _entropy(q: np.ndarray) -> float:
    """Empirical entropy in bits of the integer indices `q` (any shape), summed over them."""
    _, counts = np.unique(q, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def fit_gains(train: TrainData, steps: np.ndarray) -> np.ndarray:
    """Per-KPI gain g (float64, [D]) of ``x[t-1] + g * (x[t-1] - x[t-2])``: the least-squares
    fit over rows where all three are observed, kept only where its residual indices at
    the KPI's step (`steps`: [D]) have a lower entropy than persistence's (g = 0) there."""
    gains = np.zeros(train.D)
    for j in range(train.D):
        triples = [_triples(x[:, j], m[:, j]) for x, m in zip(train.x, train.mask, strict=True)]
        y, p1, p2 = (np.concatenate(v) for v in zip(*triples, strict=True))
        delta = p1 - p2
        if np.sum(delta**2) == 0:
            continue
        g = float(np.sum(delta * (y - p1)) / np.sum(delta**2))
        rest, lin = np.rint((y - p1) / steps[j]), np.rint((y - p1 - g * delta) / steps[j])
        gains[j] = g if _entropy(lin) < _entropy(rest) else 0.0
    return gains


def _triples(v: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x[t], x[t-1], x[t-2] (float64, [K] each) of one KPI's session `v` ([T]) where all
    three are observed (`m`: bool, [T])."""
    keep = m[2:] & m[1:-1] & m[:-2]
    return v[2:][keep], v[1:-1][keep], v[:-2][keep]


def training_frames(train: TrainData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training sessions cut into frames of `train.frame` measurements, padded to it: x
    (float64, [F, frame, D]), mask (bool, [F, frame, D]) and valid (bool, [F, frame]), False
    on padding."""
    sessions = zip(train.x, train.mask, strict=True)
    cuts = [(x, m, s) for x, m in sessions for s in frames(len(x), train.frame)]
    x = np.zeros((len(cuts), train.frame, train.D))
    mask = np.zeros(x.shape, dtype=bool)
    valid = np.zeros(x.shape[:2], dtype=bool)
    for i, (xs, ms, s) in enumerate(cuts):
        n = s.stop - s.start
        x[i, :n], mask[i, :n], valid[i, :n] = xs[s], ms[s], True
    return x, mask, valid


def classic_methods(Ls: Sequence[int]) -> list[Method]:
    """The benchmark's default sweep of baselines (each a `method.Method`): the lossless
    codecs, QuantZstd at 2..10 bits, PCA at each L in `Ls` with 4, 6 and 8 bits per
    coefficient, and predictive coding at 20 steps from 0.0001 to 2 (geometric): on the 5G
    production KPIs that spans about 4 to 50 bits per measurement and 5 to 90 dB: most
    of them are whole units, so once the step is finer than a unit, finer steps cost little.
    (`gridcode` has the predictive coder that knows those units.)"""
    methods: list[Method] = [Float32(), Float32Zstd(), Gorilla()]
    methods += [QuantZstd(bits) for bits in range(2, 11)]
    methods += [PCA(L, coef_bits) for L in Ls for coef_bits in (4, 6, 8)]
    for kind in ("previous", "linear"):
        methods += [Predictive(kind, float(s)) for s in np.geomspace(1e-4, 2.0, 20)]
    return methods
