"""The command line on the real uccmisl 5G traces: train, export, evaluate by session file.

A short training (a few hundred steps) so the suite stays fast; the README's figures come
from full runs. Skips without ../shared/data, fails instead under CI=true.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetel.cli import main
from tests.conftest import UCCMISL_KPIS

pytestmark = pytest.mark.realdata


def test_train_export_evaluate_on_real_sessions_the_model_never_saw(
    uccmisl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r1"
    common = ["--data", str(uccmisl_dir), "--kpis", UCCMISL_KPIS, "--target", "DL_bitrate"]
    args = ["train", *common, "--horizon", "1", "--L", "2", "--steps", "60"]
    assert main([*args, "--quick", "--out", str(run), "--json"]) == 0
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), *common, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    split = json.loads((run / "split.json").read_text())
    assert not set(split["test"]) & set(split["train"])
    assert not set(split["test"]) & set(split["val"])
    assert result["split"] == "test" and result["sessions"] == len(split["test"]) > 0
    assert result["codec"] == "temporal" and result["L"] == 2
    assert result["edge_cloud_agree"] is True
    assert 0 < result["rows"] < 188_711
    assert result["max_nonzeros"] <= 2
    assert 0 < result["nmse"] < 1, "a trained codec must beat coding every measurement as 0"
    assert result["target_reconstruction_mae"] > 0 and result["target_change_mae"] > 0
    for key in ("target_r2", "raw_target_r2", "persistence_target_r2"):
        assert -1 < result[key] <= 1, key
    assert result["wire_bytes_per_measurement"] < 4 * 10
