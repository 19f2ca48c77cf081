"""Temporal-codec (version 3) frames through the real Mosquitto into `serve`: published out
of order, they are all stored once and decoded as the edge coded them; `serve --workers 2`
decodes one edge's chains from the state in the store, whichever worker takes a frame."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import data_topic
from tests.frames import temporal_frames
from tests.helpers import wait_until
from tests.mqttclients import Publisher
from tests.processes import sparsetel, started
from tests.quickrun import quick_temporal_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_temporal_run(tmp_path_factory)


def assert_decoded(store: Store, edge: str, expected: np.ndarray) -> None:
    rows = store.fetch_measurements(edge)
    got = np.array([[np.nan if v is None else v for v in r["kpis"]] for r in rows])
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-7)


def test_serve_stores_frames_published_successor_first_once_and_decoded(
    run: Path, broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    frames, expected = temporal_frames(run, 20, per_frame=2, key_interval=10)
    db = tmp_path / "t.db"
    service = DecoderService(
        ServeConfig(broker=BrokerConfig(url=broker_url), group=group, db=str(db)),
        ModelRegistry([TemporalModel.load(run)]),
    )
    service.start(timeout=15)
    try:
        order = [f for pair in zip(frames[1::2], frames[::2], strict=True) for f in pair]
        for payload in order:  # each successor before its predecessor
            publisher.send(data_topic(group, "v3"), payload)
        publisher.send(data_topic(group, "v3"), frames[7])  # a repeat
        assert service.wait_for_records(40, timeout=30)
        assert wait_until(lambda: service.stats()["duplicates"] == 1, timeout=10)
    finally:
        service.stop()
    stats = service.stats()
    assert stats["frames_ok"] == 20 and stats["pending"] > 0 and stats["rejects"] == {}
    with open_store(db) as store:
        assert store.count_frames() == 20 and store.pending_per_edge() == {}
        assert_decoded(store, "v3", expected)


def test_serve_workers_decode_one_edges_chains_from_the_store(
    run: Path, broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    frames, expected = temporal_frames(run, 30, per_frame=2, key_interval=30)  # one chain
    db = tmp_path / "workers.db"
    cmd = sparsetel(
        "serve", "--model", str(run), "--db", str(db), "--group", group, "--broker",
        broker_url, "--workers", "2", "--stop-after", "60", "--idle-timeout", "60", "--json",
    )  # fmt: skip
    subscribed = threading.Semaphore(0)
    order = list(range(len(frames)))
    np.random.default_rng(3).shuffle(order)
    with started(cmd) as proc:

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "subscribed to" in line:
                    subscribed.release()

        threading.Thread(target=watch, daemon=True).start()
        for _ in range(2):
            assert subscribed.acquire(timeout=90), "the workers did not subscribe"
        for seq in order:
            publisher.send(data_topic(group, "w3"), frames[seq])
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["records_stored"] == 60
    assert sum(w["frames_ok"] for w in summary["workers"]) == 30
    with open_store(db) as store:
        assert store.count_frames() == 30 and store.pending_per_edge() == {}
        assert_decoded(store, "w3", expected)
