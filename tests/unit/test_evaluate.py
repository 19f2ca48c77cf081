"""`evaluate_run` on simulated sessions: every key, sane values, the right rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.rundir import read_evaluation
from sparsetel.shared.wire import record_bits
from tests.quickrun import KPIS, quick_run

KEYS = (
    "rows", "L", "K", "nmse", "snr_db", "mean_nonzeros", "max_nonzeros", "bits_per_measurement",
    "wire_bytes_per_measurement", "target_mae", "target_r2", "raw_target_r2",
    "persistence_target_r2", "sessions", "split", "nmse_per_kpi", "codewords_used_share", "seed",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the quick run without its export, so evaluate has to export it."""
    source = quick_run(tmp_path_factory)
    run = tmp_path_factory.mktemp("evaluate") / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("encoder.onnx", "manifest.json"))
    return run


@pytest.fixture(scope="module")
def result(run: Path) -> dict[str, Any]:
    return evaluate_run(run, run.parent.parent / "sparsetel-quick" / "data")


def test_evaluate_exports_a_run_that_was_not_exported(run: Path, result: dict) -> None:
    assert (run / "encoder.onnx").exists() and (run / "manifest.json").exists()


def test_evaluate_reports_every_key_as_json_with_sane_values(result: dict[str, Any]) -> None:
    assert set(KEYS) <= set(result)
    json.dumps(result, allow_nan=False)
    assert result["rows"] > 0 and result["sessions"] >= 1 and (result["L"], result["K"]) == (4, 32)
    assert 0 < result["nmse"] < 1
    assert result["snr_db"] == pytest.approx(-10 * math.log10(result["nmse"]))
    assert 0 <= result["mean_nonzeros"] <= result["max_nonzeros"] <= 4
    assert 0 < result["codewords_used_share"] <= 1
    assert set(result["nmse_per_kpi"]) == set(result["mse_per_kpi"]) == set(KPIS)
    assert all(v >= 0 for v in result["mse_per_kpi"].values())
    for key in ("target_mae", "target_r2", "raw_target_r2", "persistence_target_r2"):
        assert math.isfinite(result[key])
    assert result["target_mae"] > 0 and result["target_r2"] <= 1 and result["raw_target_r2"] <= 1


def test_evaluate_saves_its_result_in_the_run_for_the_monitor(
    run: Path, result: dict[str, Any]
) -> None:
    saved = read_evaluation(run)
    assert saved is not None and saved["data"].endswith("data")
    assert {k: v for k, v in saved.items() if k != "data"} == json.loads(json.dumps(result))


def test_an_unreadable_evaluation_is_ignored(tmp_path: Path) -> None:
    assert read_evaluation(tmp_path) is None
    (tmp_path / "evaluation.json").write_text("{not json", encoding="utf-8")
    assert read_evaluation(tmp_path) is None


def test_evaluate_counts_the_bits_the_wire_format_spends(result: dict[str, Any]) -> None:
    nnz_mean, L, K = result["mean_nonzeros"], result["L"], result["K"]
    lo, hi = record_bits(0, L, K), record_bits(L, L, K)
    assert result["bits_per_measurement"] == pytest.approx(lo + (hi - lo) / L * nnz_mean)
    # A frame of 50 records costs a 40-byte header, a CRC and MQTT framing: more than the codes.
    assert result["wire_bytes_per_measurement"] > result["bits_per_measurement"] / 8


def test_evaluate_uses_the_recorded_test_sessions_of_the_training_folder(
    run: Path, result: dict[str, Any]
) -> None:
    split = json.loads((run / "split.json").read_text())
    assert result["split"] == "test" and result["sessions"] == len(split["test"])
    assert result["rows"] == 400 * len(split["test"])


def test_evaluate_uses_all_of_other_data(run: Path, tmp_path: Path) -> None:
    other = write_sessions(tmp_path / "other", n_sessions=2, rows=300, seed=9)
    result = evaluate_run(run, other[0])
    assert (result["split"], result["sessions"], result["rows"]) == ("all", 1, 300)


def test_raw_ceiling_is_not_below_persistence_on_simulated_sessions(
    result: dict[str, Any],
) -> None:
    assert result["raw_target_r2"] >= result["persistence_target_r2"] - 0.02


def test_evaluate_rejects_a_horizon_or_kpi_list_the_model_was_not_trained_for(run: Path) -> None:
    data = run.parent.parent / "sparsetel-quick" / "data"
    with pytest.raises(ModelMismatchError):
        evaluate_run(run, data, horizon=3)
    with pytest.raises(ModelMismatchError):
        evaluate_run(run, data, kpis="RSRP,RSRQ")


def test_evaluate_takes_the_data_column_names_for_the_models_kpis(
    run: Path, tmp_path: Path
) -> None:
    renamed = {"DL_bitrate": "DL bitrate (kbps)", "RSRP": "rsrp"}
    files = write_sessions(
        tmp_path / "renamed", n_sessions=1, rows=200, seed=4, column_names=renamed
    )
    names = [renamed.get(k, k) for k in KPIS]
    result = evaluate_run(run, files[0], kpis=names, target="DL bitrate (kbps)")
    assert result["rows"] == 200 and np.isfinite(result["nmse"])
