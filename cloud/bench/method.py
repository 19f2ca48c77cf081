"""The contract every benchmarked codec follows, and the coefficient quantiser they share.

A method is fitted once per seed on the training sessions, then codes the test stream frame
by frame. Frames are independent (a lost frame costs only itself), exactly as the edge
publishes them: `FRAME` measurements per frame. A frame's `bits` are every bit its payload
would carry on the wire -- indices, coefficients, side information, an entropy coder's
flushed words, a compressor's whole output -- but not the frame header and per-record time
deltas, which every method would send alike (`wire.py` counts those for the wire figures).

Arrays are normalised KPIs (the run's `Normaliser`): ``x`` float64 (shape: [n, D]) with 0
where missing, ``mask`` bool (shape: [n, D]) True where observed. Reconstruction error is
scored on observed entries only, so a method may put anything where ``mask`` is False.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..codec.normaliser import Normaliser

__all__ = ["FRAME", "Coded", "Method", "TrainData", "UniformQuantiser", "frames"]

FRAME = 50  # measurements per frame: the edge agent's default batch


@dataclass(frozen=True)
class TrainData:
    """The training sessions, normalised: one ``x`` (float64, [T_i, D]) and ``mask``
    (bool, [T_i, D]) per session, in time order; `names` are the D KPI names. `to_raw` maps
    normalised rows back to raw units (NaN where a caller passes NaN) and `from_raw` forward:
    lossless codecs code raw values, as an edge without the model would send them. `target`
    names the KPI the cloud predicts when it is one of `names`; `target_weight` is the
    precision every codec gives it relative to the other KPIs (squared error weighted, so 4
    means half the error: a step half as wide), the same for every method of a run. `frame`
    is how many measurements the frames the codec will code hold (its key measurements, one
    per frame, and its tables follow from it)."""

    names: tuple[str, ...]
    x: tuple[np.ndarray, ...]
    mask: tuple[np.ndarray, ...]
    to_raw: Callable[[np.ndarray], np.ndarray]
    from_raw: Callable[[np.ndarray], np.ndarray]
    target: str | None = None
    target_weight: float = 1.0
    frame: int = FRAME
    normaliser: Normaliser | None = None  # what `to_raw` inverts (codecs that ship it need it)

    def weights(self) -> np.ndarray:
        """Per-KPI weight of the squared error (float64, [D]): `target_weight` on the
        target, 1 elsewhere."""
        return np.array([self.target_weight if n == self.target else 1.0 for n in self.names])

    @property
    def D(self) -> int:
        return len(self.names)

    def rows(self) -> np.ndarray:
        """All sessions stacked (float64, shape: [sum T_i, D])."""
        return np.concatenate(self.x) if self.x else np.zeros((0, self.D))


@dataclass(frozen=True)
class Coded:
    """One coded frame: the decoder's reconstruction (float64, [n, D]) and its payload bits."""

    recon: np.ndarray
    bits: int


class Method(Protocol):
    """A codec at one setting. `family` names the codec ("sdlgm", "quant-zstd", ...);
    `setting` its knob in words ("L=4", "6 bits/KPI"); `L` the cap on nonzeros where the
    method has one (None otherwise); `lossy` whether decode(encode(x)) may differ from x;
    `seeded` whether fitting depends on the seed (False: the runner fits and runs it once).

    Optionally a method has ``stats() -> dict[str, float]``, called once after it coded the
    whole test stream (e.g. mean_nonzeros, max_nonzeros, codewords_unused_share); the runner
    adds those keys to the method's result row."""

    family: str
    setting: str
    lossy: bool
    seeded: bool

    @property
    def L(self) -> int | None:
        """Read-only here, so a method may narrow it (PCA's int, QuantZstd's None)."""
        ...

    def fit(self, train: TrainData, seed: int) -> None:
        """Learn whatever the method learns (codebooks, dictionaries, predictors, tables)."""
        ...

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        """Encode then decode one frame (x, mask: [n, D], n <= FRAME) on its own."""
        ...


@dataclass(frozen=True)
class UniformQuantiser:
    """`bits`-bit uniform scalar quantiser of coefficients on [lo, hi] per column (mid-rise,
    clipped). Fit the range on training coefficients; every index costs `bits` bits."""

    bits: int
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, coefficients: np.ndarray, bits: int, quantile: float = 0.999) -> UniformQuantiser:
        """Range per column from the `quantile` of |coefficients| (shape: [N, C])."""
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {bits}")
        c = np.asarray(coefficients, dtype=np.float64)
        lo = np.quantile(c, 1.0 - quantile, axis=0) if len(c) else np.zeros(c.shape[1])
        hi = np.quantile(c, quantile, axis=0) if len(c) else np.ones(c.shape[1])
        hi = np.where(hi - lo > 1e-12, hi, lo + 1e-12)
        return cls(bits=bits, lo=lo, hi=hi)

    def indices(self, c: np.ndarray) -> np.ndarray:
        """Coefficients (shape: [..., C]) -> int64 indices in [0, 2**bits)."""
        levels = 2**self.bits
        u = (np.asarray(c, dtype=np.float64) - self.lo) / (self.hi - self.lo)
        return np.clip(np.floor(u * levels), 0, levels - 1).astype(np.int64)

    def values(self, q: np.ndarray) -> np.ndarray:
        """Indices -> the centres of their cells (float64)."""
        return self.lo + (np.asarray(q, dtype=np.float64) + 0.5) / 2**self.bits * (
            self.hi - self.lo
        )

    def __call__(self, c: np.ndarray) -> np.ndarray:
        return self.values(self.indices(c))


def frames(n: int, size: int = FRAME) -> Sequence[slice]:
    """Slices cutting a session of `n` measurements into frames of `size` (the last shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
