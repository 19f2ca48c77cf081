"""`sparsetel demo`: the whole pipeline on one machine, ending with a short report.

Simulated KPI sessions -> train a small temporal codec -> export it -> a broker (the one
given, the one on 127.0.0.1:1883, or an embedded one) -> the cloud service and two edge
agents as separate processes -> the report: measurements sent and stored, bytes per
measurement on the wire against raw float32 and JSON, the codec's payload bits per
measurement beside the lossless native-grid coder's on the same measurements, reconstruction
error and KPI prediction accuracy of what the cloud stored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...shared.manifest import ModelManifest
from ...shared.rundir import CODEC_FILE, MANIFEST_FILE, load_split
from ...shared.temporalcodec import TemporalCodec
from ...shared.topics import data_topic
from ...shared.wire import mqtt_publish_overhead
from ..bench.reference import grid_lossless_bits
from ..codec.export import export_run
from ..codec.shipping import code_stream
from ..data.datasets import load_dataset
from ..data.simulator import write_sessions
from ..store.database import open_store
from ..training.train import TrainOptions, train_run
from .broker import EmbeddedBroker, broker_answers, start_embedded_broker

__all__ = ["run_demo"]

log = logging.getLogger(__name__)

DEMO_KPIS = ("RSRP", "RSRQ", "SNR", "CQI", "RSSI", "DL_bitrate", "UL_bitrate", "Speed", "Load")
DEMO_TARGET = "DL_bitrate"
N_EDGES = 2
BATCH = 50


@dataclass
class _Broker:
    url: str
    kind: str
    embedded: EmbeddedBroker | None = None


def _progress(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the report (JSON with --json)."""
    print(f"demo: {message}", file=sys.stderr, flush=True)


def _find_broker(url: str | None) -> _Broker:
    if url:
        return _Broker(url, "given")
    if broker_answers("127.0.0.1", 1883):
        return _Broker("mqtt://127.0.0.1:1883", "local mosquitto on 127.0.0.1:1883")
    embedded = start_embedded_broker("127.0.0.1", 0)
    return _Broker(embedded.url, "embedded amqtt", embedded)


def _sparsetel(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparsetel", *args]


def _prepare(workdir: Path, measurements: int, seed: int) -> tuple[Path, list[Path]]:
    """Simulate sessions, train and export; return the run dir and the CSVs the edges replay."""
    rows = max(1000, measurements // N_EDGES + 100)
    data = workdir / "data"
    # 12 sessions: the split keeps 2 for test, one per edge, never seen in training
    write_sessions(data, n_sessions=12, rows=rows, seed=seed)
    run = workdir / "run"
    options = TrainOptions(
        data=data,
        kpis=DEMO_KPIS,
        target=DEMO_TARGET,
        horizon=1,
        L=4,
        out=run,
        seed=seed,
        quick=True,
    )
    _progress("training a small temporal SDLGM codec on simulated KPIs ...")
    train_run(options)
    export_run(run)
    split = load_split(run)
    test_files = [data / name for name in split["test"]]
    return run, test_files[:N_EDGES] if len(test_files) >= N_EDGES else test_files * N_EDGES


def _stream(
    run: Path, broker: str, sources: list[Path], per_edge: int, workdir: Path
) -> dict[str, Any]:
    group = f"demo-{uuid.uuid4().hex[:8]}"
    db = workdir / "demo.db"
    total = per_edge * len(sources)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    serve = subprocess.Popen(
        _sparsetel(
            "serve",
            "--model",
            str(run),
            "--group",
            group,
            "--db",
            str(db),
            "--broker",
            broker,
            "--stop-after",
            str(total),
            "--idle-timeout",
            "30",
            "--json",
        ),
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    _wait_for_subscriber(db)
    edges = [
        subprocess.Popen(
            _sparsetel(
                "edge",
                "--model",
                str(run),
                "--source",
                str(src),
                "--group",
                group,
                "--edge-id",
                f"edge-{i + 1}",
                "--broker",
                broker,
                "--limit",
                str(per_edge),
                "--batch",
                str(BATCH),
                "--state-dir",
                str(workdir / f"edge-{i + 1}"),
                "--json",
            ),
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for i, src in enumerate(sources)
    ]
    edge_stats = [json.loads(p.communicate(timeout=120)[0]) for p in edges]
    serve_out, _ = serve.communicate(timeout=120)
    return {"group": group, "db": db, "edges": edge_stats, "serve": json.loads(serve_out)}


def _wait_for_subscriber(db: Path, timeout: float = 60.0) -> None:
    """The service creates its database once it is connected and subscribed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise RuntimeError("the decoder service did not start within a minute")


def _report(
    run: Path, sources: list[Path], streamed: dict[str, Any], seconds: float
) -> dict[str, Any]:
    manifest = ModelManifest.load(run / MANIFEST_FILE)
    codec = TemporalCodec.from_json((run / CODEC_FILE).read_text(encoding="utf-8"))
    store = open_store(str(streamed["db"]))
    sent = sum(s["measurements"] for s in streamed["edges"])
    stored = store.count_measurements()
    wire_bytes = sum(_wire_bytes(streamed["group"], i, s) for i, s in enumerate(streamed["edges"]))
    truth, decoded, target, predicted, current = [], [], [], [], []
    for i, src in enumerate(sources):
        rows = store.fetch_measurements(edge=f"edge-{i + 1}")
        ds = load_dataset(src, manifest.kpis, manifest.target)
        x = ds.sessions[0].kpis[: len(rows)]
        y = ds.sessions[0].target[: len(rows)]
        truth.append(x)
        decoded.append(np.array([[np.nan if v is None else v for v in r["kpis"]] for r in rows]))
        pred = np.array([np.nan if r["prediction"] is None else r["prediction"] for r in rows])
        h = manifest.horizon
        target.append(y[h:])
        predicted.append(pred[: len(pred) - h])
        current.append(y[: len(y) - h])
    json_bytes = _json_bytes_per_measurement(manifest.kpis, np.concatenate(truth))
    bits = _payload_bits(run, codec, manifest.target, sources, truth)
    return {
        "broker": streamed.get("broker"),
        "measurements_sent": sent,
        "measurements_stored": stored,
        "seconds": round(seconds, 1),
        "L": manifest.L,
        "K": manifest.K,
        "D": manifest.D,
        "wire_bytes_per_measurement": round(wire_bytes / max(sent, 1), 2),
        "raw_float32_bytes_per_measurement": 4 * manifest.D,
        "json_bytes_per_measurement": round(json_bytes, 1),
        **bits,
        **_reconstruction(codec, np.concatenate(truth), np.concatenate(decoded)),
        **_prediction(np.concatenate(target), np.concatenate(predicted), np.concatenate(current)),
        "rejects": streamed["serve"].get("rejects", {}),
        "duplicates": streamed["serve"].get("duplicates", 0),
        "monitor": f"sparsetel monitor --db {streamed['db']} --model {run}",
    }


def _wire_bytes(group: str, i: int, stats: dict[str, Any]) -> int:
    """Bytes an edge put on the wire: its frames plus the MQTT PUBLISH framing around each."""
    frames = max(int(stats["frames"]), 1)
    topic = data_topic(group, f"edge-{i + 1}")
    sent = int(stats["bytes_sent"])
    return sent + frames * mqtt_publish_overhead(topic, sent // frames)


def _payload_bits(
    run: Path, codec: TemporalCodec, target: str, sources: list[Path], sent: list[np.ndarray]
) -> dict[str, float]:
    """Payload bits per measurement of the measurements the edges sent, in frames of BATCH
    (one key each, as the benchmark frames them): the run's codec beside the lossless
    native-grid coder fitted on the run's training sessions."""
    names = set(load_split(run)["train"])
    data = load_dataset(sources[0].parent, codec.kpis, target)
    train = [s.kpis for s in data.sessions if s.name in names]
    ours = sum(code_stream(codec, x, BATCH).payload_bits for x in sent)
    n = sum(len(x) for x in sent)
    return {
        "payload_bits_per_measurement": round(ours / max(n, 1), 2),
        "lossless_grid_bits_per_measurement": round(
            grid_lossless_bits(train, sent, BATCH, codec.kpis), 2
        ),
    }


def _json_bytes_per_measurement(kpis: tuple[str, ...], x: np.ndarray) -> float:
    """Mean size of a measurement as the JSON object a naive agent would publish."""
    sizes = []
    for row in x:
        obj = {
            k: None if np.isnan(v) else round(float(v), 2) for k, v in zip(kpis, row, strict=True)
        }
        sizes.append(len(json.dumps(obj)))
    return float(np.mean(sizes))


def _reconstruction(codec: Any, truth: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """NMSE over observed entries in the model's normalised space, and its SNR."""
    zt, zd = codec.normalise(truth), codec.normalise(decoded)
    seen = ~np.isnan(zt) & ~np.isnan(zd)
    nmse = float(np.sum((zd[seen] - zt[seen]) ** 2) / np.sum(zt[seen] ** 2))
    return {"nmse": round(nmse, 4), "snr_db": round(-10 * np.log10(nmse), 2)}


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))


def _prediction(y: np.ndarray, pred: np.ndarray, now: np.ndarray) -> dict[str, float | None]:
    """The cloud's predictions of y against the truth, beside persistence (y[t+h] := y[t])."""
    ok = ~np.isnan(y) & ~np.isnan(pred) & ~np.isnan(now)
    if ok.sum() < 2:
        return {"target_mae": None, "target_r2": None, "persistence_target_r2": None}
    return {
        "target_mae": round(float(np.mean(np.abs(pred[ok] - y[ok]))), 2),
        "target_r2": round(_r2(y[ok], pred[ok]), 4),
        "persistence_target_r2": round(_r2(y[ok], now[ok]), 4),
    }


def _print_report(r: dict[str, Any]) -> None:
    bits, grid = r["payload_bits_per_measurement"], r["lossless_grid_bits_per_measurement"]
    wire, raw, js = (
        r["wire_bytes_per_measurement"],
        r["raw_float32_bytes_per_measurement"],
        r["json_bytes_per_measurement"],
    )
    lines = [
        ("broker", r["broker"]),
        ("measurements sent/stored", f"{r['measurements_sent']} / {r['measurements_stored']}"),
        ("code", f"at most L={r['L']} of K={r['K']} codewords for D={r['D']} KPIs"),
        ("bytes per measurement", f"{wire} on the wire (frames + MQTT framing)"),
        ("", f"vs {raw} raw float32 ({raw / wire:.1f}x) and {js} JSON ({js / wire:.1f}x)"),
        ("payload bits/measurement", f"{bits} (frames of {BATCH}), vs {grid} for the lossless"),
        ("", "native-grid coder on the same measurements"),
        ("reconstruction", f"NMSE {r['nmse']}, SNR {r['snr_db']} dB"),
        (f"{DEMO_TARGET} t+1 prediction", f"R² {r['target_r2']}, MAE {r['target_mae']} kbit/s"),
        ("", f"(persistence R² {r['persistence_target_r2']})"),
        ("rejects / duplicates", f"{sum(r['rejects'].values())} / {r['duplicates']}"),
        ("took", f"{r['seconds']} s"),
        ("dashboard", r["monitor"]),
    ]
    print("\nsparsetel demo report")
    for label, value in lines:
        print(f"  {label:<26}{value}")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; return 0 when every measurement sent was stored exactly once."""
    start = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sparsetel-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _progress(f"working in {workdir}")
    run, sources = _prepare(workdir, args.measurements, args.seed)
    broker = _find_broker(args.broker)
    _progress(f"broker {broker.url} ({broker.kind})")
    try:
        streamed = _stream(run, broker.url, sources, args.measurements // N_EDGES, workdir)
    finally:
        if broker.embedded is not None:
            broker.embedded.stop()
    streamed["broker"] = f"{broker.url} ({broker.kind})"
    report = _report(run, sources, streamed, time.monotonic() - start)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0 if report["measurements_stored"] == report["measurements_sent"] else 1
