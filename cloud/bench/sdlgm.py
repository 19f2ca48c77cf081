"""Our codec in the benchmark: SDLGM with temporal context (`cloud.codec.temporal`) and ablations.

Families, each at every L of the sweep:
- "sdlgm": gated codes, straight-through Gumbel-Softmax, closed-loop temporal context;
- "sdlgm-nogates": the paper's Gumbel-Softmax baseline, always L codes (no gates);
- "sdlgm-relaxed": relaxed (soft) Gumbel-Softmax samples in training instead of
  straight-through;
- "sdlgm-memoryless": no temporal context, every measurement coded on its own (what the
  per-measurement SDLGM of `cloud.codec.model` does).

L sets the operating point too: the decoder variance aims at ``SNR_AT_L1 + 7.5 log2 L`` dB
(10, 17.5, 25, 32.5 dB for L = 1, 2, 4, 8, the mapping chosen on the validation sessions),
since more codes only pay where finer fidelity is asked for. "sdlgm" also runs its
rate-distortion curve (RD_SWEEP, 20 to 60 dB) at
L = RD_L = 16 (or the largest L asked for, if more): near-lossless coding needs a
word for nearly every KPI of a key measurement, and two for a wide move.

The target KPI the cloud predicts (`TrainData.target`) gets `TrainData.target_weight` times
the others' precision in the likelihood, as every baseline gives it: when L is short, its
moves are coded first. A frame's first measurement is its key measurement: at frames of two
(the edge agent's default framing at 1 Hz) every other measurement is coded without context.

The payload of a frame is entropy coded with tables fixed at training time (from the codes
of the training stream, add-one smoothed), all in one range coder (`constriction`); the frame
costs every flushed 32-bit word. A measurement's words, sorted by the KPI they move, are sent
as a sequence: the next KPI given the previous one in this measurement (or "none yet"), with
a stop symbol (left out once L words are sent), then which of that KPI's words; separate
tables for key measurements and the rest. Which KPIs move together is what the sequence
tables learn, so a joint move costs less than its parts sent alone. The reconstruction is
decoded from those words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import constriction
import numpy as np

from ..codec.temporal import Codes, TemporalConfig, TemporalSDLGM, code_frames, train_temporal
from .entropy import SymbolTable
from .method import Coded, TrainData, frames

__all__ = ["SDLGMCodec", "sdlgm_methods"]

FAMILIES: dict[str, dict[str, Any]] = {
    "sdlgm": {},
    "sdlgm-nogates": {"gates": False},
    "sdlgm-relaxed": {"estimator": "relaxed"},
    "sdlgm-memoryless": {"context": False},
}
TABLE_SAMPLE = 400  # training frames whose codes fit the entropy tables
MIN_WORD_USES = 3  # uses on that sample below which a word is pruned
RD_L = 16  # cap of the rate-distortion sweep: a key word and a word or two per KPI
# dB aimed at along the curve at RD_L: dense from 20 to 34, so the curve has at least four
# points between 20 and 40 dB, where the Bjøntegaard delta rate is taken (it lands above aim).
# No 90 dB point: it cost a fifth of the default run, and the grid-aware lossless coder is
# exact at fewer bits (32.0 against its 38.8 on uccmisl at frames of 50).
RD_SWEEP = (20.0, 25.0, 28.0, 31.0, 34.0, 45.0, 60.0)


# The distortion each L aims at: SNR_AT_L1 dB at L = 1, SNR_PER_DOUBLING more per doubling;
# chosen on the validation sessions (docs/benchmark/validation.md, scripts/tune_bench.py).
SNR_AT_L1 = 10.0
SNR_PER_DOUBLING = 7.5
# Adam's learning rate for the priors, chosen on the validation sessions as well.
LR = 3e-3


def target_snr_db(L: int, at_l1: float = SNR_AT_L1) -> float:
    """The SNR in dB the codec aims at with L words: `at_l1` at L = 1, SNR_PER_DOUBLING more
    per doubling."""
    return at_l1 + SNR_PER_DOUBLING * math.log2(L)


class SDLGMCodec:
    """One SDLGM family at one L (see the module docstring)."""

    lossy = True
    seeded = True

    def __init__(
        self,
        family: str,
        L: int,
        steps: int,
        batch: int,
        snr_db: float | None = None,
        lr: float = LR,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown SDLGM family {family!r}; one of {sorted(FAMILIES)}")
        self.family = family
        self.L = L
        snr = target_snr_db(L) if snr_db is None else snr_db
        self.setting = f"L={L}, {snr:g} dB lattice"
        self._cfg: dict[str, Any] = dict(L=L, steps=steps, batch=batch, snr_db=snr, lr=lr)
        self._cfg.update(FAMILIES[family])
        self.model: TemporalSDLGM | None = None
        self._key_table: SymbolTable | None = None  # the key word of a key measurement
        self._kpi_tables: list[list[SymbolTable]] = []  # [kind][previous KPI or D]
        self._word_tables: list[list[SymbolTable]] = []  # [kind][KPI]
        self._group = np.zeros(0, dtype=np.int64)  # the KPI each word moves
        self._local = np.zeros(0, dtype=np.int64)  # its index among that KPI's words
        self._words: list[np.ndarray] = []  # per KPI, its words
        self._used: np.ndarray = np.zeros(0, dtype=bool)
        self._nnz: list[np.ndarray] = []

    def fit(self, train: TrainData, seed: int) -> None:
        weights = tuple(float(w) for w in train.weights())
        cfg = TemporalConfig(D=train.D, frame=train.frame, seed=seed, weights=weights, **self._cfg)
        model = train_temporal(cfg, train.x, train.mask)
        pieces = [
            (x[c], m[c])
            for x, m in zip(train.x, train.mask, strict=True)
            for c in frames(len(x), train.frame)
        ]
        sample = pieces[:: max(len(pieces) // TABLE_SAMPLE, 1)]
        # Dead words (used fewer than MIN_WORD_USES times on the training sample) are pruned
        # before the tables are fitted, as VQ training resets dead codes.
        uses = np.zeros(model.cfg.K)
        for c in code_frames(model, sample):
            uses += np.bincount(c.codes[c.gates], minlength=model.cfg.K)
        keep = np.flatnonzero(uses >= MIN_WORD_USES)
        # A codec that never opens a gate (memoryless at L = 1: key words only) keeps one.
        self.model = model.pruned(keep if len(keep) else np.array([int(uses.argmax())]))
        self._fit_tables(code_frames(self.model, sample))
        self._used = np.zeros(self.model.cfg.K, dtype=bool)
        self._nnz = []

    def _fit_tables(self, coded: Sequence[Codes]) -> None:
        model = self._model()
        D, K = model.cfg.D, model.cfg.K
        self._group = model.group.numpy().astype(np.int64)
        self._words = [np.flatnonzero(self._group == j) for j in range(D)]
        self._local = np.zeros(K, dtype=np.int64)
        for ids in self._words:
            self._local[ids] = np.arange(len(ids))
        kpi = np.zeros((2, D + 1, D + 1))
        word = [[np.zeros(max(len(ids), 2)) for ids in self._words] for _ in range(2)]
        for c in coded:
            for t, kind in enumerate(np.where(c.key, 0, 1)):
                prev = D
                for w in self._sorted(c.codes[t][c.gates[t]]):
                    g = self._group[w]
                    kpi[kind, prev, g] += 1
                    word[kind][g][self._local[w]] += 1
                    prev = g
                kpi[kind, prev, D] += 1
        self._kpi_tables = [[SymbolTable.from_counts(n) for n in rows] for rows in kpi]
        used = np.concatenate([c.key_word[c.key] for c in coded])
        self._key_table = SymbolTable.fit(used, len(model.keys))
        self._word_tables = [[SymbolTable.from_counts(n) for n in rows] for rows in word]

    def _sorted(self, words: np.ndarray) -> np.ndarray:
        return words[np.lexsort((words, self._group[words]))]

    def _model(self) -> TemporalSDLGM:
        if self.model is None:
            raise RuntimeError(f"{self.family} {self.setting}: fit before coding")
        return self.model

    def code_frames(self, pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Coded]:
        """Code many independent frames (x, mask: [n_i, D]) in one closed-loop pass."""
        return [self._send(c) for c in code_frames(self._model(), pieces)]

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return self.code_frames([(x, mask)])[0]

    def _send(self, codes: Codes) -> Coded:
        """Entropy code one frame's codes, decode them back, reconstruct from what arrived."""
        cfg = self._model().cfg
        key_table, kpi_tables, word_tables = self._tables()
        kinds = np.where(codes.key, 0, 1)
        encoder = constriction.stream.queue.RangeEncoder()
        for c, g, kind, kw in zip(codes.codes, codes.gates, kinds, codes.key_word, strict=True):
            if kw >= 0:
                encoder.encode(int(kw), key_table.model)
            prev, words = cfg.D, self._sorted(c[g])
            for w in words:
                encoder.encode(int(self._group[w]), kpi_tables[kind][prev].model)
                encoder.encode(int(self._local[w]), word_tables[kind][self._group[w]].model)
                prev = self._group[w]
            if len(words) < cfg.L - (kw >= 0):
                encoder.encode(cfg.D, kpi_tables[kind][prev].model)
        words = np.asarray(encoder.get_compressed(), dtype=np.uint32)
        key_words, arrived = self._receive(words, codes.key)
        for idx in arrived:
            self._used[idx] = True
        self._nnz.append(np.array([len(a) for a in arrived]) + codes.key)
        recon = self._reconstruct(key_words, arrived)
        return Coded(recon=recon, bits=32 * int(words.size))

    def _tables(self) -> tuple[SymbolTable, list[list[SymbolTable]], list[list[SymbolTable]]]:
        if self._key_table is None:
            raise RuntimeError(f"{self.family} {self.setting}: fit before coding")
        return self._key_table, self._kpi_tables, self._word_tables

    def _receive(self, words: np.ndarray, key: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
        """The decoder's side: per measurement its key word (key measurements), then KPI and
        word until stop or its cap of words. Returns key words (-1: none) and words."""
        cfg = self._model().cfg
        key_table, kpi_tables, word_tables = self._tables()
        decoder = constriction.stream.queue.RangeDecoder(words)
        key_words, out = [], []
        for is_key in key:
            kw = int(decoder.decode(key_table.model)) if is_key else -1
            kind, cap = (0, cfg.L - 1) if is_key else (1, cfg.L)
            got: list[int] = []
            prev = cfg.D
            while len(got) < cap:
                g = int(decoder.decode(kpi_tables[kind][prev].model))
                if g == cfg.D:
                    break
                local = int(decoder.decode(word_tables[kind][g].model))
                got.append(int(self._words[g][local]))
                prev = g
            key_words.append(kw)
            out.append(np.array(got, dtype=np.int64))
        return key_words, out

    def _reconstruct(self, key_words: Sequence[int], arrived: Sequence[np.ndarray]) -> np.ndarray:
        """x̂_t = (its key word at a key measurement, else x̂_{t-1}) + the words that arrived."""
        model = self._model()
        book, keys = model.codebook.double().numpy(), model.keys.double().numpy()
        span = model.cfg.span
        out = np.zeros((len(arrived), book.shape[1]))
        prev = np.zeros(book.shape[1])
        for t, (kw, idx) in enumerate(zip(key_words, arrived, strict=True)):
            prev = (keys[kw] if kw >= 0 else prev) + book[idx].sum(0)
            out[t] = np.clip(prev, -span, span)
        return out

    def nnz_per_measurement(self) -> np.ndarray:
        """Words sent per coded measurement (key word included), in coding order."""
        return np.concatenate(self._nnz) if self._nnz else np.zeros(0, dtype=np.int64)

    def stats(self) -> dict[str, float]:
        nnz = np.concatenate(self._nnz) if self._nnz else np.zeros(1)
        return {
            "mean_nonzeros": float(nnz.mean()),
            "max_nonzeros": float(nnz.max()),
            "codewords_unused_share": float(1.0 - self._used.mean()),
            "K": float(self._model().cfg.K),
        }


def sdlgm_methods(Ls: Sequence[int], K: int | None, quick: bool = False) -> list[SDLGMCodec]:
    """Every family at every L, and "sdlgm" also along its rate-distortion curve at the
    largest L (targets RD_SWEEP dB); `quick` trains briefly (tests). K is not used: the
    codebook is the lattice the training data needs at each fidelity (its size is in
    stats())."""
    steps, batch = (30, 256) if quick else (150, 512)
    methods = [SDLGMCodec(f, L, steps, batch) for f in FAMILIES for L in Ls]
    top = max(max(Ls), RD_L)
    sweep = [] if quick else RD_SWEEP
    return methods + [SDLGMCodec("sdlgm", top, steps, batch, snr_db=s) for s in sweep]
