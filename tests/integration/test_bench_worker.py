"""scripts/bench_worker.py runs a decoder worker in one process on both stores and reports its
CPU and wall time per frame, every frame stored (the numbers are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.quickrun import quick_temporal_run

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_worker.py"


@pytest.mark.parametrize(("store", "per_frame"), [("sqlite", 1), ("postgresql", 5)])
def test_worker_benchmark_stores_every_frame_and_reports_the_median_run(
    store: str, per_frame: int, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = quick_temporal_run(tmp_path_factory)
    cmd = [sys.executable, str(SCRIPT), "--model", str(run), "--store", store,
           "--postgres", postgres_url, "--per-frame", str(per_frame), "--edges", "3",
           "--frames", "40", "--batch", "8", "--runs", "3", "--json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()[-4000:]
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert (result["store"], result["frames"], result["edges"]) == (store, 40, 3)
    assert len(result["runs"]) == 3
    cpu = sorted(r["cpu_us_per_frame"] for r in result["runs"])
    assert result["cpu_us_per_frame"] == cpu[1] > 0  # the median run
    assert result["wall_us_per_frame"] > 0
