"""The whole pipeline through the real Mosquitto: train, export, two edge agents, the cloud.

Two agents run as separate processes (`python -m sparsetel edge`), the decoder service runs
in-process against SQLite. Every measurement must be stored exactly once, decoded to what
the cloud codec makes of the codes the ONNX encoder emitted, and reconstructed about as
well as `evaluate` says the model does on the same held-out sessions.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.codec.decoder import CloudCodec
from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.data.datasets import load_dataset
from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.shared.config import BrokerConfig
from tests.processes import sparsetel, started

pytestmark = pytest.mark.integration

KPIS = ("RSRP", "RSRQ", "SNR", "CQI", "RSSI", "DL_bitrate", "UL_bitrate", "Speed", "Load")
PER_EDGE = 1000


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A quick model on simulated sessions, exported; returns (run dir, data dir)."""
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    write_sessions(data, n_sessions=8, rows=PER_EDGE + 200, seed=3)
    run = root / "run"
    options = TrainOptions(
        codec="memoryless",
        data=data,
        kpis=KPIS,
        target="DL_bitrate",
        out=run,
        L=4,
        K=64,
        quick=True,
        seed=3,
    )
    train_run(options)
    export_run(run)
    return run, data


def _agent(run: Path, source: Path, broker: str, group: str, edge: str, state: Path) -> list[str]:
    return sparsetel(
        "edge", "--model", str(run), "--source", str(source),
        "--group", group, "--edge-id", edge, "--broker", broker, "--limit", str(PER_EDGE),
        "--batch", "50", "--state-dir", str(state), "--json",
    )  # fmt: skip


def test_two_agents_store_every_measurement_exactly_once_and_decode_within_tolerance(
    trained: tuple[Path, Path], broker_url: str, group: str, tmp_path: Path
) -> None:
    run, data = trained
    test_files = [data / name for name in json.loads((run / "split.json").read_text())["test"]]
    sources = (test_files * 2)[:2]
    db = tmp_path / "cloud.db"
    service = DecoderService(
        ServeConfig(broker=BrokerConfig(url=broker_url), group=group, models=(run,), db=str(db))
    )
    service.start()
    try:
        edges = [f"{group}-e{i}" for i in range(2)]
        with contextlib.ExitStack() as agents:  # killed on the way out if still running
            procs = [
                agents.enter_context(
                    started(_agent(run, src, broker_url, group, edge, tmp_path / edge), stderr=None)
                )
                for src, edge in zip(sources, edges, strict=True)
            ]
            agent_stats = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
            assert [p.returncode for p in procs] == [0, 0]
        assert service.wait_for_records(2 * PER_EDGE, timeout=60)
    finally:
        service.stop()
    stats = service.stats()
    assert [s["measurements"] for s in agent_stats] == [PER_EDGE, PER_EDGE]
    assert stats["records_stored"] == 2 * PER_EDGE
    assert stats["duplicates"] == 0 and stats["rejects"] == {}

    store = open_store(str(db))
    assert store.count_measurements() == 2 * PER_EDGE
    codec = CloudCodec.load(run)
    encoder = OnnxEncoder(run)
    nmse_stream = []
    for src, edge in zip(sources, edges, strict=True):
        rows = store.fetch_measurements(edge=edge)
        assert len(rows) == PER_EDGE
        assert len({(r["bd_seq"], r["seq"], r["rec"]) for r in rows}) == PER_EDGE
        truth = load_dataset(src, KPIS, "DL_bitrate").sessions[0].kpis[:PER_EDGE]
        expected_codes = encoder.encode_records(truth)
        assert [tuple(r["codes"]) for r in rows] == expected_codes
        stored = np.array([[np.nan if v is None else v for v in r["kpis"]] for r in rows])
        np.testing.assert_allclose(stored, codec.decode(expected_codes), rtol=1e-6, atol=1e-6)
        zt, zs = codec.normalise(truth), codec.normalise(stored)
        seen = ~np.isnan(zt)
        nmse_stream.append(np.sum((zs[seen] - zt[seen]) ** 2) / np.sum(zt[seen] ** 2))
    offline = evaluate_run(run, data)
    assert max(nmse_stream) <= 2 * offline["nmse"] + 0.02, (nmse_stream, offline["nmse"])
