"""Audit samples end to end on the real Mosquitto: an agent sends a share of its measurements
raw as well (``--audit-share``), and the decoder's live accuracy is exactly what the stored
audits say, and close to the offline evaluation of the same model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.codec.decoder import CloudCodec
from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.monitor.status import fleet_status
from sparsetel.cloud.store.database import open_store
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.shared.config import BrokerConfig
from tests.quickrun import quick_exported_run

pytestmark = pytest.mark.integration

ROWS, SHARE = 2000, 0.2


def test_audit_samples_give_the_live_accuracy(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, broker_url: str, group: str
) -> None:
    run = quick_exported_run(tmp_path_factory)
    (source,) = write_sessions(tmp_path / "sim", n_sessions=1, rows=ROWS, seed=21)
    db = tmp_path / "cloud.db"
    service = DecoderService(
        ServeConfig(broker=BrokerConfig(url=broker_url), group=group, models=(run,), db=str(db))
    )
    service.start()
    try:
        # No --rate: the agent sends as fast as it can and stamps rows exactly 1 s apart, so
        # each audit's prediction (made h periods earlier) lines up whatever the load. Paced
        # at 1000/s, a loaded CI box fell behind, re-anchored its clock, and no audit of 381
        # found its prediction.
        agent = subprocess.run(
            [sys.executable, "-m", "sparsetel", "edge", "--model", str(run), "--source",
             str(source), "--group", group, "--edge-id", "audited", "--broker", broker_url,
             "--audit-share", str(SHARE), "--state-dir", str(tmp_path / "edge"), "--json",
             "--health-interval", "0.2"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert agent.returncode == 0, agent.stderr[-2000:]
        sent = json.loads(agent.stdout)
        assert service.wait_for_records(sent["measurements"], timeout=60)
    finally:
        service.stop()
    with open_store(str(db)) as store:
        rows = store.fetch_measurements(edge="audited")
        (live,) = store.accuracy(edge="audited")
        (fleet,) = fleet_status(store)["edges"]
    audited = [r for r in rows if r["audit"] is not None]
    n = len(rows)
    assert len(audited) == sent["audits"] == live["audits"]
    assert abs(len(audited) - SHARE * n) < 5 * np.sqrt(n * SHARE * (1 - SHARE)), len(audited)
    codec = CloudCodec.load(run)
    nan = float("nan")
    truth = np.array([[nan if v is None else v for v in r["audit"]] for r in audited])
    decoded = np.array([[nan if v is None else v for v in r["kpis"]] for r in audited])
    zt, zd = codec.normalise(truth), codec.normalise(decoded)
    seen = np.isfinite(zt) & np.isfinite(zd)
    expected = float(((zd - zt)[seen] ** 2).sum() / (zt[seen] ** 2).sum())
    assert live["nmse"] == pytest.approx(expected, rel=1e-6)
    offline = evaluate_run(run, source.parent)["nmse"]
    print("live-accuracy:", json.dumps({"audits": live["audits"], "live_nmse": live["nmse"],
          "offline_nmse": offline, "target_n": live["target_n"],
          "target_mae": live["target_mae"]}))  # fmt: skip
    assert live["nmse"] <= 2 * offline + 0.05
    assert live["target_n"] > 0.8 * len(audited) and live["target_mae"] is not None
    # the same run in `sparsetel status`: heartbeats came through the broker too
    print("status:", json.dumps(fleet))
    assert (fleet["edge"], fleet["online"], fleet["measurements"]) == ("audited", False, n)
    assert fleet["spool_depth"] is not None and fleet["heartbeat_age_s"] is not None
    assert fleet["compression_ratio"] > 1 and fleet["gaps"] == 0
