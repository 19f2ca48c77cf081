"""scripts/bench_edge.py runs end to end against the real broker and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_edge.py"


def test_edge_benchmark_reports_throughput_latency_and_memory(broker_url: str) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--broker", broker_url, "--json"],
        capture_output=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["agent_measurements"] == 100_000
    assert result["agent_acked_frames"] == 100_000 / 50
    for key in ("batch_50_per_s", "batch_1024_per_s", "agent_peak_rss_mb"):
        assert result[key] > 0, key
    assert 0 < result["single_p50_ms"] <= result["single_p99_ms"]
