"""Static-table entropy coding of integer symbols with a range coder (`constriction`).

A `SymbolTable` is a categorical distribution over ``{0, ..., K-1}`` fitted on training
symbols with additive smoothing, so every symbol of the alphabet stays codable. `encode`
codes a frame's symbols where each symbol names the table it uses (one table per KPI, say);
the decoder knows that choice (it follows from the position in the frame, not the data), so
no side information is sent. The payload is the range coder's flushed 32-bit words, and its
honest cost is ``32 * len(words)`` bits.

Symbols are coded grouped by table (table 0's symbols in order, then table 1's, ...): the
decoder mirrors the grouping from the same choice array, and each group is one vectorised
call into `constriction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import constriction
import numpy as np

__all__ = ["SymbolTable", "decode", "encode", "payload_bits"]


@dataclass(frozen=True, eq=False)
class SymbolTable:
    """Probabilities (float64, shape: [K]) of the symbols ``0..K-1``, all positive."""

    probabilities: np.ndarray
    _model: object = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.probabilities, dtype=np.float64)
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"probabilities must be a non-empty 1-D array, got {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise ValueError("probabilities must be finite and positive")
        p = p / p.sum()
        object.__setattr__(self, "probabilities", p)
        # perfect=False: the fast, deterministic quantisation both ends agree on.
        model = constriction.stream.model.Categorical(p.astype(np.float32), perfect=False)
        object.__setattr__(self, "_model", model)

    @classmethod
    def from_counts(cls, counts: np.ndarray, prior: float = 1.0) -> SymbolTable:
        """Table from symbol counts (shape: [K]) plus `prior` pseudo-counts per symbol."""
        c = np.asarray(counts, dtype=np.float64)
        if prior <= 0:
            raise ValueError(f"prior must be positive, got {prior}")
        if c.ndim != 1 or np.any(c < 0):
            raise ValueError("counts must be a 1-D array of non-negative numbers")
        return cls(c + prior)

    @classmethod
    def fit(cls, symbols: np.ndarray, alphabet_size: int, prior: float = 1.0) -> SymbolTable:
        """Table from training symbols (int, any shape) in ``[0, alphabet_size)``; add-`prior`
        smoothing (add-one by default)."""
        if alphabet_size < 1:
            raise ValueError(f"alphabet_size must be >= 1, got {alphabet_size}")
        s = np.asarray(symbols).ravel()
        _check_range(s, alphabet_size)
        counts = np.bincount(s.astype(np.int64), minlength=alphabet_size)
        return cls.from_counts(counts, prior)

    @property
    def size(self) -> int:
        """K, the alphabet size."""
        return int(self.probabilities.size)

    @property
    def model(self) -> object:
        """The `constriction` categorical model of this table."""
        return self._model

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Sum of ``-log2 p(s)`` over `symbols` (int, any shape): the cost before flushing."""
        s = np.asarray(symbols, dtype=np.int64).ravel()
        _check_range(s, self.size)
        return float(-np.log2(self.probabilities[s]).sum())


def _check_range(symbols: np.ndarray, size: int) -> None:
    if symbols.size and (symbols.min() < 0 or symbols.max() >= size):
        raise ValueError(f"symbols must lie in [0, {size}), got [{symbols.min()}, {symbols.max()}]")


def _groups(choice: np.ndarray, n_tables: int) -> list[np.ndarray]:
    """Flat positions (int64) of each table's symbols, in order, for tables 0..n_tables-1."""
    if choice.size and (choice.min() < 0 or choice.max() >= n_tables):
        raise ValueError(f"table choice must lie in [0, {n_tables}), got {choice.min()}..")
    return [np.flatnonzero(choice == k) for k in range(n_tables)]


def _choice(shape: tuple[int, ...], choice: np.ndarray | None) -> np.ndarray:
    if choice is None:
        return np.zeros(int(np.prod(shape)), dtype=np.int64)
    c = np.asarray(choice)
    if c.shape != shape:
        raise ValueError(f"choice must have the symbols' shape {shape}, got {c.shape}")
    return c.astype(np.int64).ravel()


def encode(
    symbols: np.ndarray, tables: Sequence[SymbolTable], choice: np.ndarray | None = None
) -> np.ndarray:
    """Code `symbols` (int, any shape) where ``tables[choice[i]]`` models symbol i (`choice`:
    int, same shape; None: every symbol uses ``tables[0]``). Returns the flushed words
    (uint32, shape: [W]); the payload costs ``32 * W`` bits."""
    s = np.asarray(symbols)
    c = _choice(s.shape, choice)
    flat = s.astype(np.int64).ravel()
    encoder = constriction.stream.queue.RangeEncoder()
    for table, where in zip(tables, _groups(c, len(tables)), strict=True):
        if where.size:
            _check_range(flat[where], table.size)
            encoder.encode(flat[where].astype(np.int32), table.model)
    return np.asarray(encoder.get_compressed(), dtype=np.uint32)


def decode(
    words: np.ndarray, tables: Sequence[SymbolTable], choice: np.ndarray | int
) -> np.ndarray:
    """Inverse of `encode`: the symbols (int64, shape of `choice`) from `words` (uint32,
    [W]). `choice` is the per-symbol table array given to `encode`, or, where every symbol
    used ``tables[0]``, the number of symbols."""
    c = np.zeros(choice, dtype=np.int64) if isinstance(choice, int) else np.asarray(choice)
    flat = c.astype(np.int64).ravel()
    out = np.zeros(flat.size, dtype=np.int64)
    decoder = constriction.stream.queue.RangeDecoder(np.asarray(words, dtype=np.uint32))
    for table, where in zip(tables, _groups(flat, len(tables)), strict=True):
        if where.size:
            out[where] = decoder.decode(table.model, int(where.size))
    return out.reshape(c.shape)


def payload_bits(words: np.ndarray) -> int:
    """Bits as sent for a range coder's output (uint32, [W]): every flushed word counts."""
    return 32 * int(np.asarray(words).size)
