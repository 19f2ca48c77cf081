"""The SQLite store: schema, one-transaction frames, duplicates decided by the database."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import pytest

from sparsetel.cloud.store.database import MIGRATIONS, Store, open_store
from sparsetel.cloud.store.rows import MeasurementRow
from tests.helpers import store_a_frame_before_digests
from tests.stores import (
    ROW_REF,
    batch_with_a_failing_write,
    check_digests_and_held_frames,
    check_kpi_series,
    frame_row,
    measurement_rows,
)


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
    assert store.store_frame(frame_row(7), measurement_rows(3)) is True
    assert store.count_frames() == 1
    assert store.count_measurements() == 3
    rows = store.fetch_measurements()
    assert [r["rec"] for r in rows] == [0, 1, 2]
    first = rows[0]
    assert (first["edge"], first["bd_seq"], first["seq"], first["t_ms"]) == ("edge-1", 0, 7, 1000)
    assert first["model_ref"] == ROW_REF.hex()
    assert first["codes"] == [3, 3]
    assert first["kpis"] == [-90.5, None, 12.0]
    assert first["prediction"] is None
    assert rows[1]["prediction"] == 5.5 and rows[1]["predicted_t_ms"] == 3000


def test_store_frame_returns_false_for_a_duplicate_and_writes_nothing(store: Store) -> None:
    assert store.store_frame(frame_row(1), measurement_rows(2))
    assert store.store_frame(frame_row(1), measurement_rows(5, t0=99)) is False
    assert store.count_frames() == 1
    assert store.count_measurements() == 2
    assert store.store_frame(
        frame_row(1, bd_seq=1), measurement_rows(2)
    )  # a new session is not a duplicate


def test_duplicates_are_decided_by_the_database_not_by_one_connection(tmp_path: Path) -> None:
    with open_store(tmp_path / "x.db") as a, open_store(tmp_path / "x.db") as b:
        assert a.store_frame(frame_row(1), measurement_rows(2))
        assert b.store_frame(frame_row(1), measurement_rows(2)) is False
        assert b.count_measurements() == 2


def test_a_failing_measurement_insert_rolls_the_frame_back(store: Store) -> None:
    clash = [*measurement_rows(2), measurement_rows(1)[0]]  # rec 0 twice: primary key violation
    with pytest.raises(sqlite3.IntegrityError):
        store.store_frame(frame_row(1), clash)
    assert store.count_frames() == 0 and store.count_measurements() == 0
    assert store.store_frame(frame_row(1), measurement_rows(2))


def test_zero_code_records_and_audits_round_trip(store: Store) -> None:
    row = MeasurementRow(0, 5, 0, (), (1.0, math.inf), audit=(1.5, math.nan))
    store.store_frame(frame_row(1, n=1), [row])
    (got,) = store.fetch_measurements()
    assert got["codes"] == [] and got["nnz"] == 0
    assert got["kpis"] == [1.0, None]
    assert got["audit"] == [1.5, None]


def test_fetch_and_count_filter_by_edge_and_keep_sending_order(store: Store) -> None:
    store.store_frame(frame_row(2, edge="b"), measurement_rows(2, t0=10))
    store.store_frame(frame_row(1, edge="b"), measurement_rows(2, t0=5000))
    store.store_frame(frame_row(1, edge="a"), measurement_rows(1))
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
    worker = threading.Thread(
        target=lambda: results.append(store.store_frame(frame_row(1), measurement_rows()))
    )
    worker.start()
    worker.join(timeout=10)
    assert results == [True]


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = open_store(tmp_path / "x.db")
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.store_frame(frame_row(1), measurement_rows())


def test_a_batch_commits_its_frames_together_each_succeeding_or_failing_alone(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path / "b.db") as store:
        assert store.store_frame(frame_row(0), measurement_rows())
        assert batch_with_a_failing_write(store) == [True, False, False, True]
        seqs = sorted({r["seq"] for r in store.fetch_measurements()})
        assert seqs == [0, 1, 3] and store.count_frames() == 3  # frame 2 undone entirely
        assert store.sequence_gaps() == {"edge-1": 1}
    with open_store(tmp_path / "b.db") as again:  # committed: another connection sees it
        assert again.count_measurements() == 6


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
    store.store_frame(frame_row(0, n=3), measurement_rows(3))
    store.store_frame(frame_row(1, edge="edge-2"), measurement_rows())
    store.store_frame(frame_row(0, n=3), measurement_rows(3))  # a repeat counts once
    assert store.count_records() == store.count_measurements() == 5


def test_a_frame_keeps_its_digest_and_a_held_frame_is_kept_once(store: Store) -> None:
    check_digests_and_held_frames(store)


def test_frames_stored_before_the_digest_migration_have_no_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v6.db"
    store_a_frame_before_digests(path, ("edge-1", 0), ROW_REF, monkeypatch)
    with open_store(path) as new:
        assert new.schema_version() == len(MIGRATIONS)
        assert new.stored_digest("edge-1", 0, 0) is None
        assert new.count_frames() == 1


def test_writers_of_one_database_take_turns_on_a_file_lock(tmp_path: Path) -> None:
    """A write transaction holds the writers' flock from BEGIN to COMMIT, so the next writer
    (another worker) is woken the moment it ends instead of sleeping in SQLite's busy
    handler; a rolled-back transaction lets go of it too."""
    import fcntl

    path = tmp_path / "w.db"
    with open_store(path) as store, (tmp_path / "w.db-writers").open("a") as probe:

        def free() -> bool:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(probe, fcntl.LOCK_UN)
            return True

        assert free()
        with store.batch():
            assert store.store_frame(frame_row(0), measurement_rows())
            assert not free()
        assert free()
        with pytest.raises(RuntimeError), store.batch():
            assert not free()
            raise RuntimeError("undone")
        assert free()
        with open_store(path) as other:  # another connection waits for its turn, then writes
            done = threading.Event()
            with store.batch():
                writer = threading.Thread(
                    target=lambda: (
                        other.store_frame(frame_row(1), measurement_rows()) and done.set()
                    )
                )
                writer.start()
                assert not done.wait(0.3)
            writer.join(10)
            assert done.is_set() and store.count_frames() == 2


def test_the_batch_reads_of_chains_answer_for_no_keys_and_for_many(store: Store) -> None:
    assert (
        store.frames_in([]) == set() and store.tips_of([]) == {} and store.pending_of([]) == set()
    )
    assert store.store_frame(frame_row(0), measurement_rows())
    keys = [("edge-1", 0, s) for s in range(100)]
    assert store.frames_in(keys) == {("edge-1", 0, 0)}
