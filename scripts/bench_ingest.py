#!/usr/bin/env python3
"""Cloud ingest benchmark: decode-only throughput per core, and measurements per second end to
end through the real Mosquitto into SQLite and PostgreSQL with 1, 2 and 4 decoder workers.

    .venv/bin/python scripts/bench_ingest.py [--broker mqtt://127.0.0.1:1883]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--frames 2000] [--json]

1. Trains a small model on simulated sessions (the decode cost depends on the architecture:
   the defaults, L=4, K=128, hidden 256) and exports it; encodes simulated measurements with
   the exported ONNX encoder into frames of 50, as an edge would.
2. Decode only, one thread (torch and numpy on one core): wire decoding plus the model's
   decoder, measurements per second, median of 11 interleaved rounds: as a worker decodes
   (the frames of a batch of 64 together, `cloud.ingest.handler.decode_many`), one frame at a time,
   and one frame at a time with the predictor.
3. End to end: `sparsetel serve --workers N` as a process, the frames published QoS 1 by one
   client as fast as the broker takes them, once every worker is subscribed. Throughput is
   measurements stored over the time from the first publish until the store holds them all
   (polled every 50 ms, from the frames table), so start-up is not counted. PostgreSQL runs
   skip when the server does not answer.

The broker is a Mosquitto of the benchmark's own on a free port, configured like
``deploy/mosquitto/dev.conf``. Mosquitto's default ``max_queued_messages`` is 1000: a burst of
more frames than that waiting for one slow subscriber is dropped by the broker, QoS 1 or not,
which the first version of this benchmark did to half its frames on the system's default
Mosquitto. Pass ``--broker URL`` to use another broker.

4. The temporal codec (``--temporal``; ``--temporal-only`` skips 1 to 3): a small temporal run
   (``sparsetel train --codec temporal``, quick sizes) codes simulated measurements into
   version 3 chained frames of 1 and of 50 measurements, a key every AGENT_KEY_INTERVAL, as
   the agent does. Decode only, one core: frame parsing, `decode_payload` from the chain
   state, `denormalise` (what `cloud.ingest.chains` does per frame), with and without the
   run's KPI predictor over its window, and `decode_payload` alone, to say whether the
   codec is the bottleneck. End to end: ``serve --workers 2`` on SQLite (and PostgreSQL),
   frames published in order, measurements stored per second.

Numbers are printed, never asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import torch
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).parent))
from bench_edge import _model, _rows  # the same model and simulated sessions as the edge's

from sparsetel.cloud.codec.decoder import CloudCodec
from sparsetel.cloud.ingest.handler import decode_many
from sparsetel.cloud.ingest.service import BATCH_MAX
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.config import parse_broker_url
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import Frame, Record, decode_frame, encode_frame

GOAL_E2E = 20_000  # measurements/s end to end on 2 cores
TEMPORAL_PER_FRAME = (1, 50)  # the agent's frames at 1 Hz hold one or two; a backlog, 50
GOAL_DECODE = 200_000  # measurements/s decode only, per core
PER_FRAME = 50


def _frames(run: Path, n_frames: int) -> list[bytes]:
    """`n_frames` frames of 50 measurements coded by the exported encoder, edge "bench"."""
    from sparsetel.edge.encoder import OnnxEncoder

    enc = OnnxEncoder(run)
    x = _rows(run.parent / "data", enc.kpis, n_frames * PER_FRAME)
    codes = enc.encode_records(x)
    t0 = (int(time.time()) - 3600) * 1000  # recent: inside serve's window for frame times
    frames = []
    for seq in range(n_frames):
        part = codes[seq * PER_FRAME : (seq + 1) * PER_FRAME]
        records = tuple(Record(t0 + 1000 * (seq * PER_FRAME + i), c) for i, c in enumerate(part))
        frames.append(encode_frame(Frame(enc.model_ref, 0, seq, enc.L, enc.K, 1000, records)))
    return frames


def _decode_only(run: Path, frames: list[bytes], repeats: int = 11) -> dict[str, float]:
    """Measurements per second on one core, median of `repeats` rounds; each round times the
    three ways in turn, so a burst of noise on this shared machine hits them alike."""
    torch.set_num_threads(1)
    codec = CloudCodec.load(run)
    sample = frames[:400]

    def batched() -> None:  # as a worker decodes: the frames of a batch in one pass
        for at in range(0, len(sample), BATCH_MAX):
            decode_many(codec, [decode_frame(p) for p in sample[at : at + BATCH_MAX]])

    def one_by_one(predict: bool) -> None:
        for payload in sample:
            codes = [r.codes for r in decode_frame(payload).records]
            codec.decode(codes)
            if predict and codec.window:
                codec.predict_sequence(codec.counts(codes))

    ways = {
        "decode_per_s_one_core": batched,
        "decode_per_frame_per_s_one_core": lambda: one_by_one(False),
        "decode_predict_per_s_one_core": lambda: one_by_one(True),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            rates[name].append(len(sample) * PER_FRAME / (time.perf_counter() - started))
    out = {name: statistics.median(r) for name, r in rates.items()}
    pairs = zip(
        rates["decode_per_s_one_core"], rates["decode_per_frame_per_s_one_core"], strict=True
    )
    ratios = [batched_rate / frame_rate for batched_rate, frame_rate in pairs]
    out["batched_over_per_frame"] = statistics.median(ratios)
    return out


def _publish(url: str, group: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish (edge, frame) messages QoS 1, in their order, as fast as the broker takes them."""
    _, host, port = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.connect(host, port)
    client.loop_start()
    infos = [client.publish(data_topic(group, edge), f, qos=1) for edge, f in messages]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _own_broker(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Mosquitto on a free port with deploy/mosquitto/dev.conf's queue settings."""
    import getpass
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = (Path(__file__).parents[1] / "deploy" / "mosquitto" / "dev.conf").read_text()
    conf = work / "mosquitto.conf"
    conf.write_text(
        dev.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1").replace(
            "persistence_location /var/tmp/", f"persistence_location {work}/"
        )  # its own database, not the one a dev broker on this machine keeps
        + f"user {getpass.getuser()}\n"
    )
    log = work / "mosquitto.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=err)
    for _ in range(400):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mqtt://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"mosquitto did not start on port {port}:\n{log.read_text()[-2000:]}")


def _end_to_end(
    run: Path,
    frames: list[bytes] | list[tuple[str, bytes]],
    url: str,
    db: str,
    workers: int,
    per_frame: int = PER_FRAME,
) -> dict[str, Any]:
    """`frames` of one edge ("bench"), or (edge, frame) messages in the order they are sent."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    messages = [m if isinstance(m, tuple) else ("bench", m) for m in frames]
    total = len(messages) * per_frame
    cmd = [
        sys.executable, "-m", "sparsetel", "serve", "--model", str(run), "--db", db,
        "--group", group, "--broker", url, "--workers", str(workers),
        "--stop-after", str(total), "--idle-timeout", "120", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    subscribed = threading.Semaphore(0)
    log: deque[str] = deque(maxlen=40)  # serve's last lines, for the error when it fails

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "subscribed to" in line:
                subscribed.release()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + 120
    for _ in range(workers):
        while not subscribed.acquire(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                time.sleep(0.5)  # the watcher reads what is left
                tail = "".join(log)
                raise SystemExit(f"serve --workers {workers} did not subscribe:\n{tail}")
    started = time.perf_counter()
    _publish(url, group, messages)
    with open_store(db) as store:
        while store.count_records() < total and proc.poll() is None:
            time.sleep(0.05)
        span_s = time.perf_counter() - started
    out, _ = proc.communicate(timeout=600)
    with open_store(db) as store:
        stored = store.count_measurements()
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {
        "workers": workers,
        "stored": stored,
        "per_s": stored / span_s,
        "span_s": span_s,
        "duplicates": summary.get("duplicates"),
    }


def _postgres_db(url: str) -> str | None:
    """A fresh schema on the server, as a URL; None when it does not answer."""
    try:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        return None
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="an MQTT broker URL (default: a Mosquitto of its own)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--frames", type=int, default=2000, help="frames of 50 per run")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--temporal", action="store_true", help="also the temporal codec")
    parser.add_argument("--temporal-only", action="store_true", help="only the temporal codec")
    parser.add_argument(
        "--measurements", type=int, default=20_000, help="temporal: measurements per run"
    )
    parser.add_argument(
        "--per-frame", default="1,50", help="temporal: measurements per frame, comma-separated"
    )
    parser.add_argument(
        "--e2e-runs", type=int, default=1,
        help="temporal: end-to-end runs per store and frame size, the median run reported (the "
        "lower middle one of an even count); one run of 20,000 measurements at 50 a frame "
        "lasts a second or two",
    )  # fmt: skip
    parser.add_argument(
        "--e2e-workers", default="2",
        help="temporal: decoder workers of the end-to-end runs, comma-separated (at one "
        "measurement a frame one worker beats two on 2 cores: see docs/performance.md)",
    )  # fmt: skip
    args = parser.parse_args()
    result: dict[str, Any] = {"end_to_end": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, url = (None, args.broker) if args.broker else _own_broker(work)
        if args.temporal or args.temporal_only:
            from bench_temporal import temporal_rows

            per_frame = tuple(int(n) for n in args.per_frame.split(","))
            workers = tuple(int(n) for n in args.e2e_workers.split(","))
            result["temporal"] = temporal_rows(
                work, url, args.postgres, args.measurements, per_frame, args.e2e_runs, workers
            )
        if args.temporal_only:
            return _finish(args, result, broker)
        run = _model(work)
        frames = _frames(run, args.frames)
        result.update(_decode_only(run, frames))
        for n in (int(w) for w in args.workers.split(",")):
            stores = [
                ("sqlite", str(work / f"w{n}.db")),
                ("postgresql", _postgres_db(args.postgres)),
            ]
            for kind, db in stores:
                if db is not None:
                    row = _end_to_end(run, frames, url, db, n)
                    result["end_to_end"].append({"store": kind, **row})
        return _finish(args, result, broker)


def _finish(
    args: argparse.Namespace, result: dict[str, Any], broker: subprocess.Popen[bytes] | None
) -> int:
    if broker is not None:  # gone before its folder is: it writes its database on the way out
        broker.terminate()
        broker.wait(timeout=30)
    if args.json:
        print(json.dumps(result))
        return 0
    if "temporal" in result:
        from bench_temporal import print_temporal

        print_temporal(result["temporal"])
    if "decode_per_s_one_core" not in result:
        return 0
    print(f"decode only, one core:           {result['decode_per_s_one_core']:,.0f} measurements/s"
          f" (goal {GOAL_DECODE:,})")  # fmt: skip
    ratio = result["batched_over_per_frame"]
    print(f"  one frame at a time:           {result['decode_per_frame_per_s_one_core']:,.0f}"
          f" (batched / per frame, median of rounds: {ratio:.2f})")  # fmt: skip
    print(f"decode and predict, one core:    {result['decode_predict_per_s_one_core']:,.0f}")
    for row in result["end_to_end"]:
        where = f"{row['store']}, {row['workers']} worker(s)"
        print(
            f"end to end, {where}: {row['per_s']:,.0f} measurements/s "
            f"({row['stored']:,} in {row['span_s']:.1f} s; goal {GOAL_E2E:,})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
