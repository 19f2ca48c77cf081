"""A real agent running a trained temporal codec against the real broker: its version 3
frames, collected by a plain MQTT subscriber, decode in order to the CSV it replayed.

The quick temporal run (tests/quickrun.py) replays one of its own simulated sessions as a
1 Hz edge would send it (synthetic clock: 1000 ms apart, as fast as the agent goes), a frame
every two measurements and a key every ten, so most frames continue their predecessor.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.edge.agent import AgentStats, run_agent
from sparsetel.edge.replay import CsvReplaySource
from sparsetel.edge.temporalencoder import TemporalEncoder
from sparsetel.shared.birth import EdgeState, parse_state
from sparsetel.shared.chainframe import ChainFrame, decode_chain_frame, frame_version
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.temporalcodec import ChainState
from sparsetel.shared.topics import data_topic, parse_topic, state_topic
from tests.agents import EDGE, agent_config
from tests.mqttclients import Listener
from tests.quickrun import quick_temporal_run

pytestmark = pytest.mark.integration

ROWS = 120


def replay_csv(data: Path, out: Path, kpis: tuple[str, ...]) -> np.ndarray:
    """The first ROWS rows of one simulated session as a CSV of `kpis`; its measurements
    [ROWS, D] as the agent reads them (float32; "-" and sentinels such as 2**31-1 missing)."""
    with open(data / "session_000.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:ROWS]
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(kpis)
        writer.writerows([[row[k] for k in kpis] for row in rows])
    return np.stack([m.values for m in CsvReplaySource(out, kpis)])


def collect(listener: Listener, n: int) -> tuple[list[ChainFrame], list[EdgeState]]:
    """Frames until `n` measurements have come, and live STATE messages until a death."""
    frames: list[ChainFrame] = []
    states: list[EdgeState] = []
    while sum(f.count for f in frames) < n or not states or states[-1].online:
        message = listener.next(f"{n} measurements and a death")
        if message.retain:
            continue
        if parse_topic(message.topic).kind == "DATA":
            assert frame_version(bytes(message.payload)) == 3
            frames.append(decode_chain_frame(bytes(message.payload)))
        elif message.payload:
            states.append(parse_state(bytes(message.payload)))
    return frames, states


def test_a_temporal_agents_chained_frames_decode_in_order_to_the_csv(
    broker: BrokerConfig, group: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = quick_temporal_run(tmp_path_factory)
    encoder = TemporalEncoder(run)
    codec = encoder.codec
    x = replay_csv(run.parent / "data", tmp_path / "kpis.csv", codec.kpis)
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    cfg = agent_config(
        run, group, broker, source=str(tmp_path / "kpis.csv"), state_dir=tmp_path / "state",
        batch=2, key_interval=10, range_margin=None,
    )  # fmt: skip
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0, stats.error
    frames, states = collect(listener, ROWS)
    listener.close()

    assert [f.seq for f in frames] == list(range(len(frames))) == list(range(ROWS // 2))
    assert {f.bd_seq for f in frames} == {stats.bd_seq}
    starts = [f.seq for f in frames if not f.chained]
    assert starts == list(range(0, ROWS // 2, 5))  # a key every 10 measurements
    assert all(f.keys == ((0,) if not f.chained else ()) for f in frames)
    assert all(f.head.model_ref == encoder.model_ref for f in frames if f.head is not None)
    assert states[0].online and states[0].model_sha256 == encoder.model_sha256

    # the cloud's side, from the bytes alone: each frame continues its predecessor's state
    state: ChainState | None = None
    last_ms: int | None = None
    recon, times = [], []
    for frame in frames:
        if frame.chained:
            assert last_ms is not None
            t = frame.times(1000, last_ms)
        else:
            t, state = frame.times(), None
        flags = [i in frame.keys for i in range(frame.count)]
        decoded = decode_payload(codec, frame.payload, flags, state)
        state, last_ms = decoded.state, t[-1]
        recon.append(decoded.recon)
        times.extend(t)
    cloud = np.concatenate(recon)
    assert np.diff(times).tolist() == [1000] * (ROWS - 1)

    # exactly what the edge's encoder reconstructs, chain by chain ...
    for a in range(0, ROWS, 10):
        _, edge = encoder.encode_frame(x[a : a + 10], True, None)
        assert np.array_equal(cloud[a : a + 10], edge.recon, equal_nan=True)
    # ... which is the CSV within the codec's error
    z = codec.normalise(x)
    seen = np.isfinite(z)
    assert np.array_equal(np.isfinite(cloud), seen)
    err = np.where(seen, cloud - z, 0.0)
    nmse = float((err**2).sum() / (np.where(seen, z, 0.0) ** 2).sum())
    assert nmse < 0.2, nmse
    assert stats.measurements == ROWS and stats.rejects == {}
    assert stats.coded_ahead == ROWS // 2  # each frame coded as its measurements came
