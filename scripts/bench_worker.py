#!/usr/bin/env python3
"""A decoder worker's own cost, without a broker: version 3 frames handled in one process.

    .venv/bin/python scripts/bench_worker.py [--per-frame 1] [--edges 100] [--frames 4000]
        [--store sqlite|postgresql] [--postgres URL] [--batch 64] [--runs 3]
        [--model RUN] [--json]

What `sparsetel serve` does with the messages MQTT hands it, `FrameIngest.handle_batch` on
batches of `--batch`, timed alone: no broker, no other process on the CPU but the database.
The frames are those of bench_temporal (a quick temporal run trained here on simulated KPIs,
or `--model`): chained frames of `--per-frame` measurements, a key every AGENT_KEY_INTERVAL,
sent by `--edges` edges in turn, each in order. Each run stores `--frames` frames into a fresh
database (SQLite in a temporary folder, or a fresh schema on `--postgres`) and reports the
worker's CPU and wall time per frame; the median of `--runs` runs is printed. The end-to-end
figures of bench_ingest add the broker, MQTT and a publisher on the same cores.

To compare two revisions, run this at each on the same machine, alternating. Numbers are
printed, never asserted: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_edge import _rows  # the scripts folder, put on the path above
from bench_ingest import _postgres_db
from bench_temporal import _frames, _temporal_model

from sparsetel.cloud.ingest.handler import FrameIngest
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import ServiceStats
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.topics import data_topic


def _messages(frames: list[bytes], edges: int, n: int) -> list[tuple[str, bytes, int]]:
    """`n` messages: frame 0 of every edge, then frame 1 of every edge, and so on."""
    now = int(time.time() * 1000)
    out = []
    for seq in range(len(frames)):
        for e in range(edges):
            out.append((data_topic("bench", f"edge{e:03d}"), frames[seq], now))
            if len(out) == n:
                return out
    return out


def _run(
    run: Path, messages: list[tuple[str, bytes, int]], db: str, batch: int
) -> dict[str, float]:
    registry = ModelRegistry()
    registry.add_run(run)
    with open_store(db) as store:
        ingest = FrameIngest(registry, store, ServiceStats())
        cpu, wall = time.process_time(), time.perf_counter()
        outcomes = []
        for at in range(0, len(messages), batch):
            outcomes += ingest.handle_batch(messages[at : at + batch])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stored = outcomes.count("stored")
    if stored != len(messages):
        raise SystemExit(f"only {stored} of {len(messages)} frames stored: {set(outcomes)}")
    return {"cpu_us_per_frame": cpu / stored * 1e6, "wall_us_per_frame": wall / stored * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-frame", type=int, default=1)
    parser.add_argument("--edges", type=int, default=100)
    parser.add_argument("--frames", type=int, default=4000, help="frames per run")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--batch", type=int, default=64, help="messages a worker takes at once")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, help="an exported temporal run to use")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = args.model if args.model is not None else _temporal_model(work)
        model = TemporalModel.load(run)
        data = work / "tdata" if args.model is None else run.parent / "data"
        if not any(data.glob("*.csv")):
            from sparsetel.cloud.data.simulator import write_sessions

            data = work / "tdata"
            write_sessions(data, n_sessions=6, rows=1200, seed=0)
        per_edge = -(-args.frames // args.edges) * args.per_frame
        x = _rows(data, model.codec.kpis, per_edge).astype(np.float64)
        messages = _messages(_frames(model, x, args.per_frame), args.edges, args.frames)
        runs = []
        for i in range(args.runs):
            db = str(work / f"w{i}.db") if args.store == "sqlite" else _postgres_db(args.postgres)
            if db is None:
                raise SystemExit(f"PostgreSQL does not answer at {args.postgres}")
            runs.append(_run(run, messages, db, args.batch))
    result: dict[str, Any] = {
        "store": args.store, "per_frame": args.per_frame, "edges": args.edges,
        "frames": len(messages), "batch": args.batch, "runs": runs,
    }  # fmt: skip
    for key in ("cpu_us_per_frame", "wall_us_per_frame"):
        result[key] = statistics.median(r[key] for r in runs)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"a decoder worker, {args.store}, {result['frames']:,} frames of {args.per_frame} from "
        f"{args.edges} edges, batches of {args.batch} (median of {len(runs)} runs):\n"
        f"  CPU {result['cpu_us_per_frame']:,.0f} us a frame, wall "
        f"{result['wall_us_per_frame']:,.0f} us a frame "
        f"({result['cpu_us_per_frame'] / args.per_frame:,.1f} us CPU a measurement)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
