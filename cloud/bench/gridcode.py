"""Grid-aware baselines: lossless and predictive coders that know each KPI's native grid.

Most 5G KPIs are reported in whole units (dBm, CQI steps, km/h, kbps), and the learned codec
exploits it (`find_grid`); these baselines get the same knowledge, so a comparison with them
is fair:

- `GridLossless` codes each raw float32 value as an integer on its KPI's grid, predicted from
  the frame's previous values, and reproduces every value bit for bit (NaN positions, -0.0 and
  off-grid values included);
- `GridPredictive` is classic closed-loop predictive coding (`classic.Predictive`) whose steps
  are whole multiples of each KPI's grid, so gridded KPIs stay on their grid and decode exactly
  once the step is finer than it.

Both code their integers with `EscapeTable`s (`escape`): the symbols seen in training, plus
one escape after which any other integer follows in a universal code. A frame is one
range-coder stream (`FrameEncoder`); it costs 32 bits per flushed word. Tables are static,
or adapt to the frame as they code it (`table="adaptive"`; a validation run picks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..codec.normaliser import CLIP
from ..codec.temporal import Grid, find_grid
from .classic import fit_gains, training_frames
from .escape import EscapeTable, FrameDecoder, FrameEncoder
from .lossless import Lossless, not_fitted
from .method import Coded, Method, TrainData

__all__ = [
    "LOSSLESS_PREDICTOR",
    "LOSSLESS_TABLE",
    "PREDICTIVE_TABLE",
    "QUICK_STEPS",
    "STEPS",
    "GridLossless",
    "GridPredictive",
    "grid_methods",
]

# Tokens of the lossless coder besides residuals, which stay within ±2**53 (and apart from
# `escape.ESCAPED`, the decoder's mark of an escape).
MISSING = -(2**62)  # the value is missing (NaN)
OFF_GRID = MISSING + 1  # the value follows as its raw 32 bits
ON_GRID_LIMIT = 2.0**50  # grid indices beyond this are sent raw (int64 and float64 stay exact)
ADAPT_MEMORY = 64  # weight of an adaptive table's training counts against the frame's own
TABLES = ("static", "adaptive")


def _memory(table: str, memory: int) -> int | None:
    """The coders' `memory` for `table` ("static": None); ValueError on a bad choice."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    return memory if table == "adaptive" else None


def _ordered(raw: np.ndarray) -> np.ndarray:
    """float32 values (any shape) -> their bits as order-preserving integers (int64):
    ``+x`` keeps its bits b, ``-x`` becomes ``-b - 1`` (so -0.0 is -1, apart from +0.0)."""
    b = np.asarray(raw, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(b >= 0, b, -(b & 0x7FFFFFFF) - 1)


def _unordered(n: np.ndarray) -> np.ndarray:
    """Inverse of `_ordered` (int64 -> float32)."""
    n = np.asarray(n, dtype=np.int64)
    b = np.where(n >= 0, n, (-n - 1) | 0x80000000)
    return b.astype(np.uint32).view(np.float32)


def _to_int(grid: Grid, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (float32, [..., D]) as integers (int64, [..., D]) and where that is exact
    (bool, [..., D]): a KPI with a grid takes ``rint((v - origin) / step)`` where
    `_to_float` gives v back bit for bit; one without takes `_ordered`. NaN is never exact."""
    gridded = grid.step > 0
    with np.errstate(invalid="ignore", over="ignore"):
        u = (raw.astype(np.float64) - grid.origin) / np.where(gridded, grid.step, 1.0)
        near = np.isfinite(u) & (np.abs(u) < ON_GRID_LIMIT)
    n = np.where(gridded, np.where(near, np.rint(u), 0).astype(np.int64), _ordered(raw))
    same = _to_float(grid, n).view(np.uint32) == raw.view(np.uint32)
    return n, same & (near | ~gridded) & ~np.isnan(raw)


def _to_float(grid: Grid, n: np.ndarray) -> np.ndarray:
    """Inverse of `_to_int` where it is exact (int64 -> float32, [..., D])."""
    with np.errstate(over="ignore"):
        on_grid = (grid.origin + n * grid.step).astype(np.float32)
    return np.where(grid.step > 0, on_grid, _unordered(n))


def _medians(n: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Each KPI's median integer (int64, [D]) over its `exact` ones (n, exact: [N, D]); 0
    where it has none."""
    columns = [n[exact[:, j], j] for j in range(n.shape[1])]
    return np.array([np.rint(np.median(c)) if c.size else 0 for c in columns], dtype=np.int64)


def _history(n: np.ndarray, exact: np.ndarray, median: np.ndarray) -> tuple[np.ndarray, ...]:
    """Before each measurement (arrays: [F, n, D]; `median`: [D]), its KPI's last and
    second-last exact integer in the frame (`median` where there is none) and how many exact
    ones there are (int64, [F, n, D] each)."""
    t = np.arange(n.shape[1])[None, :, None]
    last = np.maximum.accumulate(np.where(exact, t, -1), axis=1)  # exact at or before t
    before = np.concatenate([np.full_like(last[:, :1], -1), last[:, :-1]], axis=1)
    before2 = np.where(before >= 0, np.take_along_axis(before, np.maximum(before, 0), 1), -1)

    def value(i: np.ndarray) -> np.ndarray:
        return np.where(i >= 0, np.take_along_axis(n, np.maximum(i, 0), axis=1), median)

    return value(before), value(before2), np.cumsum(exact, axis=1) - exact


def _residuals(n: np.ndarray, exact: np.ndarray, median: np.ndarray, linear: bool) -> np.ndarray:
    """Each exact integer's residual from its prediction (int64, [F, n, D]; 0 elsewhere):
    its KPI's previous exact one in the frame (the first against `median`, [D]) or, with
    `linear` and from the third on, ``2 * prev - prevprev``."""
    prev, prev2, rank = _history(n, exact, median)
    pred = np.where(linear & (rank >= 2), 2 * prev - prev2, prev)
    return np.where(exact, n - pred, 0)


def _integers(
    residual: np.ndarray, exact: np.ndarray, median: np.ndarray, linear: bool
) -> np.ndarray:
    """Inverse of `_residuals` (int64, [F, n, D]; meaningful where `exact`). Over a KPI's
    exact entries r_0, r_1, ...: with delta prediction v_k = median + sum r_i; with linear,
    the differences v_k - v_{k-1} are the sums r_1 + ... + r_k, so
    v_k = median + sum_{i<=k} c_i - k r_0 with c_i = r_0 + ... + r_i. int64 may wrap in the
    sums; the result is exact all the same (arithmetic modulo 2**64)."""
    c = np.cumsum(residual, axis=1)
    if not linear:
        return median + c
    rank = np.cumsum(exact, axis=1) - exact
    r0 = np.sum(np.where(exact & (rank == 0), residual, 0), axis=1, keepdims=True)
    return median + np.cumsum(np.where(exact, c, 0), axis=1) - rank * r0


class GridLossless(Lossless):
    """Raw float32 values as integers on each KPI's grid (`find_grid` on the raw training
    values; a KPI without one uses its floats' bits, `_ordered`), each coded as its residual
    from a prediction: the KPI's previous value in the frame ("delta"; the first against the
    training median), or ``2 * prev - prevprev`` over its last two ("linear", once there are
    two). The tokens -- residuals, MISSING for NaN and OFF_GRID for a value its grid cannot
    give back exactly (it follows as its 32 raw bits) -- go through two `EscapeTable`s per
    KPI: one up to its first value of the frame, one after, static or adaptive (`table`).
    The frame comes back bit for bit, NaN positions and -0.0 included."""

    family = "grid-lossless"

    def __init__(
        self, predictor: str = "delta", table: str = "static", memory: int = ADAPT_MEMORY
    ) -> None:
        super().__init__()
        if predictor not in ("delta", "linear"):
            raise ValueError(f"predictor must be 'delta' or 'linear', got {predictor!r}")
        self._memory = _memory(table, memory)
        self.predictor, self.table = predictor, table
        self.setting = f"{predictor}, {table}"
        self._grid = Grid(np.zeros(0), np.zeros(0))
        self._median = np.zeros(0, dtype=np.int64)
        self._tables: list[EscapeTable] = []  # first value of each KPI, then the rest

    def fit(self, train: TrainData, seed: int) -> None:
        super().fit(train, seed)
        x, mask, valid = training_frames(train)
        raw = np.asarray(train.to_raw(np.where(mask, x, np.nan)), dtype=np.float32)
        raw = np.where(mask, raw, np.float32(np.nan)).astype(np.float32)
        rows = raw[valid]
        self._grid = find_grid(rows.astype(np.float64), ~np.isnan(rows))
        self._median = _medians(*_to_int(self._grid, rows))
        tokens, first = self._tokens(raw)
        always = (MISSING, OFF_GRID)
        key = [tokens[..., j][first[..., j] & valid] for j in range(train.D)]
        rest = [tokens[..., j][~first[..., j] & valid] for j in range(train.D)]
        self._tables = [EscapeTable.fit(s, always) for s in key + rest]

    def _tokens(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw frames (float32, [F, n, D]) -> tokens (int64, [F, n, D]) and which use the
        KPI's first-value table (bool, [F, n, D]: up to its first exact value)."""
        n, exact = _to_int(self._grid, raw)
        residual = _residuals(n, exact, self._median, self.predictor == "linear")
        tokens = np.where(exact, residual, np.where(np.isnan(raw), MISSING, OFF_GRID))
        first = np.cumsum(exact, axis=1) - exact == 0
        return tokens, first

    def _pack(self, raw: np.ndarray) -> tuple[object, int]:
        tokens, first = (a[0] for a in self._tokens(raw[None]))
        D = raw.shape[1]
        encoder = FrameEncoder(self._memory)
        for j in range(D):
            encoder.write(self._tables[j], tokens[first[:, j], j])
            encoder.write(self._tables[D + j], tokens[~first[:, j], j])
        encoder.write_raw(raw.T[(tokens == OFF_GRID).T].view(np.uint32))
        words = encoder.words()
        return words, 32 * int(words.size)

    def _unpack(self, payload: object, shape: tuple[int, int]) -> np.ndarray:
        assert isinstance(payload, np.ndarray)
        n, D = shape
        decoder = FrameDecoder(payload, self._memory)
        groups: list[np.ndarray] = []
        for j in range(D):
            head = self._read_head(decoder, self._tables[j], n)
            groups += [head, decoder.read(self._tables[D + j], n - head.size)]
        groups = decoder.resolve(groups)
        tokens = np.stack([np.concatenate(groups[2 * j : 2 * j + 2]) for j in range(D)], axis=1)
        exact = (tokens != MISSING) & (tokens != OFF_GRID)
        residual = np.where(exact, tokens, 0)[None]
        n_int = _integers(residual, exact[None], self._median, self.predictor == "linear")[0]
        raw = np.where(tokens == MISSING, np.float32(np.nan), _to_float(self._grid, n_int))
        columns = raw.T.copy()
        off = (tokens == OFF_GRID).T
        columns[off] = decoder.read_raw(int(off.sum())).view(np.float32)
        return columns.T.astype(np.float32)

    @staticmethod
    def _read_head(decoder: FrameDecoder, table: EscapeTable, n: int) -> np.ndarray:
        """A KPI's tokens up to its first exact value (or all `n`), read one at a time: only
        then does the decoder know where its first-value table ends."""
        head: list[int] = []
        while len(head) < n:
            head.append(int(decoder.read(table, 1)[0]))
            if head[-1] not in (MISSING, OFF_GRID):
                break
        return np.array(head, dtype=np.int64)


class GridPredictive:
    """Closed-loop predictive coding in normalised space (`classic.Predictive`) on each
    KPI's grid (`find_grid` on the normalised training rows).

    KPI j's step is `step` aligned to a whole number (>= 1) of its grid steps where it has a
    grid (`Grid.aligned`); the target's step is first divided by sqrt(`target_weight`).
    Predictions -- the training mean for the key (first) measurement, x̂[t-1] ("previous")
    or ``x̂[t-1] + g (x̂[t-1] - x̂[t-2])`` ("linear", g as `classic.fit_gains` keeps it) --
    are clipped to the normaliser's span and snapped to the grid, so a gridded KPI's
    reconstruction stays on it and decodes exactly once its step is the grid's. The residual
    index ``rint((x - pred) / step_j)`` (0 for a missing entry) goes through two
    `EscapeTable`s per KPI (key, rest) fitted by running the same loop over the training
    frames; ``|x̂ - x| <= step_j / 2`` on every observed entry with |x| <= `span`. Frames
    decode on their own; bits are 32 per flushed word.
    """

    L = None
    lossy = True
    seeded = False

    def __init__(
        self,
        kind: str,
        step: float,
        table: str = "static",
        span: float = CLIP,
        memory: int = ADAPT_MEMORY,
    ) -> None:
        if kind not in ("previous", "linear"):
            raise ValueError(f"kind must be 'previous' or 'linear', got {kind!r}")
        if not step > 0 or not span > 0:
            raise ValueError(f"step and span must be positive, got {step}, {span}")
        self._memory = _memory(table, memory)
        self.kind, self.step, self.span, self.table = kind, float(step), float(span), table
        self.family = f"grid-predictive-{kind}"
        self.setting = f"step={step:.4g}" + (", adaptive" if table == "adaptive" else "")
        self._grid = Grid(np.zeros(0), np.zeros(0))
        self._gridded = np.zeros(0, dtype=bool)  # [D]: KPIs with a grid
        self._cell = np.zeros(0)  # [D]: their grid step, 1 elsewhere
        self.steps = np.zeros(0)  # [D]: each KPI's step, set by fit
        self._key = np.zeros(0)  # [D]: the key measurement's prediction
        self._gains = np.zeros(0)  # [D]: 0 for "previous"
        self._tables: list[EscapeTable] = []  # key tables of the D KPIs, then the rest

    def fit(self, train: TrainData, seed: int) -> None:
        rows, mask = train.rows(), np.concatenate(train.mask)
        if rows.shape[0] == 0:
            raise ValueError("training data has no rows")
        self._grid = find_grid(rows, mask)
        self._gridded = self._grid.step > 0
        self._cell = np.where(self._gridded, self._grid.step, 1.0)
        target = np.array([name == train.target for name in train.names])
        finer = self._grid.aligned(self.step / np.sqrt(train.target_weight))
        self.steps = np.where(target, finer, self._grid.aligned(self.step))
        counts = np.maximum(mask.sum(axis=0), 1)
        mean = np.where(mask, rows, 0.0).sum(axis=0) / counts
        self._key = self._snap(mean[None])[0]
        self._gains = fit_gains(train, self.steps) if self.kind == "linear" else np.zeros(train.D)
        x, m, valid = training_frames(train)
        q, _ = self._loop(x, m)
        key = [q[:, 0, j][valid[:, 0]] for j in range(train.D)]
        rest = [q[:, 1:, j][valid[:, 1:]] for j in range(train.D)]
        self._tables = [EscapeTable.fit(s) for s in key + rest]

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return self.code_frames([(x, mask)])[0]

    def code_frames(self, pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Coded]:
        """Code frames (x, mask: [n_i, D]), each on its own; the closed loops of frames of
        one length run side by side (`_loop` and `_rebuild` over [F, n, D]), and each
        frame's indices go through its own stream and back."""
        if not self._tables:
            raise not_fitted("GridPredictive")
        out: list[Coded | None] = [None] * len(pieces)
        for n in sorted({len(x) for x, _ in pieces}):
            at = [i for i, (x, _) in enumerate(pieces) if len(x) == n]
            x = np.stack([np.asarray(pieces[i][0], dtype=np.float64) for i in at])
            mask = np.stack([np.asarray(pieces[i][1], dtype=bool) for i in at])
            q, _ = self._loop(x, mask)
            sent = [self._send(frame) for frame in q]
            recon = self._rebuild(np.stack([back for back, _ in sent]))
            recon = np.clip(recon, -self.span, self.span)
            for i, r, (_, bits) in zip(at, recon, sent, strict=True):
                out[i] = Coded(recon=r, bits=bits)
        return [c for c in out if c is not None]

    def _send(self, q: np.ndarray) -> tuple[np.ndarray, int]:
        """One frame's indices (int64, [n, D]) through its stream: what the decoder reads
        back (int64, [n, D]) and the bits sent."""
        n, D = q.shape
        encoder = FrameEncoder(self._memory)
        for j in range(D):
            encoder.write(self._tables[j], q[:1, j])
            encoder.write(self._tables[D + j], q[1:, j])
        words = encoder.words()
        decoder = FrameDecoder(words, self._memory)
        groups = [
            decoder.read(self._tables[k * D + j], c)
            for j in range(D)
            for k, c in ((0, min(n, 1)), (1, max(n - 1, 0)))
        ]
        groups = decoder.resolve(groups)
        back = np.stack([np.concatenate(groups[2 * j : 2 * j + 2]) for j in range(D)], axis=1)
        return back, 32 * int(words.size)

    def _snap(self, pred: np.ndarray) -> np.ndarray:
        """Predictions (float64, [F, D]) clipped to the span and snapped to the grid (what
        `Grid.snap` does, without its per-call set-up: this runs n times a frame)."""
        p = np.minimum(np.maximum(pred, -self.span), self.span)
        o, g = self._grid.origin, self._cell
        return np.where(self._gridded, o + np.rint((p - o) / g) * g, p)

    def _predict(self, recon: np.ndarray, t: int) -> np.ndarray:
        """Prediction of measurement t (float64, [F, D]) from recon[:, :t] ([F, n, D])."""
        if t == 0:
            return np.broadcast_to(self._key, recon[:, 0].shape)
        if t == 1 or self.kind == "previous":
            return self._snap(recon[:, t - 1])
        return self._snap(recon[:, t - 1] + self._gains * (recon[:, t - 1] - recon[:, t - 2]))

    def _loop(self, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoder: x, mask ([F, n, D]) -> indices (int64, [F, n, D]) and the decoder's
        state (float64, [F, n, D]; on the grid, not clipped)."""
        x = np.clip(x, -self.span, self.span)
        symbols = np.zeros(x.shape, dtype=np.int64)
        recon = np.zeros(x.shape)
        for t in range(x.shape[1]):
            pred = self._predict(recon, t)
            q = np.rint((np.where(mask[:, t], x[:, t], pred) - pred) / self.steps)
            symbols[:, t] = q
            recon[:, t] = pred + q * self.steps
        return symbols, recon

    def _rebuild(self, symbols: np.ndarray) -> np.ndarray:
        """The decoder: indices (int, [F, n, D]) -> its state (float64, [F, n, D])."""
        recon = np.zeros(symbols.shape)
        for t in range(symbols.shape[1]):
            recon[:, t] = self._predict(recon, t) + symbols[:, t] * self.steps
        return recon


# Chosen on the validation sessions (docs/benchmark/validation.md, scripts/tune_bench.py).
LOSSLESS_PREDICTOR, LOSSLESS_TABLE = "delta", "adaptive"
PREDICTIVE_TABLE = "adaptive"
# The step sweep: geometric from 1e-4 to 4 (a few to about 34 bits per measurement on
# uccmisl at frames of 50), and denser from 0.05 to 0.5, where the whole-unit KPIs' steps
# reach their grid and the SNR moves fastest (20 to 40 dB there): every budget has settings
# on both sides, and the Bjøntegaard interval has points enough. The fine end is sparser:
# below 0.01 every step is above 60 dB.
STEPS = tuple(
    sorted({*np.geomspace(1e-4, 4.0, 16).tolist(), *np.geomspace(0.05, 0.5, 10).tolist()})
)


# The short sweep of `--quick` runs (tests): ten steps from 0.05 to 1.6, where uccmisl's and
# the simulator's SNR crosses 20-40 dB, so the BD-rate has its four points there.
QUICK_STEPS = tuple(np.geomspace(0.05, 1.6, 10).tolist())


def grid_methods(
    steps: Sequence[float] | None = None,
    table: str = PREDICTIVE_TABLE,
    predictor: str = LOSSLESS_PREDICTOR,
    lossless_table: str = LOSSLESS_TABLE,
    memory: int = ADAPT_MEMORY,
) -> list[Method]:
    """The grid-aware sweep (each a `method.Method`): `GridLossless` with `predictor` and
    `lossless_table`, and `GridPredictive` "previous" and "linear" at each of `steps`
    (default STEPS) with `table` ("static" or "adaptive"). The defaults are the choices made
    on the validation sessions."""
    sweep = np.asarray(STEPS if steps is None else steps, dtype=np.float64)
    methods: list[Method] = [GridLossless(predictor, lossless_table, memory)]
    for kind in ("previous", "linear"):
        methods += [GridPredictive(kind, float(s), table, memory=memory) for s in sweep]
    return methods
