"""Export a run's encoder to ONNX with its manifest: `export_run`.

The graph is ``model.EdgeEncoder``: input ``kpis`` (float32, shape [N, D], raw units, NaN =
missing), outputs ``codes`` (int64, shape [N, L], ascending, padded with K) and ``nnz`` (int64,
shape [N]); normalisation and mask are inside, the batch is dynamic.

We use the dynamo exporter (``torch.onnx.export(dynamo=True)``, torch.export + onnxscript):
it is the maintained path (the TorchScript exporter is deprecated), it gives the output
its static width [N, L] (the legacy one leaves the width of ``codes`` symbolic after the
sort), and it runs the onnxscript optimiser. Two of its habits are undone here so that the
same checkpoint always gives the same bytes, hence the same sha256, on any machine: weights
are kept inside the file (no external ``.data`` file), and per-node debug metadata (stack traces
holding local file paths) is dropped. The export is checked before the manifest is written:
onnxruntime must give exactly torch's codes on the probe rows.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ... import __version__
from ...shared.manifest import ModelManifest, file_sha256, schema_hash
from ...shared.rundir import CHECKPOINT_FILE, CODEC_FILE, ENCODER_FILE, MANIFEST_FILE
from .model import Checkpoint, EdgeEncoder
from .temporalexport import export_temporal

__all__ = ["OPSET", "encode_onnx", "encode_torch", "export_run"]

log = logging.getLogger(__name__)

OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True)"


def _to_onnx(encoder: EdgeEncoder, D: int, path: Path, opset: int) -> None:
    example = (torch.zeros(2, D, dtype=torch.float32),)
    quiet = logging.getLogger("torch.onnx")  # it warns about torchvision ops we never use
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                encoder,
                example,
                str(path),
                input_names=["kpis"],
                output_names=["codes", "nnz"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"kpis": {0: torch.export.Dim("N")}},
                verbose=False,
            )
    finally:
        quiet.setLevel(level)


def _finalise(path: Path, ckpt: Checkpoint) -> None:
    """Drop per-node debug metadata and stamp what the model is into the file's metadata."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        del value.metadata_props[:]
        value.doc_string = ""
    del model.metadata_props[:]
    model.doc_string = "sparsetel SDLGM encoder: raw KPIs -> at most L codes out of K"
    props = {
        "sparsetel.L": str(ckpt.cfg.L),
        "sparsetel.K": str(ckpt.cfg.K),
        "sparsetel.kpis": json.dumps(list(ckpt.kpis)),
        "sparsetel.kpi_schema_hash": schema_hash(ckpt.kpis),
        "sparsetel.target": ckpt.target,
        "sparsetel.horizon": str(ckpt.horizon),
    }
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def encode_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported encoder in onnxruntime: x (float32, [N, D]) -> codes [N, L], nnz [N]."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    codes, nnz = session.run(["codes", "nnz"], {"kpis": np.asarray(x, dtype=np.float32)})
    return np.asarray(codes), np.asarray(nnz)


def encode_torch(ckpt: Checkpoint, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same encoder in torch: x (float32, [N, D]) -> codes [N, L], nnz [N]."""
    encoder = EdgeEncoder(ckpt.model, ckpt.normaliser).eval()
    with torch.inference_mode():
        codes, nnz = encoder(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return codes.numpy(), nnz.numpy()


def export_run(run_dir: str | Path, opset: int = OPSET) -> ModelManifest:
    """Write RUN/encoder.onnx and RUN/manifest.json for a trained run; return the manifest.
    A temporal-codec run (RUN/codec.json) gets its manifest only (`temporalexport`)."""
    run = Path(run_dir)
    if (run / CODEC_FILE).exists():
        return export_temporal(run)
    ckpt = Checkpoint.load(run / CHECKPOINT_FILE)
    path = run / ENCODER_FILE
    _to_onnx(EdgeEncoder(ckpt.model, ckpt.normaliser).eval(), ckpt.cfg.D, path, opset)
    _finalise(path, ckpt)
    probes = ckpt.probe_inputs
    codes, nnz = encode_onnx(path, probes)
    want_codes, want_nnz = encode_torch(ckpt, probes)
    if not (np.array_equal(codes, want_codes) and np.array_equal(nnz, want_nnz)):
        raise RuntimeError(f"{path}: onnxruntime and torch give different codes on the probes")
    manifest = ModelManifest(
        model_sha256=file_sha256(path),
        L=ckpt.cfg.L,
        K=ckpt.cfg.K,
        kpis=ckpt.kpis,
        norms=ckpt.normaliser.norms,
        target=ckpt.target,
        horizon=ckpt.horizon,
        window=ckpt.cfg.window,
        opset=opset,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        run=run.name,
        seed=ckpt.seed,
        sparsetel_version=__version__,
        probe_inputs=tuple(tuple(float(v) for v in row) for row in probes),
        probe_codes=tuple(
            tuple(int(c) for c in row[:k]) for row, k in zip(codes, nnz, strict=True)
        ),
        extra={
            "checkpoint_sha256": file_sha256(run / CHECKPOINT_FILE),
            "exporter": EXPORTER,
            "precision": "float64 inside the graph",
            "clip": ckpt.normaliser.clip,
            "likelihood": ckpt.cfg.likelihood,
        },
    )
    manifest.validate()
    manifest.save(run / MANIFEST_FILE)
    log.info("exported %s (sha256 %s)", path, manifest.model_sha256[:16])
    return manifest
