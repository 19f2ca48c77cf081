"""scripts/bench_ingest.py runs end to end (its own Mosquitto, SQLite and PostgreSQL, one and
two workers) and reports every figure, with every measurement stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_ingest.py"


def test_ingest_benchmark_stores_everything_and_reports_each_setting(postgres_url: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--frames", "40", "--workers", "1,2",
         "--postgres", postgres_url, "--json"],
        capture_output=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-4000:]  # the reason, not only the status
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    decode = ("decode_per_s_one_core", "decode_per_frame_per_s_one_core")
    assert all(result[k] > 0 for k in (*decode, "decode_predict_per_s_one_core")), result
    assert result["batched_over_per_frame"] > 0
    settings = {(r["store"], r["workers"]) for r in result["end_to_end"]}
    assert settings == {("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2)}
    for row in result["end_to_end"]:
        assert row["stored"] == 40 * 50 and row["per_s"] > 0, row


def test_temporal_ingest_benchmark_stores_every_run_and_reports_the_median(
    postgres_url: str,
) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--temporal-only", "--measurements", "100",
         "--per-frame", "50", "--e2e-runs", "2", "--e2e-workers", "1,2", "--postgres",
         postgres_url, "--json"],
        capture_output=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()[-4000:]
    (row,) = json.loads(out.stdout.decode().strip().splitlines()[-1])["temporal"]
    assert row["per_frame"] == 50 and row["decode_per_s_one_core"] > 0, row
    settings = {(e["store"], e["workers"]) for e in row["end_to_end"]}
    assert settings == {("sqlite", 1), ("sqlite", 2), ("postgresql", 1), ("postgresql", 2)}
    for e2e in row["end_to_end"]:
        assert e2e["stored"] == 100 and len(e2e["runs_per_s"]) == 2, e2e
        assert round(e2e["per_s"]) == min(e2e["runs_per_s"]), e2e  # the lower middle run
