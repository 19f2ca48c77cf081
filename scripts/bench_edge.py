#!/usr/bin/env python3
"""Edge benchmark: encode throughput and latency on one core, and the agent's memory.

    .venv/bin/python scripts/bench_edge.py [--broker mqtt://127.0.0.1:1883] [--json]
        [--codec onnx|temporal|both] [--temporal-model RUN] [--temporal-measurements N]

1. Trains an encoder with the default architecture (`sparsetel train` defaults: L=4, K=128,
   hidden 256) on the simulator's nine KPIs, briefly -- speed depends on the graph, not on
   how long it was trained -- and exports it to ONNX.
2. Encode throughput with onnxruntime, one intra-op thread: batches of 50 (a frame) and
   1024, measurements per second, median of the repeats; one measurement at a time, p50 and
   p99 latency per call.
3. Resident memory of a real agent process streaming 100,000 measurements (CSV, as fast as
   possible) to the broker, sampled from /proc every 20 ms: the peak.

With ``--codec temporal`` (or ``both``) the temporal codec the agent ships instead (the run
`--temporal-model` names, else one trained here with ``sparsetel train --codec temporal``):

4. CPU per measurement of the encoder (`edge.temporalencoder`, numpy, one thread) coding
   frames of 1 and of 50 measurements that continue each other, a key every 60 measurements,
   into version 3 frame bytes, as the agent does: each measurement coded as it comes
   (`edge.ahead`; p99 latency of each measurement's step, median and p99 of the frame's when
   it is due), and, for comparison, each frame coded at once when due. The codec's modules run
   compiled where the install compiled them (`sparsetel.shared.native`; the output names
   which ran); ``SPARSETEL_PURE=1`` measures them run from source.
5. The real agent streaming `--temporal-measurements` measurements (CSV, as fast as
   possible) at 1 and at 50 measurements per frame to the broker: its CPU per measurement
   (user + system, spool and MQTT included; the CPU of a run of STARTUP_ROWS measurements,
   start-up and shut-down, left out) and its peak resident memory.

Numbers are printed, never asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.edge.temporalencoder import TemporalEncoder
from sparsetel.shared import native

GOAL_BATCHED = 50_000  # measurements/s on one core
GOAL_P99_MS = 1.0
GOAL_RSS_MB = 150.0
GOAL_TEMPORAL_US = 50.0  # CPU per measurement on one core
KEY_INTERVAL = 60
STARTUP_ROWS = 100  # a run this short measures the agent's start-up and shut-down


def _model(work: Path) -> Path:
    from sparsetel.cloud.codec.export import export_run
    from sparsetel.cloud.data.simulator import write_sessions
    from sparsetel.cloud.demo.pipeline import DEMO_KPIS, DEMO_TARGET
    from sparsetel.cloud.training.train import TrainOptions, train_run

    data = work / "data"
    write_sessions(data, n_sessions=6, rows=1200, seed=0)
    run = work / "run"
    options = TrainOptions(
        codec="memoryless",
        data=data,
        kpis=DEMO_KPIS,
        target=DEMO_TARGET,
        out=run,
        steps=40,
        finetune_steps=10,
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


def _agent_memory(
    run: Path,
    kpis: tuple[str, ...],
    work: Path,
    broker: str,
    n: int = 100_000,
    batch: int | None = None,
    data: Path | None = None,
) -> dict[str, float]:
    """A real agent process streaming `n` measurements: peak RSS, time, CPU (user + system,
    from the kernel's accounting of the reaped child) and its counters."""
    x = _rows(data or work / "data", kpis, n)
    stream = work / "stream.csv"
    lines = ["time," + ",".join(kpis)]
    lines += [
        f"{i}," + ",".join(f"{v:.2f}".replace("nan", "") for v in row) for i, row in enumerate(x)
    ]
    stream.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "sparsetel", "edge", "--model", str(run)]
    cmd += ["--source", str(stream)]
    cmd += ["--group", "bench", "--edge-id", f"mem-{os.getpid()}", "--broker", broker]
    cmd += ["--state-dir", str(work / f"state-{batch}"), "--json"]
    cmd += ["--confirm", "broker"]  # no decoder here sends receipts
    cmd += ["--batch", str(batch)] if batch is not None else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    if proc.returncode != 0:
        raise SystemExit(f"the agent failed ({proc.returncode}): {stats.get('error')}")
    return {
        "agent_peak_rss_mb": peak,
        "agent_measurements": float(stats.get("measurements", 0)),
        "agent_seconds": elapsed,
        "agent_cpu_s": cpu,
        "agent_acked_frames": float(stats.get("acked", 0)),
    }


# --------------------------------------------------------------------------- temporal codec


def _temporal_model(work: Path) -> Path:
    """A small temporal-codec run, trained and exported here (speed depends on L, K and D,
    not on how long it was trained)."""
    from sparsetel.cloud.codec.export import export_run
    from sparsetel.cloud.data.simulator import write_sessions
    from sparsetel.cloud.demo.pipeline import DEMO_KPIS, DEMO_TARGET
    from sparsetel.cloud.training.train import TrainOptions, train_run

    data = work / "tdata"
    write_sessions(data, n_sessions=6, rows=1200, seed=0)
    run = work / "trun"
    options = TrainOptions(
        data=data, kpis=DEMO_KPIS, target=DEMO_TARGET, out=run, codec="temporal", steps=40,
        seed=0, progress=False,
    )  # fmt: skip
    train_run(options)
    export_run(run)
    return run


def _temporal_frames(enc: TemporalEncoder, x: np.ndarray, per: int) -> dict[str, float]:
    """CPU per measurement and latency of coding `x` in frames of `per` measurements that
    continue each other (a key every KEY_INTERVAL), frame bytes included, both ways the agent
    can: each measurement coded as it comes (`edge.ahead`: the latency of each step, and of
    the frame when it is due) and the frame coded at once when it is due."""
    from sparsetel.edge.ahead import FrameAhead
    from sparsetel.edge.chain import FrameChain
    from sparsetel.edge.source import Measurement
    from sparsetel.shared.chainframe import ChainHead, chain_frame, encode_chain_frame

    out: dict[str, float] = {}
    rows = [Measurement(1_700_000_000_000 + 1000 * i, v) for i, v in enumerate(x)]
    for way in ("ahead", "at_once"):
        chain, ahead = FrameChain(KEY_INTERVAL), FrameAhead()
        steps, frames = [], []
        cpu_started = time.process_time()
        seq, at = 0, 0
        while at < len(x):
            for m in rows[at : at + per] if way == "ahead" else ():
                started = time.perf_counter()
                ahead.arrived(enc, chain, m)
                steps.append(time.perf_counter() - started)
            started = time.perf_counter()
            t = [m.t_ms for m in rows[at : at + per]]
            key, n = chain.split(t)
            t = t[:n]
            coded = ahead.take(enc, key, chain.state, rows[at : at + n])
            if coded is None:
                coded = enc.encode_frame(x[at : at + n], key, chain.state)
            payload, decoded = coded
            head = ChainHead(enc.model_ref, t[0], 1000, enc.L, enc.K) if key else None
            frame = chain_frame(1, seq, t, 1000, (0,) if key else (), payload, head,
                                chain.last_ms)  # fmt: skip
            encode_chain_frame(frame)
            chain.advance(key, t, decoded.state)
            frames.append(time.perf_counter() - started)
            seq, at = seq + 1, at + n
        cpu = time.process_time() - cpu_started
        prefix = f"temporal_{per}_{way}_"
        out[prefix + "cpu_us_per_measurement"] = cpu / len(x) * 1e6
        out[prefix + "frame_p50_ms"] = float(np.percentile(frames, 50)) * 1000
        out[prefix + "frame_p99_ms"] = float(np.percentile(frames, 99)) * 1000
        if steps:
            out[prefix + "step_p99_ms"] = float(np.percentile(steps, 99)) * 1000
            out[prefix + "frames_coded_ahead"] = float(ahead.used)
    return out


def _temporal(work: Path, broker: str, model: Path | None, n: int) -> dict[str, float]:
    run = model if model is not None else _temporal_model(work)
    enc = TemporalEncoder(run)
    data = run.parent / ("tdata" if model is None else "data")
    if not any(data.glob("*.csv")):
        from sparsetel.cloud.data.simulator import write_sessions

        data = work / "tdata"
        write_sessions(data, n_sessions=6, rows=1200, seed=0)
    x = _rows(data, enc.kpis, 6000).astype(np.float64)
    out: dict[str, float] = {}
    for per in (1, 50):
        out.update(_temporal_frames(enc, x, per))
        # the CPU of a run of STARTUP_ROWS measurements is start-up and shut-down: left out
        base = _agent_memory(run, enc.kpis, work, broker, n=STARTUP_ROWS, batch=per, data=data)
        agent = _agent_memory(run, enc.kpis, work, broker, n=n, batch=per, data=data)
        measured = max(agent["agent_measurements"] - base["agent_measurements"], 1.0)
        cpu = max(agent["agent_cpu_s"] - base["agent_cpu_s"], 0.0)
        out[f"temporal_{per}_agent_cpu_us_per_measurement"] = cpu / measured * 1e6
        out[f"temporal_{per}_agent_startup_cpu_s"] = base["agent_cpu_s"]
        out[f"temporal_{per}_agent_peak_rss_mb"] = agent["agent_peak_rss_mb"]
        out[f"temporal_{per}_agent_measurements"] = agent["agent_measurements"]
        out[f"temporal_{per}_agent_acked_frames"] = agent["agent_acked_frames"]
    return out


def _print_temporal(result: dict[str, float]) -> None:
    modules = ", ".join(f"{name} {how}" for name, how in native.status().items())
    print(f"temporal codec (goal <= {GOAL_TEMPORAL_US:.0f} us CPU per measurement, p99 < 1 ms):")
    print(f"  its modules: {modules}")
    for per in (1, 50):
        r = {k.removeprefix(f"temporal_{per}_"): v for k, v in result.items() if f"_{per}_" in k}
        print(
            f"  {per:>2} per frame, coded as they come: "
            f"{r['ahead_cpu_us_per_measurement']:.1f} us/measurement, each measurement's step "
            f"p99 {r['ahead_step_p99_ms']:.3f} ms, the frame when due p50 "
            f"{r['ahead_frame_p50_ms']:.3f} ms p99 {r['ahead_frame_p99_ms']:.3f} ms "
            f"({r['ahead_frames_coded_ahead']:,.0f} frames coded ahead)"
        )
        print(
            f"  {per:>2} per frame, coded when due:    "
            f"{r['at_once_cpu_us_per_measurement']:.1f} us/measurement, the frame p50 "
            f"{r['at_once_frame_p50_ms']:.3f} ms p99 {r['at_once_frame_p99_ms']:.3f} ms"
        )
        print(
            f"  {per:>2} per frame, the agent: {r['agent_cpu_us_per_measurement']:.1f} "
            f"us/measurement (spool, MQTT included), peak RSS {r['agent_peak_rss_mb']:.1f} MB "
            f"over {r['agent_measurements']:,.0f} (start-up {r['agent_startup_cpu_s']:.2f} s CPU)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--codec", choices=("onnx", "temporal", "both"), default="onnx")
    parser.add_argument("--temporal-model", type=Path, help="an exported temporal run to use")
    parser.add_argument("--temporal-measurements", type=int, default=20_000)
    args = parser.parse_args()
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.codec in ("onnx", "both"):
            run = _model(work)
            enc = OnnxEncoder(run)
            result.update(_throughput(enc, work / "data"))
            result.update(_agent_memory(run, enc.kpis, work, args.broker))
        if args.codec in ("temporal", "both"):
            n = args.temporal_measurements
            result.update(_temporal(work, args.broker, args.temporal_model, n))
    if args.json:
        print(json.dumps({**result, "codec_modules": native.status()}))
        return 0
    if args.codec in ("onnx", "both"):
        _print_onnx(result)
    if args.codec in ("temporal", "both"):
        _print_temporal(result)
    return 0


def _print_onnx(result: dict[str, float]) -> None:
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


if __name__ == "__main__":
    raise SystemExit(main())
