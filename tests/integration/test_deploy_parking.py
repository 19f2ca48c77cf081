"""A model rollout seen from the cloud: an agent is switched to a new model the decoder
service has not loaded; its frames are parked, not lost, and decoded once the new run is
dropped into the service's models folder. Real Mosquitto, real trained models, a real agent.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.fleet.keys import keygen
from sparsetel.cloud.fleet.rollout import deploy
from sparsetel.cloud.ingest import registry as registry_module
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.edge.agent import AgentStats, EdgeConfig, run_agent
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import model_topic, state_topic
from tests.mqttclients import clear_retained
from tests.quickrun import KPIS, TARGET, quick_run

pytestmark = pytest.mark.integration

EDGE = "rollout-1"


def _second_run(first: Path, out: Path) -> Path:
    """Another model on the same sessions (another seed): same KPIs, another sha256."""
    options = TrainOptions(
        codec="memoryless",
        data=first.parent / "data", kpis=KPIS, target=TARGET, out=out, L=4, K=32, quick=True,
        steps=150, finetune_steps=40, eval_every=50, seed=1, progress=False,
    )  # fmt: skip
    train_run(options)
    export_run(out)
    return out


def _until(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_frames_of_a_newly_deployed_model_are_parked_then_decoded(
    broker_url: str,
    group: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "RESCAN_S", 0.5)  # the service runs in-process
    old = quick_run(tmp_path_factory)
    if not (old / "encoder.onnx").exists():
        export_run(old)
    new = _second_run(old, tmp_path / "new")
    ref = ModelManifest.load(new / MANIFEST_FILE).model_ref.hex()
    private, public = keygen(tmp_path / "keys")
    broker = BrokerConfig(url=broker_url)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    db = tmp_path / "cloud.db"
    service = DecoderService(
        ServeConfig(broker=broker, group=group, models=(old,), models_dir=models_dir, db=str(db))
    )
    service.start()
    r, w = os.pipe()
    read, write = os.fdopen(r, "rb"), os.fdopen(w, "wb")
    cfg = EdgeConfig(
        group=group, edge_id=EDGE, model=old, source="-", state_dir=tmp_path / "state",
        broker=broker, trust_key=public, batch=5, max_batch_delay_s=0.5,
    )  # fmt: skip
    stats = AgentStats()
    agent = threading.Thread(target=lambda: run_agent(cfg, stats=stats, stdin=read))
    rng = np.random.default_rng(0)
    rows = np.array([-90, -10, 12, 10, -60, 30000, 1000, 10, 30]) + rng.normal(size=(30, 9))

    def send(part: np.ndarray) -> None:
        write.write(b"".join(json.dumps(r.round(1).tolist()).encode() + b"\n" for r in part))
        write.flush()

    agent.start()
    try:
        send(rows[:10])
        _until(lambda: service.stats()["records_stored"] >= 10, "the old model's records")
        result = deploy(broker, group, new, private, timeout_s=20)
        assert result["switched"] == 1, result
        send(rows[10:20])
        _until(lambda: service.stats()["parked"] >= 2, "frames of the new model parked")
        assert service.stats()["records_stored"] == 10  # nothing of the new model decoded yet
        shutil.copytree(new, models_dir / "new")  # the operator hands the service the run
        time.sleep(0.6)  # past the registry's rescan interval for this model
        send(rows[20:])
        _until(lambda: service.stats()["records_stored"] >= 30, "every record")
    finally:
        write.close()
        agent.join(timeout=30)
        service.stop()
        clear_retained(broker, [model_topic(group, ref), state_topic(group, EDGE)])
    snapshot = service.stats()
    with open_store(str(db)) as store:
        measured = store.fetch_measurements(EDGE)
        parked_left = store.count_parked()
    refs = [m["model_ref"] for m in measured]
    old_ref = ModelManifest.load(old / MANIFEST_FILE).model_ref.hex()
    assert refs == [old_ref] * 10 + [ref] * 20, refs
    keys = {(m["bd_seq"], m["seq"], m["rec"]) for m in measured}
    assert len(measured) == len(keys) == 30 and parked_left == {}
    assert snapshot["parked"] == 2 and snapshot["unparked"] == 2 and snapshot["rejects"] == {}
    assert all(all(v is not None for v in m["kpis"]) for m in measured)
