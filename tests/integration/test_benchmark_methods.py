"""Every real benchmark method, unchanged, on another KPI CSV and on the uccmisl traces.

The first test runs the whole method list (quick training) on simulated sessions whose
columns have other names; the second runs our codec and the strongest baselines on the real
5G traces (skipped without ``../shared/data``, failing under ``CI=true``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cli import main
from sparsetel.cloud.bench.runner import AT_EVERY_FRAMING
from sparsetel.cloud.bench.sdlgm import FAMILIES
from sparsetel.cloud.data.simulator import simulate_sessions

RENAME = {"RSRP": "rsrp (dBm)", "SNR": "snr dB", "CQI": "Cqi", "DL_bitrate": "Thrpt DL"}
KPIS = ("rsrp (dBm)", "snr dB", "Cqi", "Thrpt DL")
REAL_KPIS = "RSRP,RSRQ,SNR,CQI,RSSI,NRxRSRP,NRxRSRQ,DL_bitrate,UL_bitrate,Speed"
EVERY_FAMILY = {
    "float32",
    "float32-zstd",
    "gorilla",
    "quant-zstd",
    "pca",
    "predictive-previous",
    "predictive-linear",
    "grid-lossless",
    "grid-predictive-previous",
    "grid-predictive-linear",
    "topk-sae",
    "omp-dict",
    *FAMILIES,
}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict]:
    assert main(["benchmark", *args, "--json"]) == 0
    return list(json.loads(capsys.readouterr().out))


def test_every_method_runs_unchanged_on_a_csv_with_other_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "kpis"
    folder.mkdir()
    for i, frame in enumerate(simulate_sessions(n_sessions=4, rows=300, seed=5)):
        frame = frame.drop(columns=["state"]).rename(columns=RENAME)
        frame.loc[frame.index[20:25], "Cqi"] = np.nan
        frame.to_csv(folder / f"site {i}.csv", index=False)
    out = tmp_path / "bench"
    rows = _run(
        [
            *("--data", str(folder), "--kpis", ",".join(KPIS), "--target", "Thrpt DL"),
            *("--L", "1,2", "--K", "16", "--seeds", "0", "--quick", "--out", str(out)),
        ],
        capsys,
    )
    assert {r["method"] for r in rows} == EVERY_FAMILY
    # The simulator's 1 Hz sessions: frames of 50, and of two (the edge agent's default).
    assert {r["frame"] for r in rows} == {50, 2}
    assert {r["method"] for r in rows if r["frame"] == 2} == AT_EVERY_FRAMING & EVERY_FAMILY
    for r in rows:
        assert r["bits_per_measurement"] > 0
        if not r["lossy"]:
            assert r["nmse"] < 1e-10
        if r["method"] in FAMILIES:
            assert r["max_nonzeros"] <= r["L"]
    assert (out / "results.md").read_text(encoding="utf-8").count("| sdlgm |") >= 2


@pytest.mark.realdata
def test_sdlgm_and_the_strongest_baselines_on_uccmisl(
    uccmisl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = uccmisl_dir / "5G-production-dataset"
    families = "sdlgm,grid-predictive-previous,grid-lossless,predictive-previous,float32"
    rows = _run(
        [
            *("--data", str(data), "--kpis", REAL_KPIS, "--target", "DL_bitrate", "--L", "1,4"),
            *("--methods", families, "--seeds", "0", "--framing", "50"),
            *("--quick", "--out", str(tmp_path / "bench")),
        ],
        capsys,
    )
    sdlgm = [r for r in rows if r["method"] == "sdlgm"]
    assert [r["L"] for r in sdlgm] == [1, 4]
    for r in sdlgm:
        assert r["max_nonzeros"] <= r["L"]
        # Gates do work on real telemetry: fewer codes than the cap on average.
        assert r["mean_nonzeros"] < r["L"] or r["L"] == 1
    assert sdlgm[1]["nmse"] < sdlgm[0]["nmse"]
    raw = next(r for r in rows if r["method"] == "float32")
    assert raw["bits_per_measurement"] == 320.0
    # Every KPI of these traces is on a grid: the lossless coder is exact at a tenth of float32.
    exact = next(r for r in rows if r["method"] == "grid-lossless")
    # nmse is taken after mapping the raw values back to normalised ones: float rounding only
    assert exact["nmse"] < 1e-12 and exact["bits_per_measurement"] < 40.0
    text = (tmp_path / "bench" / "results.md").read_text(encoding="utf-8")
    assert "BD-rate vs grid-predictive-previous" in text
