"""Integer codes for the grid-aware baselines (`gridcode`): escape tables and a frame's stream.

An `EscapeTable` codes the symbols seen in training, plus one escape after which any other
integer follows in a universal code. A frame is one range-coder stream (`FrameEncoder`,
read back by `FrameDecoder`): the table-coded symbols, then every escaped integer, then raw
32-bit words; it costs 32 bits per flushed word. Tables are static, or adapt to the frame as
they code it (`memory`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import constriction
import numpy as np

__all__ = [
    "ESCAPED",
    "EscapeTable",
    "FrameDecoder",
    "FrameEncoder",
]

# `FrameDecoder.read`'s mark of an escape whose integer is not read yet (`resolve` reads
# it): no caller writes this value.
ESCAPED = -(2**62) + 2
LENGTH_SYMBOLS = 64  # bit lengths of a universal code's zigzagged integer: 0..63
CHUNK_BITS = 16  # raw bits go through the range coder in chunks of at most this many
ADAPT_HEAD = 64  # an adaptive table's likeliest symbols, each adapting on its own


@dataclass(frozen=True, eq=False)
class EscapeTable:
    """A code for any integer: the `values` seen in training (int64, sorted, [K]) and
    `counts` (int64, [K + 1], each >= 1), the last one the escape's. A value outside `values`
    is coded as the escape, its integer following in a universal code.

    For adaptive coding the symbols are also ranked by count (`order`, int64, [K + 1]): the
    first ADAPT_HEAD are the head, each adapting on its own, the rest the tail, which adapts
    as one bucket and is coded within it by `tail_model` (None when it has one symbol or
    none)."""

    values: np.ndarray
    counts: np.ndarray
    probabilities: np.ndarray = field(init=False, repr=False)  # float64, [K + 1]
    order: np.ndarray = field(init=False, repr=False)
    slots: np.ndarray = field(init=False, repr=False)  # int64, [K + 1]: place in `order`
    tail_model: object | None = field(init=False, repr=False)
    _model: object = field(init=False, repr=False)
    # memory -> an adaptive table's starting weights (float32, [head + 1 or K + 1]) and
    # their model: every frame starts from them, so they are made once.
    _priors: dict[int, tuple[np.ndarray, object]] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        v, c = np.asarray(self.values), np.asarray(self.counts)
        if v.ndim != 1 or v.size == 0 or np.any(np.diff(v) <= 0):
            raise ValueError("values must be a non-empty, strictly increasing 1-D array")
        if c.shape != (v.size + 1,) or np.any(c < 1):
            raise ValueError(f"counts must be {v.size + 1} positive numbers, got {c.shape}")
        object.__setattr__(self, "values", v.astype(np.int64))
        object.__setattr__(self, "counts", c.astype(np.int64))
        p = c / c.sum()
        order = np.argsort(-c, kind="stable")
        tail = p[order[ADAPT_HEAD:]]
        object.__setattr__(self, "probabilities", p)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "slots", np.argsort(order))
        object.__setattr__(self, "tail_model", _categorical(tail) if tail.size > 1 else None)
        object.__setattr__(self, "_model", _categorical(p))

    @classmethod
    def fit(cls, symbols: np.ndarray, always: Sequence[int] = ()) -> EscapeTable:
        """Counts of the training `symbols` (int, any shape), each of `always` (or 0 where
        neither gives a value) at least once; the escape counts the values seen once
        (Good-Turing: about the share of new values to come), at least 1."""
        values, counts = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)
        escape = max(1, int(np.sum(counts == 1)))
        if not always and not values.size:
            always = (0,)  # constriction needs two symbols at least: one besides the escape
        extra = np.setdiff1d(np.asarray(always, dtype=np.int64), values)
        values = np.concatenate([values, extra])
        counts = np.concatenate([counts, np.ones(extra.size, dtype=np.int64)])
        order = np.argsort(values)
        return cls(values[order], np.append(counts[order], escape))

    @property
    def escape(self) -> int:
        """The escape's symbol, K."""
        return int(self.values.size)

    @property
    def model(self) -> object:
        """The static `constriction` model of this table."""
        return self._model

    @property
    def head(self) -> int:
        """How many symbols adapt one by one (the rest, if any, as one bucket)."""
        return min(ADAPT_HEAD, self.escape + 1)

    def prior(self, memory: int) -> tuple[np.ndarray, object]:
        """An adaptive table's starting weights at `memory` (float32: `memory` times the
        head's probabilities in rank order, then the tail's total, if any) and their
        model; not to be written to."""
        if memory not in self._priors:
            p = self.probabilities[self.order]
            head = self.head
            prior = np.append(p[:head], p[head:].sum()) if p.size > head else p
            # float32 as the coder takes it; both ends add the same ones in the same order.
            weights = (memory * prior).astype(np.float32)
            weights.flags.writeable = False
            self._priors[memory] = (weights, _model_of(weights))
        return self._priors[memory]

    def index(self, values: np.ndarray) -> np.ndarray:
        """Symbols (int64, [n]) of `values` (int, [n]): their place in `values`, else K."""
        v = np.asarray(values, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.values, v), self.escape - 1)
        return np.where(self.values[i] == v, i, self.escape)


def _categorical(p: np.ndarray) -> object:
    return _model_of(p.astype(np.float32))


def _model_of(weights: np.ndarray) -> object:
    # perfect=False: the fast, deterministic quantisation both ends agree on.
    return constriction.stream.model.Categorical(weights, perfect=False)


def _state(states: dict[int, _Adaptive], table: EscapeTable, memory: int) -> _Adaptive:
    """`table`'s adaptive state in `states` (by table id), made on first use."""
    if id(table) not in states:
        states[id(table)] = _Adaptive(table, memory)
    return states[id(table)]


class _Adaptive:
    """An adaptive table within one frame: a symbol of the head, or the tail bucket, has
    probability ``(memory * p_table + count) / (memory + coded)``, `count` how often the
    frame has used it so far -- the training counts mixed with the frame's own. Until the
    frame counts a choice it uses the table's `prior` as it is (most tables code a symbol
    or two per frame at the agent's framing)."""

    def __init__(self, table: EscapeTable, memory: int) -> None:
        self._prior, self._prior_model = table.prior(memory)
        self._weights: np.ndarray | None = None  # the prior plus the counts, once counted

    def model(self) -> object:
        """The model of the next choice: a head symbol's rank, or `head` for the tail."""
        return self._prior_model if self._weights is None else _model_of(self._weights)

    def count(self, choice: int) -> None:
        if self._weights is None:
            self._weights = self._prior.copy()
        self._weights[choice] += 1


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return (v << 1) ^ (v >> 63)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.int64)
    return (z >> 1) ^ -(z & 1)


def _chunk_widths(bits: Sequence[int]) -> list[int]:
    """Widths of the chunks that carry integers of `bits` bits each, in order, low first."""
    return [min(CHUNK_BITS, b - s) for b in bits for s in range(0, b, CHUNK_BITS)]


def _split(values: Sequence[int], bits: Sequence[int]) -> list[int]:
    """The low `bits` bits of each of `values`, cut into chunks (`_chunk_widths`)."""
    return [
        (v >> s) & ((1 << min(CHUNK_BITS, b - s)) - 1)
        for v, b in zip(values, bits, strict=True)
        for s in range(0, b, CHUNK_BITS)
    ]


def _join(chunks: Sequence[int], bits: Sequence[int]) -> list[int]:
    """Inverse of `_split`: the integers (each `bits` wide) from their chunks."""
    out, i = [], 0
    for b in bits:
        value = 0
        for s in range(0, b, CHUNK_BITS):
            value |= chunks[i] << s
            i += 1
        out.append(value)
    return out


class FrameEncoder:
    """One frame's stream: table-coded symbols in the order written, then the universal code
    of every escaped integer (its bit length b, uniform over 0..63, then its b - 1 bits below
    the leading one), then the raw 32-bit words.

    With `memory`, the tables adapt to the frame (`_Adaptive`): a symbol's probability is
    ``(memory * p_table(s) + count(s)) / (memory + coded)``, `count` how often its table has
    coded it in this frame so far (over the table's head; its tail adapts as one bucket)."""

    def __init__(self, memory: int | None = None) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self._memory = memory
        self._adaptive: dict[int, _Adaptive] = {}  # by table id
        self._escaped: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []

    def write(self, table: EscapeTable, values: np.ndarray) -> None:
        """Code `values` (int, [n], each within ±2**62) with `table`."""
        v = np.asarray(values, dtype=np.int64).ravel()
        symbols = table.index(v)
        self._escaped.append(v[symbols == table.escape])
        if not v.size:
            return
        if self._memory is None:
            self._coder.encode(symbols.astype(np.int32), table.model)
            return
        state = _state(self._adaptive, table, self._memory)
        head = table.head
        for slot in table.slots[symbols].tolist():
            choice = min(slot, head)
            self._coder.encode(choice, state.model())
            if choice == head and table.tail_model is not None:
                self._coder.encode(slot - head, table.tail_model)
            state.count(choice)

    def write_raw(self, words: np.ndarray) -> None:
        """Queue raw 32-bit `words` (uint32, [n]) for the end of the stream."""
        self._raw.append(np.asarray(words, dtype=np.uint32).ravel())

    def words(self) -> np.ndarray:
        """The finished stream (uint32, [W]): it costs 32 * W bits."""
        escaped = np.concatenate([np.zeros(0, np.int64), *self._escaped])
        z = _zigzag(escaped).tolist()
        lengths = [v.bit_length() for v in z]
        raw = np.concatenate([np.zeros(0, np.uint32), *self._raw]).tolist()
        # Below its leading one, each escaped integer's bits; then each raw word's 32.
        bits = [max(b - 1, 0) for b in lengths] + [32] * len(raw)
        chunks = _split(z + raw, bits)
        if lengths:
            uniform = constriction.stream.model.Uniform(LENGTH_SYMBOLS)
            self._coder.encode(np.array(lengths, dtype=np.int32), uniform)
        if chunks:
            sizes = np.array([1 << w for w in _chunk_widths(bits)], dtype=np.int32)
            chunk_array = np.array(chunks, dtype=np.int32)
            self._coder.encode(chunk_array, constriction.stream.model.Uniform(), sizes)
        return np.asarray(self._coder.get_compressed(), dtype=np.uint32)


class FrameDecoder:
    """Reads a `FrameEncoder` stream in the order it was written: every `read`, then
    `resolve` (the escaped integers), then `read_raw`."""

    def __init__(self, words: np.ndarray, memory: int | None = None) -> None:
        self._coder = constriction.stream.queue.RangeDecoder(np.asarray(words, dtype=np.uint32))
        self._memory = memory
        self._adaptive: dict[int, _Adaptive] = {}  # by table id

    def read(self, table: EscapeTable, count: int) -> np.ndarray:
        """The next `count` values (int64, [count]) coded with `table`; ESCAPED where the
        escape was coded (`resolve` fills those in)."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        if self._memory is None:
            symbols = np.asarray(self._coder.decode(table.model, count), dtype=np.int64)
        else:
            symbols = np.array([self._read_adaptive(table) for _ in range(count)], dtype=np.int64)
        values = table.values[np.minimum(symbols, table.escape - 1)]
        return np.where(symbols == table.escape, ESCAPED, values).astype(np.int64)

    def _read_adaptive(self, table: EscapeTable) -> int:
        assert self._memory is not None
        state = _state(self._adaptive, table, self._memory)
        head = table.head
        choice = int(self._coder.decode(state.model()))
        state.count(choice)
        if choice < head:
            return int(table.order[choice])
        below = int(self._coder.decode(table.tail_model)) if table.tail_model is not None else 0
        return int(table.order[head + below])

    def resolve(self, groups: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`groups` (each int64, [n_i]), all that `read` gave, in its order, with their
        escaped integers read from the stream in place of ESCAPED."""
        escaped = [g == ESCAPED for g in groups]
        count = int(sum(e.sum() for e in escaped))
        z = self._integers(count)
        out, start = [], 0
        for g, e in zip(groups, escaped, strict=True):
            g = g.copy()
            g[e] = z[start : start + int(e.sum())]
            start += int(e.sum())
            out.append(g)
        return out

    def read_raw(self, count: int) -> np.ndarray:
        """The next `count` raw words (uint32, [count])."""
        return np.array(self._read_bits([32] * count), dtype=np.uint32)

    def _integers(self, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        uniform = constriction.stream.model.Uniform(LENGTH_SYMBOLS)
        lengths = np.asarray(self._coder.decode(uniform, count), dtype=np.int64).tolist()
        below = self._read_bits([max(b - 1, 0) for b in lengths])
        z = [(1 << (b - 1)) | v if b else 0 for b, v in zip(lengths, below, strict=True)]
        return _unzigzag(np.array(z, dtype=np.int64))

    def _read_bits(self, bits: Sequence[int]) -> list[int]:
        """Integers of `bits` bits each, read as `_split` cut them."""
        widths = _chunk_widths(bits)
        if not widths:
            return [0] * len(bits)
        sizes = np.array([1 << w for w in widths], dtype=np.int32)
        chunks = self._coder.decode(constriction.stream.model.Uniform(), sizes)
        return _join(np.asarray(chunks, dtype=np.int64).tolist(), bits)
