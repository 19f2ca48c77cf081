"""The deployed codec (`cloud.codec.model`) in the benchmark, once per training objective.

Families, each at every L of the sweep, all the per-measurement SDLGM that `sparsetel train`
fits and the edge runs (codes sent as the wire packs them: ``wire.record_bits`` per
measurement, no entropy coding):

- "sdlgm-generative": the codes generate the KPIs and the target (the default objective);
- "sdlgm-discriminative": only the target shapes the codes;
- "sdlgm-conditional": codes learned through q(z | x, y), sent from p(z | x);
- "sdlgm-adaptive": the generative objective with the adaptive sparsity schedule, 4 L
  slots tightened to L (compare it with "sdlgm-generative" at the same L: equal final budget).

They run only when `--methods` names them (`runner.ON_REQUEST`). Each is scored twice: as
every codec is (the benchmark's common predictor fed the decoded KPIs: target_mae,
target_r2) and by its own code predictor, the one its objective trained (own_target_mae,
own_target_r2), which is what the cloud runs on that model's codes.
`stats()` adds the distribution of codes used per measurement.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...shared.rundir import TRAIN_LOG_FILE
from ...shared.wire import record_bits
from ..codec.model import SDLGM
from ..codec.normaliser import Windows, make_windows
from ..data.datasets import Dataset
from ..training.evaluate import target_scores
from ..training.loop import Trainer
from ..training.options import QUICK, TrainOptions
from .dataset import BenchData
from .method import Coded, TrainData

__all__ = ["FAMILIES", "SupervisedCodec", "supervised_methods"]

FAMILIES = {
    "sdlgm-generative": {"objective": "generative"},
    "sdlgm-discriminative": {"objective": "discriminative"},
    "sdlgm-conditional": {"objective": "conditional"},
    "sdlgm-adaptive": {"objective": "generative", "sparsity": "adaptive"},
}
# Training sizes: the QUICK preset of `sparsetel train` for a benchmark run, less for --quick.
SIZES = dict(QUICK)
QUICK_SIZES = {**QUICK, "steps": 150, "finetune_steps": 40, "eval_every": 50}
_CHUNK = 8192
DEFAULT_K = 128  # the codebook when the run sets none


class SupervisedCodec:
    """One training objective of the deployed SDLGM at one L (see the module docstring)."""

    lossy = True
    seeded = True

    def __init__(self, family: str, L: int, K: int, quick: bool = False) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; one of {sorted(FAMILIES)}")
        self.family, self.L, self.K = family, L, K
        self.options: dict[str, Any] = dict(FAMILIES[family])  # TrainOptions fields
        slots = f", {min(255, 4 * L)} slots tightened to L" if "sparsity" in self.options else ""
        self.setting = f"L={L}, K={K}{slots}"
        self.sizes: dict[str, Any] = QUICK_SIZES if quick else SIZES
        self.model: SDLGM | None = None
        self._data: BenchData | None = None
        self._shape = (8, 1)  # predictor window W and horizon h, set by `bind`
        self._nnz: list[np.ndarray] = []
        self._used = np.zeros(K, dtype=bool)

    def bind(self, data: BenchData, windows: Windows) -> None:
        """The runner hands over the whole benchmark data (the target of the training and
        validation sessions is needed) and the predictor's window and horizon."""
        self._data, self._shape = data, (windows.window, windows.horizon)

    def fit(self, train: TrainData, seed: int) -> None:
        data = self._bound()
        window, horizon = self._shape
        with tempfile.TemporaryDirectory(prefix="sparsetel-bench-") as tmp:
            opts = TrainOptions(
                data=Path(tmp), kpis=data.kpis, target=data.target, out=Path(tmp),
                horizon=horizon, L=self.L, K=self.K, window=window, seed=seed,
                progress=False, **self.sizes, **self.options,
            ).resolved()  # fmt: skip
            torch.manual_seed(seed)
            parts = [_windows(part, data, window, horizon) for part in data.parts[:2]]
            trainer = Trainer(opts, data.normaliser, data.scaler, *parts)
            trainer.fit(Path(tmp) / TRAIN_LOG_FILE)
        self.model = trainer.model.cpu().eval()
        self._nnz, self._used = [], np.zeros(self.K, dtype=bool)

    def _bound(self) -> BenchData:
        if self._data is None:
            raise RuntimeError(f"{self.family} {self.setting}: the runner must bind the data")
        return self._data

    def _model(self) -> SDLGM:
        if self.model is None:
            raise RuntimeError(f"{self.family} {self.setting}: fit before coding")
        return self.model

    def _counts(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The codes the edge sends, as counts (float32, shape: [N, K]), for rows [N, D]."""
        m = self._model()
        z, k = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (x, mask))
        parts = [m.hard_counts(a, b) for a, b in zip(z.split(_CHUNK), k.split(_CHUNK), strict=True)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.K), np.float32)

    def code_frames(self, pieces: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Coded]:
        """Code frames (x, mask: [n_i, D]): what the decoder makes of the codes, and the
        wire's bits for them (nnz field and indices per measurement)."""
        m, out = self._model(), []
        for x, mask in pieces:
            counts = self._counts(x, mask)
            nnz = counts.sum(-1).round().astype(np.int64)
            with torch.inference_mode():
                recon = m.decode(torch.from_numpy(counts))[0].double().numpy()
            self._nnz.append(nnz)
            self._used |= counts.sum(0) > 0
            bits = sum(record_bits(int(n), self.L, self.K) for n in nnz)
            out.append(Coded(recon=recon, bits=bits))
        return out

    def code_frame(self, x: np.ndarray, mask: np.ndarray) -> Coded:
        return self.code_frames([(x, mask)])[0]

    def own_scores(self, w: Windows) -> dict[str, float | None]:
        """own_target_mae/_r2: this model's own code predictor on the test windows."""
        if len(w.ends) < 2:
            return {"own_target_mae": None, "own_target_r2": None}
        m, counts = self._model(), torch.from_numpy(self._counts(w.z, w.mask))
        preds = []
        for ends in np.array_split(w.ends, max(1, len(w.ends) // _CHUNK)):
            with torch.inference_mode():
                preds.append(m.predict(counts[w.window_rows(ends)]).double().numpy())
        scaler = self._bound().scaler
        mae, r2 = target_scores(w.y[w.ends + w.horizon], scaler.inverse(np.concatenate(preds)))
        return {"own_target_mae": mae, "own_target_r2": r2}

    def nnz_per_measurement(self) -> np.ndarray:
        """Codes sent per coded measurement, in coding order."""
        return np.concatenate(self._nnz) if self._nnz else np.zeros(0, dtype=np.int64)

    def stats(self) -> dict[str, Any]:
        """Codes used per measurement over the coded test stream: mean, max, share of
        measurements at each count 0..L (nnz_share_<n>), and unused codewords."""
        nnz = self.nnz_per_measurement() if self._nnz else np.zeros(1, dtype=np.int64)
        shares = np.bincount(nnz, minlength=self.L + 1) / len(nnz)
        return {
            "mean_nonzeros": float(nnz.mean()),
            "max_nonzeros": float(nnz.max()),
            "codewords_unused_share": float(1.0 - self._used.mean()),
            "K": float(self.K),
            **{f"nnz_share_{n}": float(s) for n, s in enumerate(shares)},
        }


def _windows(part: Dataset, data: BenchData, window: int, horizon: int) -> Windows:
    kpis, targets = [s.kpis for s in part.sessions], [s.target for s in part.sessions]
    return make_windows(kpis, targets, data.normaliser, window, horizon)


def supervised_methods(
    Ls: Sequence[int], K: int | None = None, quick: bool = False
) -> list[SupervisedCodec]:
    """Every objective family at every L, codebook K (None: DEFAULT_K)."""
    return [SupervisedCodec(f, L, K or DEFAULT_K, quick) for f in FAMILIES for L in Ls]
