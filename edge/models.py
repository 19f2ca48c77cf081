"""The two kinds of model an agent runs, and how it tells them apart.

A run directory's ``manifest.json`` says what its model is: a temporal codec
(``extra["codec"] == "temporal"``: ``codec.json``, run by `edge.temporalencoder` with numpy
only, frames of version 3 that continue each other) or a memoryless ONNX encoder
(``encoder.onnx``, run by `edge.encoder` with onnxruntime, frames of version 2 that stand
alone). `load_encoder` opens either; onnxruntime is imported only when a model needs it, so
an edge running the temporal codec needs neither it nor its wheel.

`ManifestChecks` holds what both kinds check the same way, from the manifest alone: the
source's KPI schema (`check_schema`) and the training range (`valid_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from ..shared.errors import ModelMismatchError
from ..shared.manifest import ModelManifest
from ..shared.rundir import MANIFEST_FILE

if TYPE_CHECKING:
    from .encoder import OnnxEncoder
    from .temporalencoder import TemporalEncoder

__all__ = ["TEMPORAL", "Encoder", "ManifestChecks", "is_temporal", "load_encoder"]

TEMPORAL = "temporal"  # manifest.extra["codec"] of a temporal-codec run

Encoder: TypeAlias = "OnnxEncoder | TemporalEncoder"


def is_temporal(manifest: ModelManifest) -> bool:
    """Whether `manifest` describes a temporal codec (else an ONNX encoder)."""
    return manifest.extra.get("codec") == TEMPORAL


def load_encoder(model_dir: str | Path) -> Encoder:
    """The verified encoder of the run directory `model_dir`, of the kind its manifest names;
    ModelMismatchError saying what is wrong. (Self-test and schema check are the caller's.)"""
    manifest = ModelManifest.load(Path(model_dir) / MANIFEST_FILE)
    if is_temporal(manifest):
        from .temporalencoder import TemporalEncoder

        return TemporalEncoder(model_dir)
    codec = manifest.extra.get("codec")
    if codec is not None and codec != "memoryless":
        raise ModelMismatchError(f"the manifest names codec {codec!r}, which this agent lacks")
    try:
        from .encoder import OnnxEncoder
    except ImportError as exc:  # an edge installed for the temporal codec only
        raise ModelMismatchError(f"an ONNX model needs onnxruntime: {exc}") from exc
    return OnnxEncoder(model_dir)


class ManifestChecks:
    """Checks of measurements against the model's manifest, shared by both encoders."""

    manifest: ModelManifest
    kpis: tuple[str, ...]
    _range_cache: tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    _row_range_cache: tuple[float, tuple[list[float], list[float], tuple[int, ...]]] | None = None

    def valid_rows(self, x: np.ndarray, margin: float) -> np.ndarray:
        """Which rows of `x` (shape: [N, D]) lie in the schema's range, a bool mask [N].

        A KPI's range is what training saw (the manifest's `lo`..`hi`), widened by `margin`
        times its width on each side; a log-scaled KPI is widened in log1p units and must not
        be negative. NaN (missing) always passes. A value far outside, a sentinel the
        operator did not declare or a unit mix-up (kbps for Mbps), would be coded as
        confidently as a real one, so the agent rejects those rows instead (`out_of_range`).
        """
        x = np.asarray(x, dtype=np.float64)
        if not math.isfinite(margin):  # an infinite margin: no check
            return np.ones(len(x), dtype=bool)
        lo, hi, logs = self._ranges(margin)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.where(logs, np.log1p(np.where(x < 0, np.nan, x)), x)
            bad = (v < lo) | (v > hi) | (logs & (x < 0))
        ok: np.ndarray = ~np.any(bad & ~np.isnan(x), axis=1)
        return ok

    def valid_row(self, values: np.ndarray, margin: float) -> bool:
        """`valid_rows` of one measurement (shape: [D]), which the agent asks of each
        measurement as it comes (`edge.ahead`): the same comparisons, one by one in Python,
        log1p by numpy on the log-scaled KPIs, without numpy's cost on a one-row array."""
        if not math.isfinite(margin):
            return True
        cached = self._row_range_cache
        if cached is None or cached[0] != margin:
            lo_a, hi_a, logs_a = self._ranges(margin)
            logged = tuple(j for j, log in enumerate(logs_a.tolist()) if log)
            cached = (margin, (lo_a.tolist(), hi_a.tolist(), logged))
            self._row_range_cache = cached
        lo, hi, logs = cached[1]
        x = np.asarray(values, dtype=np.float64).tolist()
        if logs:
            with np.errstate(invalid="ignore", divide="ignore"):
                logged_x = np.log1p(np.array([x[j] for j in logs])).tolist()
            for j, v in zip(logs, logged_x, strict=True):
                if x[j] < 0:
                    return False
                x[j] = v
        return all(v != v or lo[j] <= v <= hi[j] for j, v in enumerate(x))  # NaN passes

    def _ranges(self, margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = self._range_cache
        if cached is not None and cached[0] == margin:
            return cached[1]
        logs = np.array([n.log for n in self.manifest.norms])
        lo = np.array([n.lo for n in self.manifest.norms], dtype=np.float64)
        hi = np.array([n.hi for n in self.manifest.norms], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            lo = np.where(logs, np.log1p(np.maximum(lo, 0)), lo)
            hi = np.where(logs, np.log1p(np.maximum(hi, 0)), hi)
            width = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
        ranges = (lo - margin * width, hi + margin * width, logs)
        self._range_cache = (margin, ranges)
        return ranges

    def check_schema(self, kpis: Sequence[str]) -> None:
        """Raise ModelMismatchError unless `kpis` are exactly the manifest's, in order."""
        kpis = tuple(kpis)
        if kpis == self.kpis:
            return
        missing = [k for k in self.kpis if k not in kpis]
        extra = [k for k in kpis if k not in self.kpis]
        parts = [f"missing {missing}"] if missing else []
        parts += [f"not in the model {extra}"] if extra else []
        if not parts:
            parts = [f"same KPIs in another order: {list(kpis)} vs the model's {list(self.kpis)}"]
        detail = ", ".join(parts)
        raise ModelMismatchError(f"source KPIs do not match the model's: {detail}")
