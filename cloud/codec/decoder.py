"""The cloud half of a run: codes back to KPIs, and code windows to target predictions.

``CloudCodec.load(run_dir)`` needs an exported run (checkpoint.pt and manifest.json). It is
numpy in, numpy out, with torch inside; every call works on a whole batch:

- ``counts(codes)`` (float32, shape: [N, K]): how often each codeword occurs in each code.
  `codes` is a sequence of N code tuples (the wire's records, ``nnz <= L`` indices each) or
  an int array [N, L] padded with K (what the ONNX encoder returns).
- ``decode(codes)`` (float64, shape: [N, D]): the decoder's KPI estimate in raw units, kept
  inside the range seen in training. ``decode_normalised`` gives it in the model's space.
- ``predict(count_windows)``: count windows (shape: [N, W, K], the counts of W consecutive
  measurements of one device, oldest first) -> the target `horizon` steps after the last
  measurement (float64, shape: [N], raw units).
- ``normalise(x)``: raw KPIs (shape: [N, D]) -> the model's space, NaN kept.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ...shared.errors import ModelMismatchError
from ...shared.manifest import ModelManifest, file_sha256
from ...shared.rundir import CHECKPOINT_FILE, MANIFEST_FILE
from .model import Checkpoint

__all__ = ["CloudCodec"]

log = logging.getLogger(__name__)

_CHUNK = 65536  # rows per torch call: bounds memory, keeps the batches large


class CloudCodec:
    """Decoder and KPI predictor of one exported run; see the module docstring."""

    def __init__(self, manifest: ModelManifest, checkpoint: Checkpoint) -> None:
        cfg = checkpoint.cfg
        same = (manifest.L, manifest.K, manifest.window, manifest.horizon, manifest.kpis) == (
            cfg.L,
            cfg.K,
            cfg.window,
            checkpoint.horizon,
            checkpoint.kpis,
        ) and manifest.target == checkpoint.target
        if not same:
            raise ModelMismatchError("manifest and checkpoint describe different models")
        self.manifest = manifest
        self._ckpt = checkpoint
        norms = checkpoint.normaliser.norms
        self._lo = np.array([n.lo for n in norms], dtype=np.float64)
        self._hi = np.array([n.hi for n in norms], dtype=np.float64)

    @classmethod
    def load(cls, run_dir: str | Path) -> CloudCodec:
        """Load an exported run; ModelMismatchError if it is not exported or does not match."""
        run = Path(run_dir)
        if not (run / MANIFEST_FILE).exists():
            raise ModelMismatchError(f"{run} has no {MANIFEST_FILE}: run `sparsetel export` first")
        manifest = ModelManifest.load(run / MANIFEST_FILE)
        ckpt_path = run / CHECKPOINT_FILE
        expected = manifest.extra.get("checkpoint_sha256")
        if expected is not None and (not ckpt_path.exists() or file_sha256(ckpt_path) != expected):
            raise ModelMismatchError(f"{ckpt_path} is not the checkpoint {run} was exported from")
        return cls(manifest, Checkpoint.load(ckpt_path))

    @property
    def checkpoint(self) -> Checkpoint:
        """The trained run behind the codec (evaluation reads the raw predictor from it)."""
        return self._ckpt

    @property
    def L(self) -> int:
        return self.manifest.L

    @property
    def K(self) -> int:
        return self.manifest.K

    @property
    def window(self) -> int:
        return self.manifest.window

    @property
    def horizon(self) -> int:
        return self.manifest.horizon

    def counts(self, codes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Codes -> codeword counts (float32, shape: [N, K]); ValueError on a bad code."""
        if isinstance(codes, np.ndarray) and codes.ndim == 2:
            rows, flat = self._padded_indices(codes)
        else:
            lengths = np.fromiter(map(len, codes), dtype=np.int64, count=len(codes))
            if lengths.size and lengths.max() > self.L:
                raise ValueError(f"a code has {lengths.max()} indices, more than L={self.L}")
            flat = np.fromiter(
                itertools.chain.from_iterable(codes), dtype=np.int64, count=int(lengths.sum())
            )
            rows = np.repeat(np.arange(len(lengths)), lengths)
        if flat.size and (flat.min() < 0 or flat.max() >= self.K):
            raise ValueError(f"code index outside 0..{self.K - 1}")
        n = len(codes)
        out = np.bincount(rows * self.K + flat, minlength=n * self.K)
        return out.reshape(n, self.K).astype(np.float32)

    def _padded_indices(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = codes.astype(np.int64, copy=False)
        if codes.shape[1] > self.L:
            raise ValueError(f"codes have {codes.shape[1]} columns, more than L={self.L}")
        used = codes != self.K
        rows = np.broadcast_to(np.arange(codes.shape[0])[:, None], codes.shape)
        return rows[used], codes[used]

    def decode_normalised(self, codes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Codes -> the decoder's KPI estimate in the model's space (float64, [N, D])."""
        counts = torch.from_numpy(self.counts(codes))
        model = self._ckpt.model
        with torch.inference_mode():
            parts = [model.decode(c)[0] for c in counts.split(_CHUNK)]
        if not parts:
            return np.zeros((0, self.manifest.D))
        return torch.cat(parts).double().numpy()

    def decode(self, codes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Codes -> KPIs in raw units (float64, shape: [N, D]), within the training range."""
        raw = self._ckpt.normaliser.inverse(self.decode_normalised(codes))
        return np.clip(raw, self._lo, self._hi)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Raw KPIs (shape: [N, D]) -> the model's normalised space (float64), NaN kept."""
        return self._ckpt.normaliser.transform(x)

    def predict_sequence(self, counts: np.ndarray) -> np.ndarray:
        """Counts of consecutive measurements (shape: [R, K], oldest first) -> the target at
        t + h for each window of W ending at rows W-1 .. R-1 (float64, [R - W + 1]); the same
        as `predict` on those windows, computed once per row."""
        c = np.asarray(counts, dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != self.K:
            raise ValueError(f"counts must have shape [R, {self.K}], got {list(c.shape)}")
        if len(c) < self.window:
            return np.zeros(0)
        with torch.inference_mode():
            scaled = self._ckpt.model.predict_sequence(torch.from_numpy(c)).double().numpy()
        return self._ckpt.scaler.inverse(scaled)

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        """Count windows (shape: [N, W, K], oldest first) -> target at t + h (float64, [N])."""
        w = np.asarray(count_windows, dtype=np.float32)
        if w.ndim != 3 or w.shape[1:] != (self.window, self.K):
            raise ValueError(
                f"count_windows must have shape [N, {self.window}, {self.K}], got {list(w.shape)}"
            )
        model = self._ckpt.model
        with torch.inference_mode():
            parts = [model.predict(c) for c in torch.from_numpy(w).split(_CHUNK // 64)]
        scaled = torch.cat(parts).double().numpy() if parts else np.zeros(0)
        return self._ckpt.scaler.inverse(scaled)
