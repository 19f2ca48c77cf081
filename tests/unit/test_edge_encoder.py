"""The edge's ONNX encoder: contract checks, sha256, self-test and schema, on a tiny graph.

The tiny encoder and its numpy reference come from `tests.tinymodel`, so the tests compare
onnxruntime against an independent answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest, file_sha256
from sparsetel.shared.rundir import ENCODER_FILE, MANIFEST_FILE
from tests.tinymodel import KPIS, PROBES, K, L, ranged_model, reference_codes, write_tiny_model


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "run")


def test_encode_matches_numpy_reference_including_missing_kpis(model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-20, 20, size=(64, 3)).astype(np.float32)
    x[::7, 1] = np.nan
    codes, nnz = OnnxEncoder(model_dir).encode(x)
    assert codes.shape == (64, L) and codes.dtype == np.int64
    assert nnz.shape == (64,) and nnz.dtype == np.int64
    expected = reference_codes(x)
    for i, want in enumerate(expected):
        assert tuple(codes[i, : nnz[i]]) == want
        assert np.all(codes[i, nnz[i] :] == K)
    assert {len(c) for c in expected} != {L}, "the sample should exercise variable nnz"


def test_encode_records_cuts_each_row_at_its_nnz(model_dir: Path) -> None:
    x = np.array(PROBES, np.float32)
    records = OnnxEncoder(model_dir).encode_records(x)
    assert records == reference_codes(x)
    assert all(isinstance(c, int) for r in records for c in r)


def test_encode_rejects_a_batch_of_the_wrong_width(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        OnnxEncoder(model_dir).encode(np.zeros((2, 4), np.float32))


def test_encode_of_an_empty_batch_gives_empty_arrays(model_dir: Path) -> None:
    codes, nnz = OnnxEncoder(model_dir).encode(np.zeros((0, 3), np.float32))
    assert codes.shape == (0, L) and nnz.shape == (0,)


def test_session_runs_single_threaded_on_cpu(model_dir: Path) -> None:
    encoder = OnnxEncoder(model_dir)
    options = encoder._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert encoder._session.get_providers() == ["CPUExecutionProvider"]


def test_load_rejects_an_encoder_whose_sha256_differs_naming_both(model_dir: Path) -> None:
    expected = ModelManifest.load(model_dir / MANIFEST_FILE).model_sha256
    with open(model_dir / ENCODER_FILE, "ab") as handle:
        handle.write(b"\x00")
    actual = file_sha256(model_dir / ENCODER_FILE)
    with pytest.raises(ModelMismatchError) as info:
        OnnxEncoder(model_dir)
    assert expected in str(info.value) and actual in str(info.value)


def test_load_rejects_a_missing_encoder_file(model_dir: Path) -> None:
    (model_dir / ENCODER_FILE).unlink()
    with pytest.raises(ModelMismatchError, match="cannot read encoder"):
        OnnxEncoder(model_dir)


def test_load_rejects_a_graph_with_other_output_names(tmp_path: Path) -> None:
    with pytest.raises(ModelMismatchError, match="must take 'kpis'"):
        OnnxEncoder(write_tiny_model(tmp_path, broken="names"))


def test_encode_rejects_a_graph_that_gives_unsorted_codes(tmp_path: Path) -> None:
    encoder = OnnxEncoder(write_tiny_model(tmp_path, broken="unsorted", probes=()))
    x = np.array([[1.0, 2.0, 3.0]] * 4, np.float32)  # codes 1, 5, 4, 0: not ascending
    with pytest.raises(ModelMismatchError, match="not ascending"):
        encoder.encode(x)


def test_self_test_passes_on_the_probes_the_manifest_carries(model_dir: Path) -> None:
    assert OnnxEncoder(model_dir).self_test() == len(PROBES)


def test_self_test_fails_when_a_probe_code_differs(tmp_path: Path) -> None:
    wrong = reference_codes(np.array(PROBES, np.float32))
    wrong[2] = (*wrong[2], K - 1)
    encoder = OnnxEncoder(write_tiny_model(tmp_path, probe_codes=wrong))
    with pytest.raises(ModelMismatchError, match="probe 2"):
        encoder.self_test()


def test_self_test_fails_without_probes(tmp_path: Path) -> None:
    encoder = OnnxEncoder(write_tiny_model(tmp_path, probes=()))
    with pytest.raises(ModelMismatchError, match="no probe_inputs"):
        encoder.self_test()


def test_self_test_fails_when_probe_counts_disagree(tmp_path: Path) -> None:
    run = write_tiny_model(tmp_path)
    data = json.loads((run / MANIFEST_FILE).read_text())
    data["probe_codes"] = data["probe_codes"][:-1]
    (run / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelMismatchError, match="4 probe_inputs but 3"):
        OnnxEncoder(run).self_test()


def test_check_schema_accepts_the_manifest_kpis(model_dir: Path) -> None:
    OnnxEncoder(model_dir).check_schema(list(KPIS))


@pytest.mark.parametrize(
    ("kpis", "message"),
    [
        (("RSRQ", "RSRP", "SNR"), "another order"),
        (("RSRP", "RSRQ"), r"missing \['SNR'\]"),
        (("RSRP", "RSRQ", "SNR", "CQI"), r"not in the model \['CQI'\]"),
    ],
)
def test_check_schema_rejects_other_kpis(
    model_dir: Path, kpis: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ModelMismatchError, match=message):
        OnnxEncoder(model_dir).check_schema(kpis)


def test_rows_beyond_the_widened_training_range_are_flagged(tmp_path: Path) -> None:
    encoder = OnnxEncoder(ranged_model(tmp_path / "run"))
    x = np.array(
        [
            [-100, -10, 50],  # inside
            [-150, -10, 50],  # RSRP beyond training, inside -120 - 40
            [-165, -10, 50],  # RSRP below -160: out
            [-81, -34, 50],  # RSRQ at -34, inside -20 - 15
            [-100, -36, 50],  # RSRQ beyond -35: out
            [np.nan, np.nan, np.nan],  # missing is never out of range
            [-100, -10, -1],  # a negative value of a log-scaled KPI: out
            [-100, -10, 9000],  # log1p(9000) = 9.1 <= 4.6 + 4.6: inside
            [-100, -10, 20000],  # log1p(20000) = 9.9: out
        ],
        dtype=np.float32,
    )
    assert encoder.valid_rows(x, 1.0).tolist() == [
        True, True, False, True, False, True, False, True, False,
    ]  # fmt: skip
    # margin 0: exactly the training range; inf: no check at all
    assert encoder.valid_rows(x, 0.0).tolist()[:2] == [True, False]
    assert encoder.valid_rows(x, float("inf")).all()
    # one measurement at a time (the agent's per-measurement check): the same answers
    rng = np.random.default_rng(0)
    many = np.concatenate([x, (rng.normal(0, 1, (5000, 3)) * [60, 20, 9000]).astype(np.float32)])
    many[rng.random(many.shape) < 0.05] = np.nan
    for margin in (0.0, 0.3, 1.0, float("inf")):
        rows = [encoder.valid_row(row, margin) for row in many]
        assert rows == encoder.valid_rows(many, margin).tolist()
