"""Temporal-codec chains on a real PostgreSQL: the per-edge chain lock between connections,
and workers sharing one edge's frames (`cloud.ingest.chains`, `Store.edge_transaction`)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.topics import data_topic
from tests.chainfleet import fleet, table_rows
from tests.frames import temporal_frames
from tests.helpers import ANY_TIME
from tests.quickrun import quick_temporal_run

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg")

TOPIC = data_topic("g1", "pg-chain")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_temporal_run(tmp_path_factory)


def test_the_chain_lock_holds_one_edge_across_connections(pg_url: str) -> None:
    with open_store(pg_url) as a, open_store(pg_url) as b, open_store(pg_url) as c:
        holding, release, b_inside = threading.Event(), threading.Event(), threading.Event()

        def hold() -> None:
            with a.edge_transaction("edge-1"):
                holding.set()
                release.wait(30)

        def wait_for_it() -> None:
            holding.wait(30)
            with b.edge_transaction("edge-1"):
                b_inside.set()

        threads = [threading.Thread(target=hold), threading.Thread(target=wait_for_it)]
        for t in threads:
            t.start()
        assert holding.wait(30)
        with c.edge_transaction("edge-2"):  # another edge's chains are not held up
            pass
        assert not b_inside.wait(0.5)  # edge-1's lock is A's until its transaction ends
        release.set()
        assert b_inside.wait(30)
        for t in threads:
            t.join(30)


def test_workers_on_postgres_decode_one_edges_chains_in_order(run: Path, pg_url: str) -> None:
    """Two workers, each with its own connection and batches, take one edge's frames out of
    order and at the same time: every frame is stored once, decoded as the edge coded it."""
    frames, expected = temporal_frames(run, 40, per_frame=2, key_interval=40)
    model = TemporalModel.load(run)
    stores = [open_store(pg_url) for _ in range(2)]
    ingests = [
        FrameIngest(ModelRegistry([model]), s, ServiceStats(), track_gaps=False, limits=ANY_TIME)
        for s in stores
    ]
    order = list(range(len(frames)))
    rng = np.random.default_rng(1)
    rng.shuffle(order)
    outcomes: list[list[str]] = [[], []]

    def work(i: int) -> None:
        mine = order[i::2]
        for at in range(0, len(mine), 5):  # batches of five, one transaction each
            batch = [(TOPIC, frames[s], 0) for s in mine[at : at + 5]]
            now = [(t, p, int(1e3 * 1_700_000_000)) for t, p, _ in batch]
            outcomes[i] += ingests[i].handle_batch(now)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(outcomes[0] + outcomes[1]) <= {"stored", "pending"}
    with open_store(pg_url) as store:
        assert store.pending_per_edge() == {}
        assert store.count_frames() == len(frames)
        rows = store.fetch_measurements("pg-chain")
        got = np.array([[np.nan if v is None else v for v in r["kpis"]] for r in rows])
        assert np.array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-7)
    for s in stores:
        s.close()


def test_batches_on_postgres_store_what_one_message_at_a_time_stores_on_sqlite(
    run: Path, pg_url: str, tmp_path: Path
) -> None:
    """The chained frames of a batch decoded together (`ChainBatch`, inside the batch's one
    transaction on PostgreSQL) against the one-at-a-time path: the same outcomes and rows."""
    messages = fleet(run)
    model = TemporalModel.load(run)
    outcomes = []
    for url, size in ((pg_url, 7), (tmp_path / "slow.db", 0)):
        with open_store(url) as store:
            ingest = FrameIngest(ModelRegistry([model]), store, ServiceStats(), limits=ANY_TIME)
            if size:
                got = []
                for at in range(0, len(messages), size):
                    got += ingest.handle_batch(messages[at : at + size])
            else:
                got = [ingest.handle(t, p, ms) for t, p, ms in messages]
            outcomes.append(got)
    assert outcomes[0] == outcomes[1]
    assert table_rows(pg_url) == table_rows(tmp_path / "slow.db")
