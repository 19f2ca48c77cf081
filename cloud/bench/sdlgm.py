"""Our codec in the benchmark: SDLGM with temporal context (`cloud.temporal`) and ablations.

Families, each at every L of the sweep:
- "sdlgm": gated codes, straight-through Gumbel-Softmax, closed-loop temporal context;
- "sdlgm-nogates": the paper's Gumbel-Softmax baseline, always L codes (no gates);
- "sdlgm-relaxed": relaxed (soft) Gumbel-Softmax samples in training instead of
  straight-through;
- "sdlgm-memoryless": no temporal context, every measurement coded on its own (what the
  per-measurement SDLGM of `cloud.model` does).

L sets the operating point too: the decoder variance aims at ``15 + 5 log2 L`` dB (15, 20,
25, 30 dB for L = 1, 2, 4, 8), since more codes only pay where finer fidelity is asked for.

The payload of a frame is entropy coded with tables fixed at training time (from the codes
of the training stream, add-one smoothed): per measurement its count of open codes (a table
for key measurements, one for the rest; the open slots are a prefix), then the codeword index
of each open slot (one table per kind and slot), in one range coder (`constriction`); the
frame costs every flushed 32-bit word. Without gates the count is not sent (always L). The
reconstruction is decoded from those words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import constriction
import numpy as np
import torch

from ..temporal import Codes, TemporalConfig, TemporalSDLGM, code_frames, train_temporal
from .entropy import SymbolTable
from .method import FRAME, Coded, TrainData, frames

__all__ = ["SDLGMCodec", "sdlgm_methods"]

FAMILIES = {
    "sdlgm": {},
    "sdlgm-nogates": {"gates": False},
    "sdlgm-relaxed": {"estimator": "relaxed"},
    "sdlgm-memoryless": {"context": False},
}
TABLE_SAMPLE = 300  # training frames whose codes fit the entropy tables


def target_snr_db(L: int) -> float:
    """The distortion each L aims at: 15 dB at L = 1, 5 dB more per doubling."""
    return 15.0 + 5.0 * math.log2(L)


class SDLGMCodec:
    """One SDLGM family at one L (see the module docstring)."""

    lossy = True
    seeded = True

    def __init__(self, family: str, L: int, K: int, steps: int, batch: int) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown SDLGM family {family!r}; one of {sorted(FAMILIES)}")
        self.family = family
        self.L = L
        self.setting = f"L={L}, K={K}, {target_snr_db(L):.0f} dB"
        self._cfg = dict(L=L, K=K, steps=steps, batch=batch, snr_db=target_snr_db(L))
        self._cfg.update(FAMILIES[family])
        self.model: TemporalSDLGM | None = None
        self._count_tables: list[SymbolTable] = []
        self._index_tables: list[list[SymbolTable]] = []
        self._used: np.ndarray = np.zeros(0, dtype=bool)
        self._nnz: list[np.ndarray] = []

    def fit(self, train: TrainData, seed: int) -> None:
        cfg = TemporalConfig(D=train.D, frame=FRAME, seed=seed, **self._cfg)  # type: ignore[arg-type]
        self.model = train_temporal(cfg, train.x, train.mask)
        pieces = [
            (x[c], m[c]) for x, m in zip(train.x, train.mask, strict=True) for c in frames(len(x))
        ]
        step = max(len(pieces) // TABLE_SAMPLE, 1)
        coded = code_frames(self.model, pieces[::step])
        self._fit_tables(coded)
        self._used = np.zeros((cfg.L, cfg.K), dtype=bool)
        self._nnz = []

    def _fit_tables(self, coded: Sequence[Codes]) -> None:
        cfg = self._model().cfg
        counts = np.zeros((2, cfg.L + 1))
        indices = np.zeros((2, cfg.L, cfg.K))
        for c in coded:
            nnz = c.gates.sum(1)
            for kind, rows in enumerate((c.key, ~c.key)):
                counts[kind] += np.bincount(nnz[rows], minlength=cfg.L + 1)
                for slot in range(cfg.L):
                    used = c.codes[rows, slot][c.gates[rows, slot]]
                    indices[kind, slot] += np.bincount(used, minlength=cfg.K)
        self._count_tables = [SymbolTable.from_counts(n) for n in counts]
        self._index_tables = [[SymbolTable.from_counts(n) for n in kind] for kind in indices]

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
        model = self._model()
        nnz = codes.gates.sum(1)
        kinds = np.where(codes.key, 0, 1)
        encoder = constriction.stream.queue.RangeEncoder()
        if model.cfg.gates:
            for n, kind in zip(nnz, kinds, strict=True):
                encoder.encode(int(n), self._count_tables[kind].model)
        for c, n, kind in zip(codes.codes, nnz, kinds, strict=True):
            for slot in range(n):
                encoder.encode(int(c[slot]), self._index_tables[kind][slot].model)
        words = np.asarray(encoder.get_compressed(), dtype=np.uint32)
        arrived = self._receive(words, kinds)
        for idx in arrived:
            self._used[np.arange(len(idx)), idx] = True
        self._nnz.append(nnz)
        return Coded(recon=self._reconstruct(arrived, codes.key), bits=32 * int(words.size))

    def _receive(self, words: np.ndarray, kinds: np.ndarray) -> list[np.ndarray]:
        """The decoder's side: each measurement's count, then its open slots' indices."""
        cfg = self._model().cfg
        decoder = constriction.stream.queue.RangeDecoder(words)
        if cfg.gates:
            counts = [int(decoder.decode(self._count_tables[k].model)) for k in kinds]
        else:
            counts = [cfg.L] * len(kinds)
        return [
            np.array([decoder.decode(self._index_tables[k][s].model) for s in range(n)], np.int64)
            for n, k in zip(counts, kinds, strict=True)
        ]

    def _reconstruct(self, arrived: Sequence[np.ndarray], key: np.ndarray) -> np.ndarray:
        """x̂_t = x̂_{t-1} (0 at a key measurement) + the codewords of the open slots."""
        book = self._model().codebook.detach().double().numpy()  # [L, K, D]
        out = np.zeros((len(arrived), book.shape[2]))
        prev = np.zeros(book.shape[2])
        for t, idx in enumerate(arrived):
            prev = (0.0 if key[t] else prev) + book[np.arange(len(idx)), idx].sum(0)
            out[t] = prev
        return out

    def stats(self) -> dict[str, float]:
        nnz = np.concatenate(self._nnz) if self._nnz else np.zeros(1)
        return {
            "mean_nonzeros": float(nnz.mean()),
            "max_nonzeros": float(nnz.max()),
            # Over all L * K codewords (one book of K per slot).
            "codewords_unused_share": float(1.0 - self._used.mean()),
        }


def sdlgm_methods(Ls: Sequence[int], K: int, quick: bool = False) -> list[SDLGMCodec]:
    """Every family at every L; `quick` trains briefly (tests)."""
    steps, batch = (40, 256) if quick else (400, 512)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    return [SDLGMCodec(f, L, K, steps, batch) for f in FAMILIES for L in Ls]
