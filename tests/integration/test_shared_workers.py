"""Decoder workers sharing the DATA stream through an MQTT 5 shared subscription on the real
Mosquitto: every frame is stored once, the work is split, STATE reaches every worker, and
sequence gaps are counted in the store, where every worker's frames meet."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import data_topic, state_topic
from sparsetel.shared.wire import Frame, Record, encode_frame
from tests.frames import MQTT_CODEC, recent_frame
from tests.helpers import wait_until
from tests.mqttclients import Publisher
from tests.processes import sparsetel, started
from tests.quickrun import quick_exported_run, quick_run
from tests.stores import frame_row, measurement_rows

pytestmark = pytest.mark.integration
T0_MS = (int(time.time()) - 3600) * 1000  # recent: inside serve's window for frame times


def _birth(group: str, edge: str) -> bytes:
    state = state_from_manifest(
        MQTT_CODEC.manifest, edge=edge, group=group, bd_seq=0, agent_version="it",
        runtime_version="none", timestamp_ms=int(time.time() * 1000),
    )  # fmt: skip
    return birth_payload(state)


def test_two_shared_workers_split_the_frames_and_store_each_once(
    broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    db = tmp_path / "shared.db"
    # Two shared services on one host: each its own client id (a derived one names the host).
    brokers = [BrokerConfig(url=broker_url, protocol="5", client_id=f"{group}-{i}") for i in (0, 1)]
    workers = [
        DecoderService(
            ServeConfig(broker=broker, group=group, db=str(db), shared=True),
            ModelRegistry([MQTT_CODEC]),
        )
        for broker in brokers
    ]
    for worker in workers:
        worker.start(timeout=15)
    edges = ("a", "b")
    try:
        for edge in edges:
            publisher.send(state_topic(group, edge), _birth(group, edge))
        for seq in range(30):
            if seq == 17:
                continue  # lost on the way: a gap in edge a's session
            for edge in edges:
                publisher.send(data_topic(group, edge), recent_frame(seq))
        publisher.send(data_topic(group, "a"), recent_frame(3))  # a repeat, as after a reconnect
        publisher.send(data_topic(group, "b"), recent_frame(3))
        total = lambda: sum(w.stats()["frames_ok"] + w.stats()["duplicates"] for w in workers)  # noqa: E731
        assert wait_until(lambda: total() == 2 * 29 + 2, timeout=20)
    finally:
        for worker in workers:
            worker.stop()
    stats = [w.stats() for w in workers]
    with open_store(str(db)) as store:
        frames = store.count_frames()
        gaps = store.sequence_gaps()
    assert frames == 58 and sum(s["frames_ok"] for s in stats) == 58
    assert sum(s["duplicates"] for s in stats) == 2
    assert all(s["frames_ok"] > 10 for s in stats), [s["frames_ok"] for s in stats]
    assert all(s["births"] == 2 for s in stats)  # STATE reaches every worker
    assert gaps == {"a": 1, "b": 1} and all(s["gaps"] == gaps for s in stats), [
        s["gaps"] for s in stats
    ]


def test_serve_workers_runs_processes_until_enough_is_stored(
    broker_url: str,
    group: str,
    publisher: Publisher,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = quick_exported_run(tmp_path_factory)
    manifest = ModelManifest.load(run / MANIFEST_FILE)
    frames = [
        encode_frame(
            Frame(
                manifest.model_ref,
                0,
                seq,
                manifest.L,
                manifest.K,
                1000,
                tuple(Record(T0_MS + 1000 * (5 * seq + i), (i, 7)) for i in range(5)),
            )
        )
        for seq in range(20)
    ]
    db = tmp_path / "workers.db"
    cmd = sparsetel(
        "serve", "--model", str(run), "--db", str(db),
        "--group", group, "--broker", broker_url, "--workers", "2", "--stop-after", "100",
        "--idle-timeout", "60", "--json",
    )  # fmt: skip
    subscribed = threading.Semaphore(0)
    with started(cmd) as proc:

        def watch() -> None:  # each worker logs "subscribed to" once it takes messages
            assert proc.stderr is not None
            for line in proc.stderr:
                if "subscribed to" in line:
                    subscribed.release()

        threading.Thread(target=watch, daemon=True).start()
        deadline = time.monotonic() + 90
        # Both workers up first: one alone could store everything before the other starts.
        for _ in range(2):
            assert subscribed.acquire(timeout=90), "the workers did not subscribe"
        # Resend until they stop (repeats are dropped).
        while proc.poll() is None and time.monotonic() < deadline:
            for payload in frames:
                publisher.send(data_topic(group, "w"), payload)
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    with open_store(str(db)) as store:
        assert store.count_frames() == 20 and store.count_measurements() == 100
    assert summary["records_stored"] == 100 and len(summary["workers"]) == 2
    # Together they stored each frame once (the first may have taken all of them before the
    # second subscribed: the split itself is the in-process test's business).
    assert sum(w["frames_ok"] for w in summary["workers"]) == 20
    assert summary["gaps"] == {}


def test_serve_workers_stopped_while_starting_is_a_clean_stop(
    broker_url: str, group: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Enough is stored before the workers are up: the parent stops them at once, most
    likely before they set up their SIGTERM handler; that is no failure (exit 0)."""
    run = quick_run(tmp_path_factory)
    db = tmp_path / "full.db"
    with open_store(db) as store:
        store.store_frame(frame_row(0, n=5), measurement_rows(5))
    out = subprocess.run(
        [sys.executable, "-m", "sparsetel", "serve", "--model", str(run), "--db", str(db),
         "--group", group, "--broker", broker_url, "--workers", "2", "--stop-after", "5",
         "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["restarts"] == 0
