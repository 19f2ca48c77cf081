#!/usr/bin/env python3
"""Edge benchmark: encode throughput and latency on one core, and the agent's memory.

    .venv/bin/python scripts/bench_edge.py [--broker mqtt://127.0.0.1:1883] [--json]

1. Trains an encoder with the default architecture (`sparsetel train` defaults: L=4, K=128,
   hidden 256) on the simulator's nine KPIs, briefly -- speed depends on the graph, not on
   how long it was trained -- and exports it to ONNX.
2. Encode throughput with onnxruntime, one intra-op thread: batches of 50 (a frame) and
   1024, measurements per second, median of the repeats; one measurement at a time, p50 and
   p99 latency per call.
3. Resident memory of a real agent process streaming 100,000 measurements (CSV, as fast as
   possible) to the broker, sampled from /proc every 20 ms: the peak.

Numbers are printed, never asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparsetel.edge.encoder import OnnxEncoder

GOAL_BATCHED = 50_000  # measurements/s on one core
GOAL_P99_MS = 1.0
GOAL_RSS_MB = 150.0


def _model(work: Path) -> Path:
    from sparsetel.cloud.codec.export import export_run
    from sparsetel.cloud.data.simulator import write_sessions
    from sparsetel.cloud.demo.pipeline import DEMO_KPIS, DEMO_TARGET
    from sparsetel.cloud.training.train import TrainOptions, train_run

    data = work / "data"
    write_sessions(data, n_sessions=6, rows=1200, seed=0)
    run = work / "run"
    options = TrainOptions(
        data=data, kpis=DEMO_KPIS, target=DEMO_TARGET, out=run, steps=40, finetune_steps=10
    )
    train_run(options)
    export_run(run)
    return run


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:  # the simulator writes "-" for a missing value
        return float("nan")


def _rows(data: Path, kpis: tuple[str, ...], n: int) -> np.ndarray:
    """`n` simulated measurements of `kpis` (the training sessions, repeated): realistic
    values, so the agent's range check keeps them all."""
    rows = []
    for path in sorted(data.glob("*.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                rows.append([_number(record[k]) for k in kpis])
    x = np.array(rows, dtype=np.float32)
    return np.resize(x, (n, len(kpis)))


def _throughput(enc: OnnxEncoder, data: Path) -> dict[str, float]:
    """`enc` runs on one intra-op thread (OnnxEncoder's session options)."""
    x = _rows(data, enc.kpis, 1024 * 20)
    out: dict[str, float] = {}
    for batch in (50, 1024):
        rates = []
        for _ in range(7):
            n = 0
            started = time.perf_counter()
            for i in range(0, len(x) - batch + 1, batch):
                enc.encode(x[i : i + batch])
                n += batch
            rates.append(n / (time.perf_counter() - started))
        out[f"batch_{batch}_per_s"] = statistics.median(rates)
    single = []
    for row in x[:5000]:
        t = time.perf_counter()
        enc.encode(row[None])
        single.append((time.perf_counter() - t) * 1000)
    out["single_p50_ms"] = float(np.percentile(single, 50))
    out["single_p99_ms"] = float(np.percentile(single, 99))
    return out


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _agent_memory(run: Path, kpis: tuple[str, ...], work: Path, broker: str) -> dict[str, float]:
    x = _rows(work / "data", kpis, 100_000)
    stream = work / "stream.csv"
    lines = ["time," + ",".join(kpis)]
    lines += [
        f"{i}," + ",".join(f"{v:.2f}".replace("nan", "") for v in row) for i, row in enumerate(x)
    ]
    stream.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "sparsetel", "edge", "--model", str(run)]
    cmd += ["--source", str(stream)]
    cmd += ["--group", "bench", "--edge-id", f"mem-{os.getpid()}", "--broker", broker]
    cmd += ["--state-dir", str(work / "state"), "--json"]
    cmd += ["--confirm", "broker"]  # no decoder here sends receipts
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, _rss_mb(proc.pid))
        except OSError:
            break
        time.sleep(0.02)
    out, _ = proc.communicate()
    elapsed = time.monotonic() - started
    stats = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    if proc.returncode != 0:
        raise SystemExit(f"the agent failed ({proc.returncode}): {stats.get('error')}")
    return {
        "agent_peak_rss_mb": peak,
        "agent_measurements": float(stats.get("measurements", 0)),
        "agent_seconds": elapsed,
        "agent_acked_frames": float(stats.get("acked", 0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = _model(work)
        enc = OnnxEncoder(run)
        result = _throughput(enc, work / "data")
        result.update(_agent_memory(run, enc.kpis, work, args.broker))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"encode, batches of 50:   {result['batch_50_per_s']:,.0f} measurements/s (one core)")
    print(f"encode, batches of 1024: {result['batch_1024_per_s']:,.0f} measurements/s")
    print(f"  goal: at least {GOAL_BATCHED:,} measurements/s batched")
    print(
        f"encode, one at a time:   p50 {result['single_p50_ms']:.3f} ms, "
        f"p99 {result['single_p99_ms']:.3f} ms (goal p99 < {GOAL_P99_MS} ms)"
    )
    print(
        f"agent streaming {result['agent_measurements']:,.0f} measurements in "
        f"{result['agent_seconds']:.1f} s: peak RSS {result['agent_peak_rss_mb']:.1f} MB "
        f"(goal < {GOAL_RSS_MB:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
