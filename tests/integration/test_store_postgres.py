"""The store against a real PostgreSQL (tests/conftest.py `postgres_url`: 127.0.0.1:5432,
database `test`, trust auth, or SPARSETEL_TEST_POSTGRES). Each test works in a schema of its
own, dropped afterwards. Without a server the tests skip, except under CI=true: they fail."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import COPY_FROM, MIGRATIONS, Store, open_store
from sparsetel.cloud.store.rows import ChainTip, FrameRow, MeasurementRow
from tests.frames import TOPIC, FakeCodec, audited_frame
from tests.helpers import ANY_TIME, store_a_frame_before_digests
from tests.stores import (
    batch_with_a_failing_write,
    check_code_usage,
    check_digests_and_held_frames,
    check_kpi_series,
    check_live_accuracy,
    frame_row,
    measurement_rows,
)

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg")

REF = bytes.fromhex("feedfacecafebeef")


def _frame(seq: int, bd_seq: int = 1, edge: str = "pg-edge") -> FrameRow:
    return FrameRow(edge, bd_seq, seq, REF, 2, 50, True, 1_700_000_000_123)


def _rows() -> list[MeasurementRow]:
    return [
        MeasurementRow(0, 1_700_000_000_000, 1, (9,), (1.25, math.nan), None, None),
        MeasurementRow(1, 1_700_000_001_000, 2, (1, 9), (2.5, 3.0), 7.75, 1_700_000_002_000),
    ]


def test_postgres_store_migrates_into_its_schema(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert store.dialect == "postgresql"
        assert store.schema_version() == len(MIGRATIONS)
    with open_store(pg_url) as again:  # reopening applies nothing twice
        assert again._query("SELECT COUNT(*) FROM schema_version")[0][0] == len(MIGRATIONS)


def test_postgres_services_starting_at_once_on_a_fresh_schema_all_open_it(pg_url: str) -> None:
    """serve --workers 4 on an empty database: every worker migrates at the same moment. Bare
    CREATE TABLE IF NOT EXISTS lets all but one fail on pg_type's unique index; the migration
    lock makes the others wait and find the tables made."""
    schema = pg_url.rsplit("%3D", 1)[1]

    def open_it(start: threading.Barrier, errors: list[BaseException]) -> None:
        start.wait()
        try:
            open_store(pg_url).close()
        except Exception as exc:
            errors.append(exc)

    for _ in range(5):
        with psycopg.connect(pg_url, autocommit=True) as admin:  # empty it again
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            admin.execute(f'CREATE SCHEMA "{schema}"')
        start, errors = threading.Barrier(4), []
        threads = [threading.Thread(target=open_it, args=(start, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        with open_store(pg_url) as store:
            assert store.schema_version() == len(MIGRATIONS)


def test_postgres_store_frame_stores_once_and_counts_duplicates(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert store.store_frame(_frame(1), _rows())
        assert store.store_frame(_frame(1), _rows()) is False
        assert store.store_frame(_frame(2), _rows())
        assert store.count_frames() == 2
        assert store.count_measurements("pg-edge") == 4
        first, second = store.fetch_measurements("pg-edge")[:2]
    assert first["kpis"] == [1.25, None] and first["codes"] == [9]
    assert first["t_ms"] == 1_700_000_000_000 and first["model_ref"] == REF.hex()
    assert second["prediction"] == 7.75 and second["predicted_t_ms"] == 1_700_000_002_000


def test_postgres_duplicate_race_between_two_connections_stores_once(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(2)]
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def write(store: Store) -> None:
        barrier.wait(timeout=10)
        results.append(store.store_frame(_frame(5), _rows()))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False, True]
    assert stores[0].count_measurements() == 2
    for s in stores:
        s.close()


def test_postgres_failed_measurements_roll_the_frame_back(pg_url: str) -> None:
    with open_store(pg_url) as store:
        with pytest.raises(psycopg.errors.UniqueViolation):
            store.store_frame(_frame(1), [*_rows(), _rows()[0]])
        assert store.count_frames() == 0
        assert store.store_frame(_frame(1), _rows())


@pytest.mark.parametrize("n", [1, COPY_FROM - 1, COPY_FROM, 3 * COPY_FROM])
def test_postgres_stores_small_frames_by_insert_and_large_by_copy_alike(
    pg_url: str, n: int
) -> None:
    """Fewer than COPY_FROM measurements go in one INSERT, more by COPY: the same rows."""
    rows = measurement_rows(n)
    with open_store(pg_url) as store:
        assert store.store_frame(frame_row(1, n=n), rows)
        stored = store.fetch_measurements("edge-1")
    assert [m["rec"] for m in stored] == list(range(n))
    assert [m["kpis"] for m in stored] == [[-90.5 + i, None, 12.0] for i in range(n)]
    assert [m["codes"] for m in stored] == [[3, 3 + i] for i in range(n)]
    assert [m["prediction"] for m in stored] == [r.prediction for r in rows]


def test_postgres_an_edge_transaction_rolls_back_as_a_whole(pg_url: str) -> None:
    """Inside an edge transaction the frame has no savepoint of its own: when the decode
    fails after it, the frame and the chain tip written with it are undone together, and
    inside a batch only that edge transaction is."""
    tip = ChainTip(1, 1, "ab" * 32, "{}", 1_000, 1_000)
    with open_store(pg_url) as store:
        with store.batch():
            with pytest.raises(RuntimeError), store.edge_transaction("edge-1"):
                assert store.store_frame(frame_row(1), measurement_rows())
                store.set_chain_tip("edge-1", tip)
                raise RuntimeError("the decode failed after the writes")
            with store.edge_transaction("edge-2"):
                assert store.store_frame(frame_row(1, edge="edge-2"), measurement_rows())
                store.set_chain_tip("edge-2", tip)
        assert store.chain_tip("edge-1", 1, 1) is None and store.count_measurements("edge-1") == 0
        assert store.chain_tip("edge-2", 1, 1) == tip and store.count_measurements("edge-2") == 2
        with store.edge_transaction("edge-2"):  # the next frame's tip replaces it
            store.set_chain_tip("edge-2", replace(tip, seq=2))
        assert store.chain_tip("edge-2", 1, 1) is None
        assert store.chain_tip("edge-2", 1, 2) == replace(tip, seq=2)


def test_postgres_edge_births_and_deaths(pg_url: str) -> None:
    with open_store(pg_url) as store:
        birth = {"online": True, "edge": "pg-edge", "bdSeq": 3, "L": 4}
        assert store.set_edge_state("grp", "pg-edge", True, 3, "ef" * 32, birth, 100)
        assert store.set_edge_state("grp", "pg-edge", False, 2, updated_ms=150) is False
        assert store.set_edge_state("grp", "pg-edge", False, 3, updated_ms=200)
        (edge,) = store.edges()
    assert edge["online"] is False and edge["bd_seq"] == 3 and edge["updated_ms"] == 200
    assert edge["birth"] == birth and edge["model_sha256"] == "ef" * 32


def test_postgres_parks_frames_byte_for_byte_and_forgets_them(pg_url: str) -> None:
    ref = bytes.fromhex("00112233aabbccdd")
    payload = bytes(range(256)) * 3  # every byte value: a bytea round trip
    with open_store(pg_url) as store:
        store.park_frame("pg-edge", ref, "sparsetel/v1/g/DATA/pg-edge", payload, 5)
        store.park_frame("pg-edge", ref, "sparsetel/v1/g/DATA/pg-edge", b"second", 6)
        assert store.count_parked() == {ref.hex(): 2}
        parked = store.parked(ref)
        assert [(t, p, ms) for _, t, p, ms in parked] == [
            ("sparsetel/v1/g/DATA/pg-edge", payload, 5),
            ("sparsetel/v1/g/DATA/pg-edge", b"second", 6),
        ]
        store.drop_parked([parked[0][0]])
        assert [p for _, _, p, _ in store.parked(ref)] == [b"second"]
        assert store.parked(bytes(8)) == []


def test_postgres_batches_commit_together_and_fail_alone(pg_url: str) -> None:
    with open_store(pg_url) as store:
        assert store.store_frame(frame_row(0), measurement_rows())
        assert batch_with_a_failing_write(store) == [True, False, False, True]
        assert store.count_frames() == 3 and store.sequence_gaps() == {"edge-1": 1}


def test_postgres_reads_a_kpi_by_name_and_time_range(pg_url: str) -> None:
    with open_store(pg_url) as store:
        check_kpi_series(store)
        store._execute("SET enable_seqscan = off")  # a tiny table would be scanned anyway
        plan = store._query(
            "EXPLAIN SELECT t_ms FROM measurements WHERE edge = 'edge-1' AND t_ms >= 0 "
            "AND t_ms < 10"
        )
    assert "measurements_edge_t" in " ".join(row[0] for row in plan), plan


def test_postgres_sums_live_accuracy_per_bucket(pg_url: str) -> None:
    with open_store(pg_url) as store:
        check_live_accuracy(store)


def test_postgres_counts_code_usage_and_pools_accuracy_over_the_fleet(pg_url: str) -> None:
    with open_store(pg_url) as store:
        check_code_usage(store)  # frames 0 and 1 stored, no audits
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
        assert ingest.handle(TOPIC, audited_frame(2, 6, {7: (1.0, 2.0, 3.0)})) == "stored"
        (pooled,) = store.accuracy(by_edge=False)
        (edge,) = store.accuracy()
    assert pooled["edges"] == 1 and pooled["edge"] is None and pooled["audits"] == 1
    assert pooled["nmse"] == pytest.approx(edge["nmse"])


def test_postgres_keeps_digests_and_held_frames_and_counts_them(pg_url: str) -> None:
    with open_store(pg_url) as store:
        check_digests_and_held_frames(store)


def test_postgres_frames_stored_before_the_digest_migration_have_no_digest(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_a_frame_before_digests(pg_url, ("pg-edge", 1), REF, monkeypatch)
    with open_store(pg_url) as new:
        assert new.schema_version() == len(MIGRATIONS)
        assert new.stored_digest("pg-edge", 1, 0) is None
        assert new.count_frames() == 1
