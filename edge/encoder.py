"""The edge's encoder: an exported ONNX graph run by onnxruntime, checked before use.

A run directory holds ``encoder.onnx`` and ``manifest.json``. The graph contract: input
``kpis`` (float32, shape [N, D], raw units, NaN where a KPI is missing); outputs ``codes``
(int64, shape [N, L], ascending, padded with K) and ``nnz`` (int64, shape [N]). Record i on
the wire is ``codes[i, :nnz[i]]``. Normalisation is baked into the graph, so the edge never
needs torch: onnxruntime and numpy only.

Before the agent trusts a model it checks the encoder's sha256 against the manifest, runs
the manifest's probe inputs through it (`self_test`) and compares the source's KPIs to the
manifest's (`check_schema`, shared with the temporal codec in `edge.models`); each failure is
a `ModelMismatchError` saying what differs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..shared.errors import ModelMismatchError
from ..shared.manifest import ModelManifest
from ..shared.rundir import ENCODER_FILE, MANIFEST_FILE
from .models import ManifestChecks

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OnnxEncoder"]

log = logging.getLogger(__name__)

INPUT_NAME = "kpis"
OUTPUT_NAMES = ("codes", "nnz")


def _session_options() -> ort.SessionOptions:
    """One thread, sequential: an edge box shares its few cores with the modem's own work."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


class OnnxEncoder(ManifestChecks):
    """Encode measurements into sparse codes with a verified exported encoder.

    `model_dir` is a run directory holding ``encoder.onnx`` and ``manifest.json``. The
    session is built from the very bytes that were hashed, so what runs is what was checked.
    """

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.model_dir = model_dir.resolve()
        self.manifest = ModelManifest.load(model_dir / MANIFEST_FILE)
        # What the rest of the edge needs, read once from the manifest (never from config).
        self.L: int = self.manifest.L  # at most L codes per measurement
        self.K: int = self.manifest.K  # codebook size: codes are in 0..K-1
        self.D: int = self.manifest.D  # KPIs per measurement
        self.kpis: tuple[str, ...] = self.manifest.kpis  # in the order the encoder takes them
        self.model_ref: bytes = self.manifest.model_ref  # the 8 bytes a frame names it by
        self.model_sha256: str = self.manifest.model_sha256
        onnx_path = model_dir / ENCODER_FILE
        try:
            model_bytes = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelMismatchError(f"cannot read encoder {onnx_path}: {exc}") from exc
        actual = hashlib.sha256(model_bytes).hexdigest()
        if actual != self.manifest.model_sha256:
            raise ModelMismatchError(
                f"{onnx_path} has sha256 {actual} but the manifest says "
                f"{self.manifest.model_sha256}"
            )
        try:
            self._session = ort.InferenceSession(
                model_bytes, sess_options=_session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelMismatchError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        self._check_signature()
        log.info(
            "encoder %s loaded: L=%s K=%s D=%s sha256=%s",
            model_dir,
            self.L,
            self.K,
            self.D,
            actual[:16],
        )

    @property
    def runtime_version(self) -> str:
        return f"onnxruntime {ort.__version__}"

    def _check_signature(self) -> None:
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = {o.name for o in self._session.get_outputs()}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise ModelMismatchError(
                f"encoder graph must take {INPUT_NAME!r} and give {list(OUTPUT_NAMES)}; "
                f"it takes {inputs} and gives {sorted(outputs)}"
            )
        width = self._session.get_inputs()[0].shape[-1]
        if isinstance(width, int) and width != self.D:
            raise ModelMismatchError(f"encoder takes {width} KPIs, the manifest lists {self.D}")

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode a batch in one onnxruntime call.

        `x` (shape: [N, D], float32, NaN = missing) -> (codes (shape: [N, L], int64,
        ascending, padded with K), nnz (shape: [N], int64)). Raises ValueError for a badly
        shaped `x` and ModelMismatchError when the graph breaks its output contract.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"x must have shape [N, {self.D}], got {list(x.shape)}")
        if x.shape[0] == 0:
            return np.zeros((0, self.L), dtype=np.int64), np.zeros(0, dtype=np.int64)
        codes, nnz = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x)})
        codes = np.asarray(codes)
        nnz = np.asarray(nnz)
        self._check_outputs(codes, nnz, x.shape[0])
        return codes.astype(np.int64, copy=False), nnz.astype(np.int64, copy=False)

    def _check_outputs(self, codes: np.ndarray, nnz: np.ndarray, n: int) -> None:
        """Hold the graph to its contract: a bad code must never reach the wire."""
        if codes.shape != (n, self.L) or nnz.shape != (n,):
            raise ModelMismatchError(
                f"encoder gave codes {list(codes.shape)} and nnz {list(nnz.shape)}, "
                f"expected [{n}, {self.L}] and [{n}]"
            )
        if nnz.min() < 0 or nnz.max() > self.L:
            raise ModelMismatchError(f"encoder gave nnz outside 0..{self.L}")
        used = np.arange(self.L)[None, :] < nnz[:, None]
        if np.any(used & ((codes < 0) | (codes >= self.K))):
            raise ModelMismatchError(f"encoder gave a code outside 0..{self.K - 1}")
        if np.any(~used & (codes != self.K)):
            raise ModelMismatchError(f"encoder did not pad unused slots with K={self.K}")
        if np.any(np.diff(codes, axis=1) < 0):
            raise ModelMismatchError("encoder gave codes that are not ascending")

    def encode_records(self, x: np.ndarray) -> list[tuple[int, ...]]:
        """Encode a batch (shape: [N, D]) into N code tuples: record i = codes[i, :nnz[i]]."""
        codes, nnz = self.encode(x)
        return [tuple(row[:k]) for row, k in zip(codes.tolist(), nnz.tolist(), strict=True)]

    def self_test(self) -> int:
        """Run the manifest's probe inputs and compare with its probe codes.

        Returns the number of probes checked. Raises ModelMismatchError when the manifest has
        no probes or any code differs (a different runtime, a corrupted or swapped graph).
        """
        probes = self.manifest.probe_inputs
        expected = [tuple(int(c) for c in codes) for codes in self.manifest.probe_codes]
        if not probes:
            raise ModelMismatchError("manifest has no probe_inputs: the encoder cannot self-test")
        if len(probes) != len(expected):
            raise ModelMismatchError(
                f"manifest has {len(probes)} probe_inputs but {len(expected)} probe_codes"
            )
        try:
            x = np.array(probes, dtype=np.float32)
            got = self.encode_records(x)
        except ValueError as exc:
            raise ModelMismatchError(f"manifest probe_inputs are unusable: {exc}") from exc
        for i, (want, have) in enumerate(zip(expected, got, strict=True)):
            if want != have:
                raise ModelMismatchError(
                    f"self-test failed on probe {i} of {len(probes)}: "
                    f"expected codes {list(want)}, the encoder gave {list(have)}"
                )
        log.debug("encoder self-test passed on %s probes", len(probes))
        return len(probes)
