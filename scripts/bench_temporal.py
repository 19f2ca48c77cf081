"""The temporal codec's part of the ingest benchmark (scripts/bench_ingest.py --temporal).

Decode only, one core: per version 3 frame what `cloud.ingest.chains` does before storing
(parse the frame, `decode_payload` from the chain state, `denormalise`), the same a batch of
BATCH_MAX frames at a time with one `denormalise` per batch (as `cloud.ingest.chainbatch`
does), the first with the run's KPI predictor over its window, and `decode_payload` alone;
measurements per second, median of interleaved rounds. End to end: ``serve --workers 2``
(or each count of ``--e2e-workers``) storing frames published in order, on SQLite and (when
it answers) PostgreSQL. At 1 and at 50 measurements per frame.

End to end, two layouts of the same number of measurements:

- one edge: every frame on one edge's topic, as fast as the broker takes them. The shared
  subscription hands consecutive frames of the edge to alternate workers, and a chained frame
  decodes only after its predecessor, so the workers mostly wait for each other's commits
  (and frames that overtake their predecessor are kept pending and decoded later): the worst
  case of ordered decoding, one stream at thousands of frames a second.
- a fleet: FLEET_EDGES edges (fewer when that would leave an edge under FLEET_MIN_FRAMES
  frames), each sending the same chained frames in order; the edges' frames interleave, in
  rounds shuffled with a fixed seed (edges are not in step, and a fixed order would hand each
  worker a fixed half of the edges). What a fleet of edges looks like to the decoders.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_ingest import GOAL_DECODE, GOAL_E2E, TEMPORAL_PER_FRAME, _end_to_end, _postgres_db

from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.cloud.ingest.chains import key_flags
from sparsetel.cloud.ingest.service import BATCH_MAX
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.shared.chainframe import (
    ChainHead,
    chain_frame,
    decode_chain_frame,
    encode_chain_frame,
)
from sparsetel.shared.temporalcodec import ChainState
from sparsetel.shared.temporalpayload import Decoded, encode_payload
from sparsetel.shared.wire import AGENT_KEY_INTERVAL

__all__ = ["print_temporal", "temporal_rows"]

FLEET_EDGES = 100  # edges of the fleet layout, at most
FLEET_MIN_FRAMES = 20  # frames per edge, at least


def _fleet(frames: list[bytes]) -> list[tuple[str, bytes]]:
    """The fleet layout of `frames` (see the docstring): (edge, frame) in sending order."""
    edges = max(1, min(FLEET_EDGES, len(frames) // FLEET_MIN_FRAMES))
    each = len(frames) // edges
    rng = np.random.default_rng(0)
    out = []
    for seq in range(each):
        for e in rng.permutation(edges).tolist():
            out.append((f"edge{e:03d}", frames[seq]))
    return out


def _temporal_model(work: Path) -> Path:
    """A temporal run on simulated sessions (quick sizes), trained and exported."""
    from sparsetel.cloud.codec.export import export_run
    from sparsetel.cloud.data.simulator import write_sessions
    from sparsetel.cloud.demo.pipeline import DEMO_KPIS, DEMO_TARGET
    from sparsetel.cloud.training.train import TrainOptions, train_run

    data = work / "tdata"
    write_sessions(data, n_sessions=6, rows=1200, seed=0)
    run = work / "trun"
    options = TrainOptions(
        data=data, kpis=DEMO_KPIS, target=DEMO_TARGET, out=run, quick=True, codec="temporal",
        steps=40, seed=0, progress=False,
    )  # fmt: skip
    train_run(options)
    export_run(run)
    return run


def _frames(model: TemporalModel, x: np.ndarray, per_frame: int) -> list[bytes]:
    """`x` coded as the agent codes it: chained frames of `per_frame`, a key every
    AGENT_KEY_INTERVAL measurements (a frame starting at one carries a ChainHead)."""
    codec, m = model.codec, model.manifest
    # inside serve's window for frame times: the last an hour ago (a day ahead is refused)
    t0 = (int(time.time()) - 3600 - len(x)) * 1000
    state: ChainState | None = None
    out = []
    for seq, start in enumerate(range(0, len(x), per_frame)):
        part = x[start : start + per_frame]
        # a key due in this frame goes to its start: the agent keys frames, not measurements
        due = any((start + i) % AGENT_KEY_INTERVAL == 0 for i in range(len(part)))
        keys = [due and i == 0 for i in range(len(part))]
        payload, decoded = encode_payload(codec, part, keys, None if keys[0] else state)
        state = decoded.state
        times = [t0 + 1000 * (start + i) for i in range(len(part))]
        head = ChainHead(m.model_ref, times[0], 1000, m.L, m.K) if keys[0] else None
        frame = chain_frame(0, seq, times, 1000, [i for i, k in enumerate(keys) if k], payload,
                            head, None if head else times[0] - 1000)  # fmt: skip
        out.append(encode_chain_frame(frame))
    return out


def _decode_only(model: TemporalModel, frames: list[bytes], repeats: int = 7) -> dict[str, float]:
    codec, W = model.codec, max(model.window, 1)
    parsed = [decode_chain_frame(f) for f in frames]
    flags = [[i in f.keys for i in range(f.count)] for f in parsed]
    n = sum(f.count for f in parsed)

    def decoded(data: bytes, state: ChainState | None) -> Decoded:
        """What `cloud.ingest` does with a frame before it stores it: parse and decode."""
        frame = decode_chain_frame(data)
        keys = key_flags(frame)
        return decode_payload(codec, frame.payload, keys, None if frame.head else state)

    def ingest(predict: bool) -> None:
        state, recent = None, np.zeros((0, codec.D))
        for data in frames:
            out = decoded(data, state)
            state = out.state
            codec.to_raw(out.recon)
            if predict:
                stacked = np.concatenate([recent, out.recon])
                model.predict(stacked)
                recent = stacked[max(len(stacked) - (W - 1), 0) :]

    def batched() -> None:  # as a worker decodes (`ChainBatch`): raw units once per batch
        state = None
        for at in range(0, len(frames), BATCH_MAX):
            recon = []
            for data in frames[at : at + BATCH_MAX]:
                out = decoded(data, state)
                state = out.state
                recon.append(out.recon)
            codec.to_raw(np.concatenate(recon))

    def payload_only() -> None:
        state = None
        for frame, keys in zip(parsed, flags, strict=True):
            state = decode_payload(codec, frame.payload, keys, None if frame.head else state).state

    ways = {
        "decode_per_s_one_core": lambda: ingest(False),
        "decode_batch_per_s_one_core": batched,
        "decode_predict_per_s_one_core": lambda: ingest(True),
        "decode_payload_per_s_one_core": payload_only,
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            rates[name].append(n / (time.perf_counter() - started))
    return {name: statistics.median(r) for name, r in rates.items()}


def temporal_rows(
    work: Path,
    url: str,
    postgres: str,
    measurements: int,
    per_frames: tuple[int, ...] = TEMPORAL_PER_FRAME,
    runs: int = 1,
    workers: tuple[int, ...] = (2,),
) -> list[dict[str, Any]]:
    """One row per frame size: decode-only rates and end-to-end runs on each count of
    `workers` (the median of `runs` runs per store, each run's rate kept in ``runs_per_s``)."""
    import torch
    from bench_edge import _rows

    torch.set_num_threads(1)
    run = _temporal_model(work)
    model = TemporalModel.load(run)
    x = _rows(work / "tdata", model.codec.kpis, measurements).astype(np.float64)
    out = []
    for per_frame in per_frames:
        frames = _frames(model, x, per_frame)
        row: dict[str, Any] = {"per_frame": per_frame, "frames": len(frames)}
        row.update(_decode_only(model, frames[: max(2000 // per_frame, 40)]))
        row["end_to_end"] = []
        fleet = _fleet(frames)
        layouts: dict[str, list[bytes] | list[tuple[str, bytes]]] = {"one edge": frames}
        edges = len({e for e, _ in fleet})
        if edges > 1:  # (too few frames for a fleet: one edge only)
            layouts[f"{edges} edges"] = fleet
        for n_layout, (layout, messages) in enumerate(layouts.items()):
            for kind in ("sqlite", "postgresql"):
                for n in workers:
                    tries = []
                    for i in range(runs):  # a fresh database each run
                        db = (
                            str(work / f"t{per_frame}-{n_layout}-{n}-{i}.db")
                            if kind == "sqlite"
                            else _postgres_db(postgres)
                        )
                        if db is not None:
                            tries.append(_end_to_end(run, messages, url, db, n, per_frame))
                    if not tries:
                        continue
                    e2e = sorted(tries, key=lambda t: t["per_s"])[(len(tries) - 1) // 2]
                    runs_per_s = [round(t["per_s"]) for t in tries]  # (above: the median)
                    row["end_to_end"].append(
                        {"store": kind, "layout": layout, **e2e, "runs_per_s": runs_per_s}
                    )
        out.append(row)
    return out


def print_temporal(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(f"temporal codec, {row['per_frame']} measurement(s) per frame:")
        print(f"  decode only, one core:         {row['decode_per_s_one_core']:,.0f} "
              f"measurements/s (goal {GOAL_DECODE:,})")  # fmt: skip
        print(f"  the same, a batch at a time:   {row['decode_batch_per_s_one_core']:,.0f}")
        print(f"  decode and predict, one core:  {row['decode_predict_per_s_one_core']:,.0f}")
        print(f"  decode_payload alone:          {row['decode_payload_per_s_one_core']:,.0f}")
        for e2e in row["end_to_end"]:
            runs = e2e["runs_per_s"]
            spread = f"; median of {len(runs)}: {runs}" if len(runs) > 1 else ""
            print(f"  end to end, {e2e['store']}, {e2e['layout']}, {e2e['workers']} workers: "
                  f"{e2e['per_s']:,.0f} measurements/s "
                  f"({e2e['stored']:,} in {e2e['span_s']:.1f} s{spread}; "
                  f"goal {GOAL_E2E:,})")  # fmt: skip
