"""Learned sparse baselines: a TopK sparse autoencoder and a dictionary coded by OMP.

Both code each measurement on its own (no temporal context) as at most L (atom, coefficient)
pairs over K learned atoms, and both decode the same way:
``recon = offset + sum_j q_j * atoms[index_j]``, where ``q_j`` is the coefficient after a
`coef_bits`-bit `UniformQuantiser` with its own range per atom, fitted on training
coefficients. A measurement always costs ``L * (ceil(log2 K) + coef_bits)`` bits; a slot left
empty (fewer than L nonzeros) repeats an index already sent, which the decoder skips.

Both learn and code in a weighted space: each KPI's column scaled by sqrt of its
`TrainData.weights` (the target's squared error counts `target_weight` times), so `offset`
and `atoms` live there and the decoder divides the scale back out:
``recon = (offset + sum_j q_j * atoms[index_j]) / scale``.

`TopKSAE` follows openai/sparse_autoencoder and Gao et al. 2024 ("Scaling and evaluating
sparse autoencoders"). At our scale (D=10, L <= 8) AuxK does not lower the share of latents
never used: it trains dead latents on the main residual, which lines them up with what the
live ones miss but at the residual's small scale, so they seldom win the TopK.
`OMPDictionary` learns its atoms with scikit-learn's `MiniBatchDictionaryLearning` and codes
by orthogonal matching pursuit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sklearn.decomposition import MiniBatchDictionaryLearning, sparse_encode

from .method import Coded, Method, TrainData, UniformQuantiser
from .sae import SAEOptions, train_sae

__all__ = [
    "LEARNED_K",
    "OMP_K",
    "SAE_K",
    "SAE_LR",
    "FitCache",
    "OMPDictionary",
    "SparseCode",
    "TopKSAE",
    "fit_atom_quantiser",
    "learned_methods",
]

QUANT_ROWS = 20_000  # training rows whose coefficients fit the quantiser ranges
MIN_ATOM_COUNT = 16  # fewer training coefficients than this: the atom uses the pooled range
SAE_STEPS, SAE_STEPS_QUICK = 3_000, 300
# Each baseline's K unless the run sets one (`--K`), and the TopK SAE's Adam rate: chosen
# on the validation sessions (docs/benchmark/validation.md, scripts/tune_bench.py);
# LEARNED_K is what a choice falls back to.
LEARNED_K = 128
SAE_K = 32
OMP_K = 64
SAE_LR = 1e-2
OMP_ROWS, OMP_ROWS_QUICK = 20_000, 2_000

T = TypeVar("T")


@dataclass(frozen=True)
class SparseCode:
    """One frame's payload: `index` int64 (shape: [n, L]) the atoms, `level` int64
    (shape: [n, L]) their coefficients' quantiser indices, `active` bool (shape: [n, L])
    False for an empty slot."""

    index: np.ndarray
    level: np.ndarray
    active: np.ndarray


@dataclass(frozen=True)
class _Atoms:
    """A fitted learner: `offset` (shape: [D]), `atoms` (shape: [K, D]) and, for the
    autoencoder, its encoder `enc_weight` (shape: [K, D]) and `enc_bias` (shape: [K])."""

    offset: np.ndarray
    atoms: np.ndarray
    enc_weight: np.ndarray | None = None
    enc_bias: np.ndarray | None = None


class FitCache:
    """Learned models shared between methods that differ only in what follows learning
    (`coef_bits`; for OMP also L), keyed by the training data's identity, seed and settings."""

    def __init__(self) -> None:
        self._entries: list[tuple[TrainData, int, tuple[Any, ...], Any]] = []

    def get(self, train: TrainData, seed: int, key: tuple[Any, ...], learn: Callable[[], T]) -> T:
        """The model learnt for (train, seed, key), learning it with `learn` the first time."""
        for known, known_seed, known_key, model in self._entries:
            if known is train and known_seed == seed and known_key == key:
                return model
        model = learn()
        self._entries.append((train, seed, key, model))
        return model


def fit_atom_quantiser(
    index: np.ndarray, coef: np.ndarray, active: np.ndarray, K: int, bits: int
) -> UniformQuantiser:
    """A quantiser with one range per atom (lo, hi: [K]) from training coefficients
    (index, coef, active: [N, L]); atoms seldom used fall back to the pooled range."""
    flat_index, flat_coef = index[active], coef[active]
    pooled = UniformQuantiser.fit(flat_coef[:, None], bits)
    lo, hi = np.full(K, pooled.lo[0]), np.full(K, pooled.hi[0])
    for k in np.unique(flat_index):
        c = flat_coef[flat_index == k]
        if len(c) >= MIN_ATOM_COUNT:
            q = UniformQuantiser.fit(c[:, None], bits)
            lo[k], hi[k] = q.lo[0], q.hi[0]
    return UniformQuantiser(bits=bits, lo=lo, hi=hi)


def _clean(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0 wherever an entry is unobserved or not finite; the mask says which are observed."""
    x = np.asarray(x, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(x)
    return np.where(mask, x, 0.0), mask


class _SparseCodec:
    """What both learners share: fitting the quantiser, encode, decode, bits and stats.
    Subclasses learn `_Atoms` (`_learn`) and pick each row's atoms (`_sparse`)."""

    family = ""
    lossy = True
    seeded = True
    # What `stats` reports, set by `_reset_stats` (declared here: `code_frame` reads them first).
    _rows: int
    _nonzeros: int
    _max_nonzeros: int
    _used: np.ndarray

    def __init__(self, L: int, K: int, coef_bits: int, cache: FitCache | None) -> None:
        if not 1 <= L <= K:
            raise ValueError(f"need 1 <= L <= K, got L={L}, K={K}")
        if not 1 <= coef_bits <= 16:
            raise ValueError(f"coef_bits must be in 1..16, got {coef_bits}")
        self.L, self.K, self.coef_bits = L, K, coef_bits
        self.setting = f"L={L}, K={K}, {coef_bits}-bit coefs"
        self._cache = cache if cache is not None else FitCache()
        self._model: _Atoms | None = None
        self._quantiser: UniformQuantiser | None = None
        self._scale: np.ndarray | None = None
        self._reset_stats()

    @property
    def cache(self) -> FitCache:
        """The learned models this method shares with others (the benchmark's runner keeps
        methods of one cache in one worker)."""
        return self._cache

    @property
    def bits_per_measurement(self) -> int:
        """L slots of an atom index (ceil(log2 K) bits) and a coefficient (coef_bits)."""
        return self.L * ((self.K - 1).bit_length() + self.coef_bits)

    @property
    def offset(self) -> np.ndarray:
        """The decoder's offset (shape: [D]), in the weighted space: b_pre, or the training
        mean."""
        return self._fitted_atoms().offset

    @property
    def atoms(self) -> np.ndarray:
        """The decoder's atoms (shape: [K, D]), unit norm in the weighted space."""
        return self._fitted_atoms().atoms

    @property
    def scale(self) -> np.ndarray:
        """Each KPI's column scale (shape: [D]): sqrt of its weight in the training data."""
        if self._scale is None:
            raise RuntimeError(f"{self.family} {self.setting}: call fit before coding")
        return self._scale

    @property
    def quantiser(self) -> UniformQuantiser:
        """The coefficient quantiser, one range per atom (lo, hi: [K])."""
        if self._quantiser is None:
            raise RuntimeError(f"{self.family} {self.setting}: call fit before coding")
        return self._quantiser

    def fit(self, train: TrainData, seed: int) -> None:
        self._scale = np.sqrt(train.weights())
        x, mask = _clean(train.rows(), np.concatenate(train.mask))
        x = x * self._scale
        self._model = self._cache.get(
            train, seed, self._fit_key(), lambda: self._learn(x, mask, seed)
        )
        rows = np.flatnonzero(mask.any(axis=1))
        rng = np.random.default_rng(seed)
        rows = rng.choice(rows, min(QUANT_ROWS, len(rows)), replace=False)
        index, coef, active = self._sparse(x[rows])
        self._quantiser = fit_atom_quantiser(index, coef, active, self.K, self.coef_bits)
        self._reset_stats()

    def encode(self, x: np.ndarray, mask: np.ndarray) -> SparseCode:
        """Rows (x, mask: [n, D]) -> their codes, coefficients quantised."""
        index, coef, active = self._sparse(_clean(x, mask)[0] * self.scale)
        return SparseCode(
            index=index, level=self._slot_quantiser(index).indices(coef), active=active
        )

    def decode(self, code: SparseCode) -> np.ndarray:
        """Codes -> rows (float64, shape: [n, D]) from the quantised coefficients alone."""
        model = self._fitted_atoms()
        coef = np.where(code.active, self._slot_quantiser(code.index).values(code.level), 0.0)
        scaled = model.offset + np.einsum("nl,nld->nd", coef, model.atoms[code.index])
        return scaled / self.scale

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        code = self.encode(x, mask)
        nonzeros = code.active.sum(axis=1)
        self._rows += len(nonzeros)
        self._nonzeros += int(nonzeros.sum())
        self._max_nonzeros = max(self._max_nonzeros, int(nonzeros.max(initial=0)))
        self._used[code.index[code.active]] = True
        return Coded(recon=self.decode(code), bits=len(nonzeros) * self.bits_per_measurement)

    def stats(self) -> dict[str, float]:
        """Nonzeros per coded measurement and the share of atoms never used, since `fit`."""
        return {
            "mean_nonzeros": self._nonzeros / self._rows if self._rows else 0.0,
            "max_nonzeros": float(self._max_nonzeros),
            "codewords_unused_share": 1.0 - float(self._used.mean()),
        }

    def _reset_stats(self) -> None:
        self._rows = self._nonzeros = self._max_nonzeros = 0
        self._used = np.zeros(self.K, dtype=bool)

    def _fitted_atoms(self) -> _Atoms:
        if self._model is None:
            raise RuntimeError(f"{self.family} {self.setting}: call fit before coding")
        return self._model

    def _slot_quantiser(self, index: np.ndarray) -> UniformQuantiser:
        """The quantiser of each slot's atom (lo, hi: [n, L])."""
        q = self.quantiser
        return UniformQuantiser(bits=q.bits, lo=q.lo[index], hi=q.hi[index])

    def _fit_key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def _learn(self, x: np.ndarray, mask: np.ndarray, seed: int) -> _Atoms:
        raise NotImplementedError

    def _sparse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weighted rows (shape: [n, D], 0 where missing) -> index, coef, active (shape:
        [n, L])."""
        raise NotImplementedError


class TopKSAE(_SparseCodec):
    """TopK sparse autoencoder (Gao et al. 2024): z = TopK_L(ReLU(W_enc (x - b_pre) + b_enc)),
    x̂ = W_dec ẑ + b_pre with ẑ the quantised z. `aux_coef=0` turns AuxK off; `aux_k` defaults
    to D // 2 (the paper's rule of about half the input width); a latent is dead after
    `dead_steps` training steps without firing."""

    family = "topk-sae"

    def __init__(
        self,
        L: int,
        K: int,
        coef_bits: int,
        steps: int,
        *,
        batch: int = 1024,
        lr: float = SAE_LR,
        aux_coef: float = 1 / 32,
        aux_k: int | None = None,
        dead_steps: int = 100,
        cache: FitCache | None = None,
    ) -> None:
        super().__init__(L, K, coef_bits, cache)
        if steps < 1 or batch < 1 or dead_steps < 1:
            raise ValueError(
                f"steps, batch, dead_steps must be >= 1: {steps}, {batch}, {dead_steps}"
            )
        if lr <= 0 or aux_coef < 0 or (aux_k is not None and aux_k < 1):
            raise ValueError(f"need lr > 0, aux_coef >= 0, aux_k >= 1: {lr}, {aux_coef}, {aux_k}")
        self._options = (steps, batch, lr, aux_coef, aux_k, dead_steps)

    def _fit_key(self) -> tuple[Any, ...]:
        return ("sae", self.L, self.K, *self._options)

    def _learn(self, x: np.ndarray, mask: np.ndarray, seed: int) -> _Atoms:
        steps, batch, lr, aux_coef, aux_k, dead_steps = self._options
        aux_k = aux_k if aux_k is not None else max(1, x.shape[1] // 2)
        options = SAEOptions(self.L, self.K, steps, batch, lr, aux_coef, aux_k, dead_steps)
        keep = mask.any(axis=1)
        w = train_sae(x[keep], mask[keep], options, seed)
        return _Atoms(w.offset, w.atoms, w.enc_weight, w.enc_bias)

    def _sparse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model = self._fitted_atoms()
        assert model.enc_weight is not None and model.enc_bias is not None
        latents = np.maximum((x - model.offset) @ model.enc_weight.T + model.enc_bias, 0.0)
        index = np.argpartition(-latents, self.L - 1, axis=1)[:, : self.L]
        coef = np.take_along_axis(latents, index, axis=1)
        return index.astype(np.int64), coef, coef > 0


class OMPDictionary(_SparseCodec):
    """Atoms learnt by `MiniBatchDictionaryLearning` (L1 sparse coding, LARS) on up to `rows`
    fully observed training rows less their mean; each row coded by OMP with L atoms (missing
    entries 0). The dictionary does not depend on L or coef_bits, so a shared cache learns it
    once per seed."""

    family = "omp-dict"

    def __init__(
        self,
        L: int,
        K: int,
        coef_bits: int,
        *,
        rows: int = OMP_ROWS,
        alpha: float = 1.0,
        max_iter: int = 5,
        cache: FitCache | None = None,
    ) -> None:
        super().__init__(L, K, coef_bits, cache)
        if rows < 1 or alpha <= 0 or max_iter < 1:
            raise ValueError(
                f"need rows >= 1, alpha > 0, max_iter >= 1: {rows}, {alpha}, {max_iter}"
            )
        self._options = (rows, alpha, max_iter)

    def _fit_key(self) -> tuple[Any, ...]:
        return ("omp", self.K, *self._options)

    def _learn(self, x: np.ndarray, mask: np.ndarray, seed: int) -> _Atoms:
        rows, alpha, max_iter = self._options
        full = x[mask.all(axis=1)]
        if len(full) == 0:
            raise ValueError("OMPDictionary needs fully observed training rows; there are none")
        rng = np.random.default_rng(seed)
        sample = full[rng.choice(len(full), min(rows, len(full)), replace=False)]
        offset = sample.mean(axis=0)
        learner = MiniBatchDictionaryLearning(
            n_components=self.K,
            alpha=alpha,
            max_iter=max_iter,
            batch_size=256,
            fit_algorithm="lars",
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learner.fit(sample - offset)
        return _Atoms(offset=offset, atoms=learner.components_.astype(np.float64))

    def _sparse(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model = self._fitted_atoms()
        L = min(self.L, x.shape[1])  # OMP stops at D atoms: the residual is then zero
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ended prematurely" on exactly coded rows
            codes = sparse_encode(x - model.offset, model.atoms, algorithm="omp", n_nonzero_coefs=L)
        index = np.argsort(-np.abs(codes), axis=1, kind="stable")[:, : self.L]
        coef = np.take_along_axis(codes, index, axis=1)
        return index.astype(np.int64), coef, coef != 0


def learned_methods(Ls: Sequence[int], K: int | None = None, quick: bool = False) -> list[Method]:
    """For each L: TopKSAE and OMPDictionary at 4- and 8-bit coefficients, with K atoms
    (None: each its own, SAE_K and OMP_K). Settings that differ only in coef_bits (OMP: also
    in L) share one learnt model per seed. `quick`: fewer steps and rows, for tests."""
    if not Ls:
        raise ValueError("Ls must name at least one L")
    steps = SAE_STEPS_QUICK if quick else SAE_STEPS
    rows = OMP_ROWS_QUICK if quick else OMP_ROWS
    sae_cache, omp_cache = FitCache(), FitCache()
    methods: list[Method] = []
    for L in Ls:
        for bits in (4, 8):
            methods.append(TopKSAE(L, K or SAE_K, bits, steps, cache=sae_cache))
            methods.append(OMPDictionary(L, K or OMP_K, bits, rows=rows, cache=omp_cache))
    return methods
