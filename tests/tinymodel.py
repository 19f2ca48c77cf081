"""A tiny valid ONNX encoder for the edge tests: `write_tiny_model` and its numpy twin.

`write_tiny_model` builds a small encoder with onnx.helper (the dev venv has onnx; the edge code
itself only uses onnxruntime) together with its manifest; `reference_codes` is the same
function in numpy, so tests compare onnxruntime against an independent answer. Used by the
encoder's unit tests and the agent's integration tests (``from tests.tinymodel import ...``;
pytest puts the repository root on sys.path, see ``pythonpath`` in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from sparsetel.shared.manifest import KpiNorm, ModelManifest, file_sha256
from sparsetel.shared.rundir import ENCODER_FILE, MANIFEST_FILE

__all__ = ["KPIS", "PROBES", "K", "L", "ranged_model", "reference_codes", "write_tiny_model"]

KPIS = ("RSRP", "RSRQ", "SNR")
L, K = 4, 16
# h = nan_to_num(x) @ W + B; slot l is on when h_l > 0.5, its code is floor(|h_l|) mod K.
# Small exact weights keep float32 arithmetic identical in numpy and onnxruntime.
W = np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, -1.0]], np.float32)
B = np.array([0.0, 3.0, 0.0, 2.0], np.float32)
PROBES = ((1.0, 2.0, 3.0), (-5.0, -7.0, 40.0), (float("nan"), 0.0, 0.0), (0.0, -3.0, 9.0))


def reference_codes(x: np.ndarray, bias: Sequence[float] | None = None) -> list[tuple[int, ...]]:
    """What the tiny encoder (with `bias`, default B) gives for `x` (shape: [N, 3]), in numpy."""
    b = B if bias is None else np.asarray(bias, np.float32)
    h = np.nan_to_num(np.asarray(x, np.float32), nan=0.0) @ W + b
    out = []
    for row in h:
        on = row > 0.5
        out.append(tuple(sorted(int(v) for v in np.mod(np.floor(np.abs(row[on])), K))))
    return out


def _graph(broken: str | None, bias: Sequence[float]) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("kpis", TensorProto.FLOAT, ["N", len(KPIS)])
    codes_name = "codes" if broken != "names" else "indices"
    outputs = [
        helper.make_tensor_value_info(codes_name, TensorProto.INT64, ["N", L]),
        helper.make_tensor_value_info("nnz", TensorProto.INT64, ["N"]),
    ]
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, list(W.shape), W.flatten().tolist()),
        helper.make_tensor("B", TensorProto.FLOAT, [L], [float(v) for v in bias]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("thr", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("Kf", TensorProto.FLOAT, [], [float(K)]),
        helper.make_tensor("kL", TensorProto.INT64, [1], [L]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
    ]
    sorted_name = "masked" if broken == "unsorted" else "sorted"
    nodes = [
        helper.make_node("IsNaN", ["kpis"], ["isnan"]),
        helper.make_node("Where", ["isnan", "zero", "kpis"], ["xz"]),
        helper.make_node("MatMul", ["xz", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["h"]),
        helper.make_node("Greater", ["h", "thr"], ["on"]),
        helper.make_node("Abs", ["h"], ["absh"]),
        helper.make_node("Floor", ["absh"], ["floorh"]),
        helper.make_node("Mod", ["floorh", "Kf"], ["code"], fmod=1),
        helper.make_node("Where", ["on", "code", "Kf"], ["masked"]),
        helper.make_node("TopK", ["masked", "kL"], ["sorted", "order"], largest=0, sorted=1),
        helper.make_node("Cast", [sorted_name], [codes_name], to=TensorProto.INT64),
        helper.make_node("Cast", ["on"], ["on64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["on64", "axis1"], ["nnz"], keepdims=0),
    ]
    return helper.make_graph(nodes, "tiny_encoder", [x], outputs, inits)


def write_tiny_model(
    run_dir: Path,
    *,
    broken: str | None = None,
    probe_codes: Sequence[tuple[int, ...]] | None = None,
    probes: Sequence[tuple[float, ...]] = PROBES,
    bias: Sequence[float] | None = None,
) -> Path:
    """Write encoder.onnx + manifest.json for the tiny encoder into `run_dir`; return it.

    `broken` ("unsorted", "names") writes a graph that breaks the contract on purpose;
    `bias` (4 numbers, default B) makes another model of the same shape and KPIs.
    """
    bias = B.tolist() if bias is None else list(bias)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(_graph(broken, bias), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, run_dir / ENCODER_FILE)
    if probe_codes is None:
        probe_codes = reference_codes(np.array(probes, np.float32), bias) if probes else []
    manifest = ModelManifest(
        model_sha256=file_sha256(run_dir / ENCODER_FILE),
        L=L,
        K=K,
        kpis=KPIS,
        norms=tuple(KpiNorm(name=k, mean=0.0, std=1.0) for k in KPIS),
        target="SNR",
        horizon=0,
        window=1,
        opset=17,
        probe_inputs=tuple(tuple(p) for p in probes),
        probe_codes=tuple(tuple(c) for c in probe_codes),
    )
    manifest.save(run_dir / MANIFEST_FILE)
    return run_dir


def ranged_model(run_dir: Path) -> Path:
    """The tiny model with training ranges in its manifest: RSRP -120..-80, RSRQ -20..-5,
    and SNR log-scaled over 0..99 (log1p 0..4.6)."""
    write_tiny_model(run_dir)
    manifest = ModelManifest.load(run_dir / MANIFEST_FILE)
    bounds = {"RSRP": (-120.0, -80.0, False), "RSRQ": (-20.0, -5.0, False), "SNR": (0, 99, True)}
    norms = tuple(
        KpiNorm(n.name, n.mean, n.std, log=bounds[n.name][2], lo=bounds[n.name][0],
                hi=bounds[n.name][1])
        for n in manifest.norms
    )  # fmt: skip
    replace(manifest, norms=norms).save(run_dir / MANIFEST_FILE)
    return run_dir
