"""Heartbeats kept by the decoder, and ``sparsetel status``: the fleet at a glance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetel.cli import main
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.monitor.status import fleet_status, format_status
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.topics import health_topic
from tests.frames import EDGE, GROUP, FakeCodec, data_frame
from tests.stores import NOW, beat, fill_fleet, write_old_rows


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "fleet.db")
    yield s
    s.close()


def test_heartbeats_are_kept_latest_first_and_bad_ones_rejected(store: Store) -> None:
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats())
    topic = health_topic(GROUP, EDGE)
    assert ingest.handle(topic, beat(spool_depth=3), received_ms=200) == "health"
    assert ingest.handle(topic, beat(spool_depth=9), received_ms=100) == "health"  # older
    assert store.health()[EDGE]["body"]["spool_depth"] == 3
    assert ingest.handle(topic, b"{not json") == "health_invalid"
    assert ingest.handle(topic, beat("e2")) == "health_invalid"  # another edge's body
    assert ingest.handle(topic, b"[1, 2]") == "health_invalid"
    assert ingest.handle(topic, beat(pad="x" * 70_000)) == "health_invalid"
    assert ingest.handle(topic, beat(rejects=[1, 2, 3])) == "health_invalid"
    assert ingest.stats.rejects() == {"health_invalid": 5}


def test_the_fleet_summary_has_each_edges_numbers(store: Store) -> None:
    fill_fleet(store)
    status = fleet_status(store, now_ms=NOW, window_s=60)
    e1, e2 = status["edges"]
    per = sum(len(data_frame(s)) for s in (0, 1, 3)) / 6
    sha = FakeCodec().manifest.model_sha256
    assert e1 == {
        "edge": EDGE, "group": GROUP, "online": True, "model_sha256": sha,
        "L": 3, "frames": 3, "measurements": 6, "frames_per_s": 2 / 60,
        "measurements_per_s": 4 / 60,
        "bytes_per_measurement": per, "compression_ratio": 4 * 3 / per, "gaps": 1,
        "edge_rejects": 3, "spool_depth": 4, "heartbeat_age_s": 12.0,
        "pending_frames": 0, "undecodable": {}, "undecodable_measurements": 0,
    }  # fmt: skip
    assert (e2["edge"], e2["online"], e2["frames"], e2["spool_depth"]) == ("e2", False, 0, 0)
    assert e2["bytes_per_measurement"] is None and e2["heartbeat_age_s"] == 0.0
    assert status["totals"] == {
        "edges": 2, "online": 1, "measurements": 6, "measurements_per_s": 4 / 60, "gaps": 1,
        "pending_frames": 0, "undecodable_measurements": 0,
    }  # fmt: skip
    table = format_status(status).splitlines()
    assert table[0].split() == [
        "edge", "online", "model", "L", "meas/s", "frames/s", "B/meas", "ratio", "gaps",
        "rejects", "spool", "beat", "age", "pending", "undecodable",
    ]  # fmt: skip
    assert table[1].split()[:2] == [EDGE, "yes"] and table[1].split()[-4:] == ["12", "s", "0", "0"]
    assert table[-1] == (
        "1 of 2 edges online; 6 measurements stored, 0.1/s over the last 60 s; 1 frames missing"
    )


def test_status_shows_edges_of_old_bad_rows_with_those_fields_unknown(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_fleet(store)
    write_old_rows(store)
    status = fleet_status(store, now_ms=NOW, window_s=60)
    by_edge = {e["edge"]: e for e in status["edges"]}
    assert set(by_edge) == {EDGE, "e2", "x1", "x2", "x3", "x4", "x5", "x6"}
    assert (by_edge["x1"]["edge_rejects"], by_edge["x1"]["spool_depth"]) == (None, 5)
    assert (by_edge["x2"]["edge_rejects"], by_edge["x2"]["spool_depth"]) == (2, None)
    assert (by_edge["x3"]["edge_rejects"], by_edge["x3"]["spool_depth"]) == (None, None)
    assert by_edge["x5"]["heartbeat_age_s"] == 5.0 and by_edge["x5"]["spool_depth"] is None
    assert by_edge["x6"]["online"] is True and by_edge["x6"]["L"] is None
    assert by_edge[EDGE]["edge_rejects"] == 3 and by_edge[EDGE]["L"] == 3  # the good ones
    json.dumps(status, allow_nan=False)  # no NaN or infinity reaches the JSON
    assert "x6" in format_status(status)


def test_status_answers_over_old_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "old.db"
    with open_store(db) as store:
        write_old_rows(store)
    assert main(["status", "--db", str(db)]) == 0
    assert main(["status", "--db", str(db), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("x6") == 2


def test_status_prints_the_table_or_json_and_refuses_a_bad_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fleet.db"
    with open_store(db) as store:
        fill_fleet(store)
    assert main(["status", "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(EDGE)
    assert main(["status", "--db", str(db), "--json", "--window", "3600"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["window_s"] == 3600 and [e["edge"] for e in body["edges"]] == [EDGE, "e2"]
    assert main(["status", "--db", str(db), "--window", "0"]) == 2
    assert "--window must be > 0" in capsys.readouterr().err
