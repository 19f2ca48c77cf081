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
for key measurements, one for the rest), then its codeword indices (likewise two tables), in
one range coder (`constriction`); the frame costs every flushed 32-bit word. Without gates the
count is not sent (always L). The reconstruction is decoded from those words.
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
        self._index_tables: list[SymbolTable] = []
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
        self._used = np.zeros(cfg.K, dtype=bool)
        self._nnz = []

    def _fit_tables(self, coded: Sequence[Codes]) -> None:
        cfg = self._model().cfg
        counts = [np.zeros(cfg.L + 1), np.zeros(cfg.L + 1)]
        indices = [np.zeros(cfg.K), np.zeros(cfg.K)]
        for c in coded:
            nnz = c.gates.sum(1)
            for kind, rows in enumerate((c.key, ~c.key)):
                counts[kind] += np.bincount(nnz[rows], minlength=cfg.L + 1)
                indices[kind] += np.bincount(c.codes[rows][c.gates[rows]], minlength=cfg.K)
        self._count_tables = [SymbolTable.from_counts(n) for n in counts]
        self._index_tables = [SymbolTable.from_counts(n) for n in indices]

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
        sent = [np.sort(c[g]) for c, g in zip(codes.codes, codes.gates, strict=True)]
        encoder = constriction.stream.queue.RangeEncoder()
        if model.cfg.gates:
            for n, kind in zip(nnz, kinds, strict=True):
                encoder.encode(int(n), self._count_tables[kind].model)
        for idx, kind in zip(sent, kinds, strict=True):
            if idx.size:
                encoder.encode(idx.astype(np.int32), self._index_tables[kind].model)
        words = np.asarray(encoder.get_compressed(), dtype=np.uint32)
        arrived = self._receive(words, kinds)
        self._used[np.concatenate(arrived)] = True
        self._nnz.append(nnz)
        return Coded(recon=self._reconstruct(arrived, codes.key), bits=32 * int(words.size))

    def _receive(self, words: np.ndarray, kinds: np.ndarray) -> list[np.ndarray]:
        """The decoder's side: counts first, then each measurement's indices."""
        cfg = self._model().cfg
        decoder = constriction.stream.queue.RangeDecoder(words)
        if cfg.gates:
            counts = [int(decoder.decode(self._count_tables[k].model)) for k in kinds]
        else:
            counts = [cfg.L] * len(kinds)
        return [
            np.asarray(decoder.decode(self._index_tables[k].model, n), dtype=np.int64)
            if n
            else np.zeros(0, dtype=np.int64)
            for n, k in zip(counts, kinds, strict=True)
        ]

    def _reconstruct(self, arrived: Sequence[np.ndarray], key: np.ndarray) -> np.ndarray:
        """x̂_t = x̂_{t-1} (0 at a key measurement) + the codewords that arrived."""
        book = self._model().codebook.detach().double().numpy()
        out = np.zeros((len(arrived), book.shape[1]))
        prev = np.zeros(book.shape[1])
        for t, idx in enumerate(arrived):
            prev = (0.0 if key[t] else prev) + book[idx].sum(0)
            out[t] = prev
        return out

    def stats(self) -> dict[str, float]:
        nnz = np.concatenate(self._nnz) if self._nnz else np.zeros(1)
        return {
            "mean_nonzeros": float(nnz.mean()),
            "max_nonzeros": float(nnz.max()),
            "codewords_unused_share": float(1.0 - self._used.mean()),
        }


def sdlgm_methods(Ls: Sequence[int], K: int, quick: bool = False) -> list[SDLGMCodec]:
    """Every family at every L; `quick` trains briefly (tests)."""
    steps, batch = (40, 256) if quick else (400, 512)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    return [SDLGMCodec(f, L, K, steps, batch) for f in FAMILIES for L in Ls]
