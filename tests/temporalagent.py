"""A small temporal codec run as an edge runs it, for the edge's tests: `write_run` exports a
hand-made codec (uniform tables, `tests.helpers.small_temporal_codec`) with the real temporal
export, `framer` builds an agent's frame loop on it with a spool and a publisher that keeps
what it is given, `decode_in_order` decodes the frames as the cloud does."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.cloud.codec.temporalexport import export_temporal
from sparsetel.edge.delivery import Delivery
from sparsetel.edge.framer import AgentStats, Framer
from sparsetel.edge.settings import EdgeConfig
from sparsetel.edge.source import Measurement
from sparsetel.edge.spool import Spool
from sparsetel.shared.chainframe import decode_chain_frame, frame_version
from sparsetel.shared.rundir import CODEC_FILE, write_json
from sparsetel.shared.temporalcodec import TemporalCodec
from tests.helpers import small_temporal_codec

KPIS = ("a", "b", "c")
D, L = 3, 3


def small_codec(unit: float = 0.1, kpis: tuple[str, ...] = KPIS) -> TemporalCodec:
    return small_temporal_codec(unit, kpis, L)


def walk(n: int, seed: int, missing: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.normal(0, 0.15, (n, D)), axis=0)
    x[rng.random((n, D)) < missing] = np.nan
    return x


def write_run(run: Path, codec: TemporalCodec | None = None) -> Path:
    """An exported temporal run (codec.json, manifest.json) of `codec` in `run`."""
    run.mkdir(parents=True, exist_ok=True)
    (run / CODEC_FILE).write_text((codec or small_codec()).to_json(), encoding="utf-8")
    write_json(run / "config.json", {"target": "a", "horizon": 1, "window": 4, "seed": 0})
    write_json(run / "summary.json", {"probe_inputs": walk(12, 3).tolist()})
    export_temporal(run)
    return run


@dataclass
class FakePublisher:
    """What `Delivery` and the framer need of a publisher; keeps what was published."""

    frames: list[bytes]
    rebirths: int = 0
    connected: bool = True

    def publish_frame(self, payload: bytes, tag: int) -> bool:
        self.frames.append(payload)
        return True

    def has_room(self) -> bool:
        return True

    def rebirth(self) -> None:
        self.rebirths += 1


def framer(run: Path, tmp_path: Path, **fields: Any) -> tuple[Framer, FakePublisher]:
    cfg = EdgeConfig(
        group="g", edge_id="e", model=run, source="-", state_dir=tmp_path / "state", **fields
    )
    agent = Framer(cfg, AgentStats(), io.BytesIO(b""))
    publisher = FakePublisher([])
    agent.delivery = Delivery(Spool(tmp_path / "spool.db"), publisher)  # type: ignore[arg-type]
    return agent, publisher


def measurements(x: np.ndarray, t0: int = 1_700_000_000_000) -> list[Measurement]:
    return [Measurement(t0 + 1000 * i, row.astype(np.float64), None) for i, row in enumerate(x)]


def decode_in_order(codec: TemporalCodec, frames: list[bytes]) -> tuple[np.ndarray, list[int]]:
    """What the cloud makes of `frames` decoded in order: the reconstruction and where each
    chain starts (measurement index)."""
    state, last, recon, starts, at = None, None, [], [], 0
    for data in frames:
        assert frame_version(data) == 3
        frame = decode_chain_frame(data)
        if frame.chained:
            assert state is not None and last is not None
            times = frame.times(1000, last)
        else:
            assert frame.keys == (0,)
            times, state = frame.times(), None
            starts.append(at)
        assert frame.chained == (frame.keys == ()), "keys only at the start of a frame"
        decoded = decode_payload(
            codec, frame.payload, [i in frame.keys for i in range(frame.count)], state
        )
        state, last = decoded.state, times[-1]
        recon.append(decoded.recon)
        at += frame.count
    return np.concatenate(recon), starts
