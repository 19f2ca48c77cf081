"""The SQLite store: schema, one-transaction frames, duplicates decided by the database."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest

from sparsetel.cloud.store.database import MIGRATIONS, Store, open_store
from sparsetel.cloud.store.rows import FrameRow, MeasurementRow
from tests.helpers import store_a_frame_before_digests

REF = bytes.fromhex("0123456789abcdef")


def _frame(seq: int, edge: str = "edge-1", bd_seq: int = 0, n: int = 2) -> FrameRow:
    return FrameRow(edge, bd_seq, seq, REF, n, 40 + n, False, 1_700_000_000_000)


def _rows(n: int = 2, t0: int = 1_000) -> list[MeasurementRow]:
    return [
        MeasurementRow(
            rec=i,
            t_ms=t0 + 1000 * i,
            nnz=2,
            codes=(3, 3 + i),
            kpis=(-90.5 + i, math.nan, 12.0),
            prediction=None if i == 0 else 5.5,
            predicted_t_ms=None if i == 0 else t0 + 1000 * (i + 1),
        )
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "t.db")
    yield s
    s.close()


def test_open_store_creates_a_wal_database_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.db"
    with open_store(f"sqlite:///{path}") as s:
        assert s.dialect == "sqlite"
        assert s.schema_version() == len(MIGRATIONS)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"schema_version", "edges", "frames", "measurements"} <= tables
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "measurements_edge_t" in indexes


def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    open_store(tmp_path / "x.db").close()
    with open_store(tmp_path / "x.db") as s:
        assert s.schema_version() == len(MIGRATIONS)
        rows = s._query("SELECT COUNT(*) FROM schema_version")
    assert rows[0][0] == len(MIGRATIONS)


def test_open_store_refuses_a_database_newer_than_the_code(tmp_path: Path) -> None:
    open_store(tmp_path / "x.db").close()
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        open_store(tmp_path / "x.db")


@pytest.mark.parametrize("bad", ["", "mysql://host/db"])
def test_open_store_rejects_unknown_locations(bad: str) -> None:
    with pytest.raises(ValueError):
        open_store(bad)


def test_store_frame_writes_the_frame_and_its_measurements(store: Store) -> None:
    assert store.store_frame(_frame(7), _rows(3)) is True
    assert store.count_frames() == 1
    assert store.count_measurements() == 3
    rows = store.fetch_measurements()
    assert [r["rec"] for r in rows] == [0, 1, 2]
    first = rows[0]
    assert (first["edge"], first["bd_seq"], first["seq"], first["t_ms"]) == ("edge-1", 0, 7, 1000)
    assert first["model_ref"] == REF.hex()
    assert first["codes"] == [3, 3]
    assert first["kpis"] == [-90.5, None, 12.0]
    assert first["prediction"] is None
    assert rows[1]["prediction"] == 5.5 and rows[1]["predicted_t_ms"] == 3000


def test_store_frame_returns_false_for_a_duplicate_and_writes_nothing(store: Store) -> None:
    assert store.store_frame(_frame(1), _rows(2))
    assert store.store_frame(_frame(1), _rows(5, t0=99)) is False
    assert store.count_frames() == 1
    assert store.count_measurements() == 2
    assert store.store_frame(_frame(1, bd_seq=1), _rows(2))  # a new session is not a duplicate


def test_duplicates_are_decided_by_the_database_not_by_one_connection(tmp_path: Path) -> None:
    with open_store(tmp_path / "x.db") as a, open_store(tmp_path / "x.db") as b:
        assert a.store_frame(_frame(1), _rows(2))
        assert b.store_frame(_frame(1), _rows(2)) is False
        assert b.count_measurements() == 2


def test_a_failing_measurement_insert_rolls_the_frame_back(store: Store) -> None:
    clash = [*_rows(2), _rows(1)[0]]  # rec 0 twice: primary key violation
    with pytest.raises(sqlite3.IntegrityError):
        store.store_frame(_frame(1), clash)
    assert store.count_frames() == 0 and store.count_measurements() == 0
    assert store.store_frame(_frame(1), _rows(2))


def test_zero_code_records_and_audits_round_trip(store: Store) -> None:
    row = MeasurementRow(0, 5, 0, (), (1.0, math.inf), audit=(1.5, math.nan))
    store.store_frame(_frame(1, n=1), [row])
    (got,) = store.fetch_measurements()
    assert got["codes"] == [] and got["nnz"] == 0
    assert got["kpis"] == [1.0, None]
    assert got["audit"] == [1.5, None]


def test_fetch_and_count_filter_by_edge_and_keep_sending_order(store: Store) -> None:
    store.store_frame(_frame(2, edge="b"), _rows(2, t0=10))
    store.store_frame(_frame(1, edge="b"), _rows(2, t0=5000))
    store.store_frame(_frame(1, edge="a"), _rows(1))
    assert store.count_measurements("b") == 4 and store.count_frames("b") == 2
    assert store.count_measurements("nobody") == 0
    assert [(r["seq"], r["rec"]) for r in store.fetch_measurements("b")] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]
    assert len(store.fetch_measurements(limit=3)) == 3


def test_birth_then_matching_death_marks_the_edge_offline(store: Store) -> None:
    birth = {"online": True, "edge": "e1", "bdSeq": 4}
    assert store.set_edge_state("g", "e1", True, 4, "ab" * 32, birth, updated_ms=10)
    assert store.set_edge_state("g", "e1", False, 4, updated_ms=20)
    (edge,) = store.edges()
    assert edge == {
        "group": "g",
        "edge": "e1",
        "online": False,
        "bd_seq": 4,
        "model_sha256": "ab" * 32,
        "birth": birth,
        "updated_ms": 20,
    }


def test_a_stale_death_does_not_take_a_newer_session_offline(store: Store) -> None:
    store.set_edge_state("g", "e1", True, 5, "cd" * 32, {"bdSeq": 5}, updated_ms=10)
    assert store.set_edge_state("g", "e1", False, 4, updated_ms=20) is False
    (edge,) = store.edges()
    assert edge["online"] is True and edge["bd_seq"] == 5 and edge["updated_ms"] == 10


def test_a_death_for_an_unknown_edge_is_recorded(store: Store) -> None:
    assert store.set_edge_state("g", "new", False, 0, updated_ms=1)
    assert store.edges()[0]["online"] is False


def test_store_is_usable_from_a_thread_other_than_its_creator(store: Store) -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(store.store_frame(_frame(1), _rows())))
    worker.start()
    worker.join(timeout=10)
    assert results == [True]


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = open_store(tmp_path / "x.db")
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.store_frame(_frame(1), _rows())


def _batch_with_a_failing_write(store: Store) -> list[bool]:
    """Three frames in one batch: a new one, a repeat, and one whose write fails halfway."""
    out = []
    with store.batch():
        out.append(store.store_frame(_frame(1), _rows()))
        out.append(store.store_frame(_frame(0), _rows()))  # stored before the batch
        try:
            with store._transaction():  # a write that fails after its first statement
                store.store_frame(_frame(2), _rows())
                raise RuntimeError("disk says no")
        except RuntimeError:
            out.append(False)
        out.append(store.store_frame(_frame(3), _rows()))
    return out


def test_a_batch_commits_its_frames_together_each_succeeding_or_failing_alone(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path / "b.db") as store:
        assert store.store_frame(_frame(0), _rows())
        assert _batch_with_a_failing_write(store) == [True, False, False, True]
        seqs = sorted({r["seq"] for r in store.fetch_measurements()})
        assert seqs == [0, 1, 3] and store.count_frames() == 3  # frame 2 undone entirely
        assert store.sequence_gaps() == {"edge-1": 1}
    with open_store(tmp_path / "b.db") as again:  # committed: another connection sees it
        assert again.count_measurements() == 6


def check_kpi_series(store: Store) -> None:
    """A KPI by name over time, across two models that keep it in different columns (shared
    with the PostgreSQL test)."""
    other = bytes.fromhex("aaaabbbbccccdddd")
    store.register_model(REF, ("RSRP", "SNR", "CQI"), "CQI")
    store.register_model(other, ("SNR", "RSRP"), "SNR")
    store.register_model(REF, ("ignored",), "x")  # once registered, a model stays as it was
    assert store.models() == {REF.hex(): ["RSRP", "SNR", "CQI"], other.hex(): ["SNR", "RSRP"]}
    store.store_frame(_frame(0), _rows(3, t0=1_000))  # RSRP -90.5, -89.5, -88.5; SNR NaN
    upgraded = FrameRow("edge-1", 1, 0, other, 2, 50, False, 0)
    store.store_frame(upgraded, [
        MeasurementRow(0, 4_000, 1, (1,), (7.0, -80.0)),
        MeasurementRow(1, 5_000, 1, (1,), (8.0, math.nan)),
    ])  # fmt: skip
    store.store_frame(_frame(0, edge="edge-2"), _rows(3, t0=1_000))
    assert store.kpi_series("edge-1", "RSRP") == [
        (1_000, -90.5), (2_000, -89.5), (3_000, -88.5), (4_000, -80.0), (5_000, None),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "RSRP", start_ms=2_000, end_ms=5_000) == [
        (2_000, -89.5), (3_000, -88.5), (4_000, -80.0),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "SNR", start_ms=2_500) == [
        (3_000, None), (4_000, 7.0), (5_000, 8.0),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "CQI", limit=2) == [(1_000, 12.0), (2_000, 12.0)]
    assert store.kpi_series("nobody", "RSRP") == []
    with pytest.raises(KeyError, match="'RSRP', 'SNR'"):
        store.kpi_series("edge-1", "DL_bitrate")


def test_a_kpi_is_read_by_name_and_time_range_across_models(store: Store) -> None:
    check_kpi_series(store)
    plan = store._query(
        "EXPLAIN QUERY PLAN SELECT t_ms FROM measurements WHERE edge = ? AND t_ms >= ? "
        "AND t_ms < ?",
        ("edge-1", 0, 10),
    )
    assert "measurements_edge_t" in " ".join(str(part) for row in plan for part in row)


def test_kpis_are_stored_as_json_that_gives_back_every_float32_exactly() -> None:
    import json

    import numpy as np

    from sparsetel.cloud.store.schema import json_floats

    rng = np.random.default_rng(0)
    values = (rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000)).astype(np.float32)
    back = json.loads(json_floats([float(v) for v in values]))
    assert np.array_equal(np.asarray(back, dtype=np.float32), values)
    assert json.loads(json_floats([math.nan, math.inf, -math.inf, -0.0, 12.0])) == [
        None, None, None, 0.0, 12,
    ]  # fmt: skip


def test_records_are_counted_from_the_frames_table(store: Store) -> None:
    assert store.count_records() == 0
    store.store_frame(_frame(0, n=3), _rows(3))
    store.store_frame(_frame(1, edge="edge-2"), _rows())
    store.store_frame(_frame(0, n=3), _rows(3))  # a repeat counts once
    assert store.count_records() == store.count_measurements() == 5


def test_a_frame_keeps_its_digest_and_a_held_frame_is_kept_once(store: Store) -> None:
    row = FrameRow("edge-1", 0, 0, REF, 2, 42, False, 1, digest="ab" * 16)
    assert store.store_frame(row, _rows())
    assert store.stored_digest("edge-1", 0, 0) == "ab" * 16
    assert store.stored_digest("edge-1", 0, 1) is None  # not stored
    topic = "sparsetel/v1/g/DATA/edge-1"
    payload = bytes(range(256))  # every byte value comes back
    key = ("edge-1", 0, 0)
    assert store.hold_frame(key, "clone", "cd" * 16, (topic, payload, 7))
    assert not store.hold_frame(key, "clone", "cd" * 16, (topic, payload, 8))  # once
    assert store.hold_frame(key, "time_window", "ef" * 16, (topic, b"third", 9))
    assert [(c["reason"], c["digest"], c["payload"], c["received_ms"]) for c in store.held()] == [
        ("clone", "cd" * 16, payload, 7),
        ("time_window", "ef" * 16, b"third", 9),
    ]
    assert [c["digest"] for c in store.held("edge-1", reason="time_window")] == ["ef" * 16]
    assert store.held(edge="edge-2") == []
    store.park_frame("edge-1", REF, topic, b"p", 1)
    store.park_frame("edge-2", REF, topic.replace("edge-1", "edge-2"), b"p", 1)
    assert store.held_per_edge("parked_frames") == {"edge-1": 1, "edge-2": 1}
    assert store.held_per_edge("held_frames") == {"edge-1": 2}
    with pytest.raises(ValueError):
        store.held_per_edge("frames")


def test_frames_stored_before_the_digest_migration_have_no_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v6.db"
    store_a_frame_before_digests(path, ("edge-1", 0), REF, monkeypatch)
    with open_store(path) as new:
        assert new.schema_version() == len(MIGRATIONS)
        assert new.stored_digest("edge-1", 0, 0) is None
        assert new.count_frames() == 1
