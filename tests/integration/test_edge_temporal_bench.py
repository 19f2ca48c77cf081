"""scripts/bench_edge.py --codec temporal runs end to end on the quick temporal run against the
real broker and reports every figure (the numbers themselves are printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.quickrun import quick_temporal_run

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_edge.py"


def test_edge_benchmark_reports_the_temporal_codecs_cpu_latency_and_memory(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = quick_temporal_run(tmp_path_factory)
    cmd = [sys.executable, str(SCRIPT), "--broker", broker_url, "--json", "--codec", "temporal"]
    cmd += ["--temporal-model", str(run), "--temporal-measurements", "1000"]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=300)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    for per in (1, 50):
        assert result[f"temporal_{per}_agent_measurements"] == 1000
        # a due key ends a frame early: at 50 per frame, 50 + 10 for every 60 measurements
        assert result[f"temporal_{per}_agent_acked_frames"] == {1: 1000, 50: 33}[per]
        for key in ("agent_cpu_us_per_measurement", "agent_peak_rss_mb", "agent_startup_cpu_s"):
            assert result[f"temporal_{per}_{key}"] > 0, key
        for way in ("ahead", "at_once"):  # each measurement coded as it comes, or the frame
            r = {k.removeprefix(f"temporal_{per}_{way}_"): v for k, v in result.items()}
            assert r["cpu_us_per_measurement"] > 0
            assert 0 < r["frame_p50_ms"] <= r["frame_p99_ms"]
        # the encoder's own run: 6,000 measurements, every frame coded as its measurements came
        assert result[f"temporal_{per}_ahead_step_p99_ms"] > 0
        frames = {1: 6000, 50: 200}[per]  # 50 per frame: 50 + 10 for every 60 measurements
        assert result[f"temporal_{per}_ahead_frames_coded_ahead"] == frames
