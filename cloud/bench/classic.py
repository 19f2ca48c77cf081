"""The classic baselines: lossless float codecs, quantise-and-zstd, PCA and predictive coding.

Every class satisfies `method.Method`: it is fitted on the training sessions and codes one
frame on its own, counting every payload bit. Lossless codecs code raw values
(`TrainData.to_raw`, NaN where missing) as float32, as an edge without the model would
publish them, and reproduce them bit-exactly, NaN positions included; their reconstruction
is the decoded raw frame mapped back with `from_raw` (0 where missing). Lossy codecs work in
normalised space and may put anything where the mask is False.

`Predictive` is the strongest baseline: closed-loop predictive coding as LFZip does it,
with entropy-coded residual indices (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zstandard
from sklearn.decomposition import PCA as _SkPCA

from ..codec.normaliser import CLIP
from . import entropy, gorilla
from .method import (
    FRAME,
    Coded,
    Method,
    TrainData,
    UniformQuantiser,
    frames,
)

__all__ = [
    "PCA",
    "Float32",
    "Float32Zstd",
    "Gorilla",
    "Predictive",
    "QuantZstd",
    "classic_methods",
]

ZSTD_LEVEL = 19


def _zstd(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)


def _unzstd(payload: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(payload)


def _not_fitted(name: str) -> RuntimeError:
    return RuntimeError(f"{name}.code_frame called before fit")


class _Lossless:
    """Shared frame logic of the lossless codecs: subclasses pack and unpack raw float32."""

    family = ""
    setting = "lossless"
    L: int | None = None
    lossy = False
    seeded = False

    def __init__(self) -> None:
        self._train: TrainData | None = None

    def fit(self, train: TrainData, seed: int) -> None:
        self._train = train

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        """Raw frame (float32, [n, D]) -> the payload and its bits."""
        raise NotImplementedError

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        """The payload -> the raw frame (float32, shape: [n, D])."""
        raise NotImplementedError

    def round_trip(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The raw frame sent (float32, [n, D], NaN where missing), the raw frame decoded
        from the payload (float32, [n, D]) and the payload bits."""
        if self._train is None:
            raise _not_fitted(type(self).__name__)
        z = np.where(mask, np.asarray(x, dtype=np.float64), np.nan)
        raw = np.asarray(self._train.to_raw(z), dtype=np.float32)
        raw = np.where(mask, raw, np.float32(np.nan)).astype(np.float32)
        payload, bits = self._pack(raw)
        return raw, self._unpack(payload, raw.shape), bits

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        _, back, bits = self.round_trip(x, mask)
        assert self._train is not None
        missing = np.isnan(back)
        z = self._train.from_raw(np.where(missing, 0.0, back.astype(np.float64)))
        return Coded(recon=np.where(missing, 0.0, z), bits=bits)


class Float32(_Lossless):
    """Raw float32 values, row-major: 32 bits per KPI per measurement."""

    family = "float32"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        payload = raw.astype("<f4").tobytes()
        return payload, 8 * len(payload)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, bytes)
        return np.frombuffer(payload, dtype="<f4").reshape(shape).astype(np.float32)


class Float32Zstd(_Lossless):
    """zstd (level 19, no dictionary) over the frame's raw float32 bytes, column-major (each
    KPI's series contiguous); the bits are the whole compressor output, header included."""

    family = "float32-zstd"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        payload = _zstd(np.ascontiguousarray(raw.T).astype("<f4").tobytes())
        return payload, 8 * len(payload)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, bytes)
        cols = np.frombuffer(_unzstd(payload), dtype="<f4").reshape(shape[::-1])
        return cols.T.astype(np.float32)


class Gorilla(_Lossless):
    """Gorilla XOR coding (`gorilla`) of each KPI's raw float32 series in the frame, KPIs in
    their fixed order; the bits are the sum of the columns' stream bits (no padding)."""

    family = "gorilla"

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        # Each column's stream ends where its n-th value does, so on the wire the streams
        # go back to back without padding: the frame costs the sum of their bits.
        streams = [gorilla.encode(np.ascontiguousarray(raw[:, j])) for j in range(raw.shape[1])]
        return streams, sum(bits for _, bits in streams)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, list)
        cols = [gorilla.decode(data, shape[0], bits) for data, bits in payload]
        return np.stack(cols, axis=1) if cols else np.zeros(shape, dtype=np.float32)


def _observed_columns(train: TrainData) -> list[np.ndarray]:
    """Each KPI's observed training values (float64, [N_j])."""
    rows, mask = train.rows(), np.concatenate(train.mask) if train.mask else None
    if mask is None or rows.shape[0] == 0:
        raise ValueError("training data has no rows")
    return [rows[mask[:, j], j] for j in range(train.D)]


class QuantZstd:
    """Per-KPI `bits`-bit uniform quantisation of normalised values (`UniformQuantiser`) on
    the training range (`quantile` 1.0: min..max, so fine settings are not capped by
    clipping the tails), indices as uint8 (uint16 above 8 bits), column-major, then zstd
    level 19; the bits are the whole compressor output."""

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
        self._quantiser: UniformQuantiser | None = None

    def fit(self, train: TrainData, seed: int) -> None:
        columns = _observed_columns(train)
        per_kpi = [UniformQuantiser.fit(c[:, None], self.bits, self.quantile) for c in columns]
        lo = np.concatenate([q.lo for q in per_kpi])
        hi = np.concatenate([q.hi for q in per_kpi])
        self._quantiser = UniformQuantiser(bits=self.bits, lo=lo, hi=hi)

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if self._quantiser is None:
            raise _not_fitted("QuantZstd")
        dtype = "<u1" if self.bits <= 8 else "<u2"
        q = self._quantiser.indices(x)
        payload = _zstd(np.ascontiguousarray(q.T).astype(dtype).tobytes())
        back = np.frombuffer(_unzstd(payload), dtype=dtype).reshape(q.shape[::-1]).T
        return Coded(recon=self._quantiser.values(back), bits=8 * len(payload))


class PCA:
    """The first `L` principal components of the observed training rows; each coefficient
    quantised with `UniformQuantiser(coef_bits)`: ``L * coef_bits`` bits per measurement."""

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

    def fit(self, train: TrainData, seed: int) -> None:
        if self.L > train.D:
            raise ValueError(f"L={self.L} exceeds the {train.D} KPIs")
        rows = train.rows()
        full = rows[np.concatenate(train.mask).all(axis=1)] if train.mask else rows
        rows = full if len(full) > self.L else rows  # complete rows, unless too few
        self._pca = _SkPCA(n_components=self.L, svd_solver="full").fit(rows)
        self._quantiser = UniformQuantiser.fit(self._pca.transform(rows), self.coef_bits)

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if self._pca is None or self._quantiser is None:
            raise _not_fitted("PCA")
        q = self._quantiser.indices(self._pca.transform(np.asarray(x, dtype=np.float64)))
        recon = self._pca.inverse_transform(self._quantiser.values(q))
        return Coded(recon=recon, bits=int(q.size) * self.coef_bits)


class Predictive:
    """Closed-loop predictive coding as LFZip does it, in normalised space.

    Measurement t of a frame is predicted from the decoder's reconstructions: the first
    (the key) from the training mean, the others from x̂[t-1] ("previous") or, per KPI,
    ``x̂[t-1] + g * (x̂[t-1] - x̂[t-2])`` ("linear"; g fitted by least squares on training
    rows and kept only where it beats persistence there: KPIs logged at 1 Hz repeat often,
    and a predictor that does not return x̂[t-1] on a repeat pays for it). The residual is
    quantised uniformly with `step` (the same for every KPI: MSE-optimal in normalised
    space), so ``|x̂ - x| <= step / 2`` on every observed entry of |x| <= `span`; a missing
    entry is coded as its prediction (index 0). Indices are clamped to ±M with
    ``M = ceil(2 * span / step)``, which covers every residual, and range-coded with static
    tables (one per KPI for the key, one per KPI for the rest) fitted by running the same
    loop over the training frames. Frames decode on their own. Bits: 32 per flushed word.
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
        self.M = int(np.ceil(2 * span / step))
        self._mean = np.zeros(0)
        self._gains = np.zeros(0)  # [D]: 0 for "previous"
        self._tables: list[entropy.SymbolTable] = []

    def fit(self, train: TrainData, seed: int) -> None:
        self._mean = np.array([c.mean() if c.size else 0.0 for c in _observed_columns(train)])
        self._gains = np.zeros(train.D)
        if self.kind == "linear":
            self._gains = _fit_gains(train, self.step)
        x, mask, valid = _training_frames(train)
        symbols, _ = self._loop(x, mask)
        symbols = symbols + self.M
        size = 2 * self.M + 1
        key = [symbols[:, 0, j][valid[:, 0]] for j in range(train.D)]
        rest = [symbols[:, 1:, j][valid[:, 1:]] for j in range(train.D)]
        self._tables = [entropy.SymbolTable.fit(s, size, self.prior) for s in key + rest]

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        if not self._tables:
            raise _not_fitted("Predictive")
        symbols, _ = self._loop(np.asarray(x, dtype=np.float64)[None], np.asarray(mask)[None])
        choice = self._choice(*symbols.shape[1:])
        words = entropy.encode(symbols[0] + self.M, self._tables, choice)
        decoded = entropy.decode(words, self._tables, choice) - self.M
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
        return np.clip(pred + q * self.step, -self.span, self.span)

    def _loop(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoder: x, mask ([F, n, D]) -> indices (int64, [F, n, D], in [-M, M]) and the
        decoder's reconstruction (float64, [F, n, D])."""
        x = np.clip(x, -self.span, self.span)
        symbols = np.zeros(x.shape, dtype=np.int64)
        recon = np.zeros(x.shape)
        for t in range(x.shape[1]):
            pred = self._predict(recon, t)
            target = np.where(mask[:, t], x[:, t], pred)
            q = np.clip(np.rint((target - pred) / self.step), -self.M, self.M)
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


def _fit_gains(train: TrainData, step: float) -> np.ndarray:
    """Per-KPI gain g (float64, [D]) of ``x[t-1] + g * (x[t-1] - x[t-2])``: the least-squares
    fit over rows where all three are observed, kept only where its residual indices at
    `step` have a lower entropy than persistence's (g = 0) on those rows."""
    gains = np.zeros(train.D)
    for j in range(train.D):
        triples = [_triples(x[:, j], m[:, j]) for x, m in zip(train.x, train.mask, strict=True)]
        y, p1, p2 = (np.concatenate(v) for v in zip(*triples, strict=True))
        delta = p1 - p2
        if np.sum(delta**2) == 0:
            continue
        g = float(np.sum(delta * (y - p1)) / np.sum(delta**2))
        rest, lin = np.rint((y - p1) / step), np.rint((y - p1 - g * delta) / step)
        gains[j] = g if _entropy(lin) < _entropy(rest) else 0.0
    return gains


def _triples(v: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x[t], x[t-1], x[t-2] (float64, [K] each) of one KPI's session `v` ([T]) where all
    three are observed (`m`: bool, [T])."""
    keep = m[2:] & m[1:-1] & m[:-2]
    return v[2:][keep], v[1:-1][keep], v[:-2][keep]


def _training_frames(train: TrainData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training sessions cut into frames, padded to FRAME: x (float64, [F, FRAME, D]), mask
    (bool, [F, FRAME, D]) and valid (bool, [F, FRAME]), False on padding."""
    cuts = [(x, m, s) for x, m in zip(train.x, train.mask, strict=True) for s in frames(len(x))]
    x = np.zeros((len(cuts), FRAME, train.D))
    mask = np.zeros(x.shape, dtype=bool)
    valid = np.zeros(x.shape[:2], dtype=bool)
    for i, (xs, ms, s) in enumerate(cuts):
        n = s.stop - s.start
        x[i, :n], mask[i, :n], valid[i, :n] = xs[s], ms[s], True
    return x, mask, valid


def classic_methods(Ls: Sequence[int]) -> list[Method]:
    """The benchmark's default sweep of baselines (each a `method.Method`): the lossless
    codecs, QuantZstd at 2..10 bits, PCA at each L in `Ls` with 4, 6 and 8 bits per
    coefficient, and predictive coding at 10 steps from 0.0001 to 2 (geometric): on the 5G
    production KPIs that spans about 4 to 50 bits per measurement and 5 to 90 dB: most
    of them are whole units, so once the step is finer than a unit, finer steps cost little."""
    methods: list[Method] = [Float32(), Float32Zstd(), Gorilla()]
    methods += [QuantZstd(bits) for bits in range(2, 11)]
    methods += [PCA(L, coef_bits) for L in Ls for coef_bits in (4, 6, 8)]
    for kind in ("previous", "linear"):
        methods += [Predictive(kind, float(s)) for s in np.geomspace(1e-4, 2.0, 10)]
    return methods
