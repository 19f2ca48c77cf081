"""The exported ONNX encoder: same codes as torch on every row, manifest, determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparsetel.cloud.codec.export import encode_onnx, encode_torch, export_run
from sparsetel.cloud.codec.model import Checkpoint
from sparsetel.cloud.data.datasets import load_dataset, split_sessions
from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest, file_sha256, schema_hash
from tests.quickrun import KPIS, TARGET, quick_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelManifest]:
    run = quick_run(tmp_path_factory)
    return run, export_run(run)


def _all_rows(run: Path) -> np.ndarray:
    """Every measurement of the simulated data (test sessions first) plus hostile rows."""
    ds = load_dataset(run.parent / "data", KPIS, TARGET)
    test = split_sessions(ds, seed=0)[2]
    rows = [s.kpis for s in (*test.sessions, *ds.sessions)]
    hostile = np.array(
        [[np.nan] * 9, [0.0] * 9, [np.inf] * 9, [-np.inf] * 9, [1e30] * 9, [-1e30] * 9],
        dtype=np.float32,
    )
    return np.concatenate([*rows, hostile]).astype(np.float32)


def test_onnxruntime_and_torch_give_identical_codes_on_every_row(
    exported: tuple[Path, ModelManifest],
) -> None:
    run, _ = exported
    x = _all_rows(run)
    codes, nnz = encode_onnx(run / "encoder.onnx", x)
    want_codes, want_nnz = encode_torch(Checkpoint.load(run / "checkpoint.pt"), x)
    assert len(x) > 2000
    assert np.array_equal(codes, want_codes) and np.array_equal(nnz, want_nnz)


def test_onnx_codes_are_ascending_padded_with_K_and_at_most_L(
    exported: tuple[Path, ModelManifest],
) -> None:
    run, m = exported
    codes, nnz = encode_onnx(run / "encoder.onnx", _all_rows(run))
    assert codes.dtype == np.int64 and nnz.dtype == np.int64 and codes.shape[1] == m.L
    assert nnz.min() >= 0 and nnz.max() <= m.L
    used = np.arange(m.L)[None, :] < nnz[:, None]
    assert np.all((codes[used] >= 0) & (codes[used] < m.K)) and np.all(codes[~used] == m.K)
    assert np.all(np.diff(codes, axis=1) >= 0)


def test_onnx_graph_has_the_contract_signature_and_dynamic_batch(
    exported: tuple[Path, ModelManifest],
) -> None:
    run, m = exported
    model = onnx.load(str(run / "encoder.onnx"))
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "kpis" and shape[1] == len(KPIS)
    assert isinstance(shape[0], str)  # symbolic: any batch size
    assert [o.name for o in model.graph.output] == ["codes", "nnz"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["sparsetel.L"] == str(m.L) and props["sparsetel.K"] == str(m.K)
    assert json.loads(props["sparsetel.kpis"]) == list(KPIS)
    for n in (1, 333):
        codes, nnz = encode_onnx(run / "encoder.onnx", np.zeros((n, len(KPIS)), np.float32))
        assert codes.shape == (n, m.L) and nnz.shape == (n,)


def test_manifest_describes_the_encoder_and_its_probes(
    exported: tuple[Path, ModelManifest],
) -> None:
    run, m = exported
    loaded = ModelManifest.load(run / "manifest.json")
    assert (loaded.model_sha256, loaded.norms, loaded.probe_codes) == (
        m.model_sha256, m.norms, m.probe_codes,
    )  # fmt: skip
    assert np.array_equal(loaded.probe_inputs, m.probe_inputs, equal_nan=True)
    assert m.model_sha256 == file_sha256(run / "encoder.onnx")
    assert (m.L, m.K, m.kpis, m.target, m.horizon, m.window) == (4, 32, KPIS, TARGET, 1, 8)
    assert [n.name for n in m.norms] == list(KPIS) and m.kpi_schema_hash == schema_hash(KPIS)
    assert m.opset >= 18 and m.extra["checkpoint_sha256"] == file_sha256(run / "checkpoint.pt")
    assert len(m.probe_inputs) == 16 and len(m.probe_codes) == 16
    codes, nnz = encode_onnx(run / "encoder.onnx", np.array(m.probe_inputs, np.float32))
    assert [tuple(c[:k]) for c, k in zip(codes.tolist(), nnz.tolist(), strict=True)] == [
        tuple(p) for p in m.probe_codes
    ]


def test_the_edge_agent_loads_the_export_and_passes_its_self_test(
    exported: tuple[Path, ModelManifest],
) -> None:
    run, m = exported
    encoder = OnnxEncoder(run)
    assert encoder.self_test() == 16 and (encoder.L, encoder.K) == (m.L, m.K)


def test_export_is_byte_identical_each_time_and_in_any_folder(
    exported: tuple[Path, ModelManifest], tmp_path: Path
) -> None:
    run, m = exported
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    shutil.copy(run / "checkpoint.pt", elsewhere / "checkpoint.pt")
    assert export_run(elsewhere).model_sha256 == m.model_sha256
    assert export_run(run).model_sha256 == m.model_sha256


def test_export_without_a_checkpoint_is_a_model_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError):
        export_run(tmp_path)
