"""An edge's identity survives: a second agent with the same edge id and a new state folder
(a re-imaged device, a copy started elsewhere) has its every measurement stored, and an agent
started from another working directory keeps its bdSeq and spool.

Real Mosquitto, a real ``sparsetel serve`` writing SQLite, agents confirming by the store.
Before: a new state folder restarted bdSeq at 0, the default folder was ``.sparsetel/EDGE``
under the working directory, and the second run's frames were all dropped as duplicates of
the first's (edge, bdSeq, seq) while its agent was told they were stored.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.edge.agent import AgentStats, EdgeConfig, run_agent
from sparsetel.shared.config import BrokerConfig
from tests.processes import last_json, sparsetel, started, stop, wait_ready
from tests.quickrun import quick_exported_run

pytestmark = pytest.mark.integration

ROWS = 120  # per run: 6 frames of 20


@dataclass
class Cloud:
    group: str
    db: Path
    run: Path
    url: str
    source: Path


@pytest.fixture(scope="module")
def cloud(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """``sparsetel serve`` on a group of its own, for this module's agents."""
    run = quick_exported_run(tmp_path_factory)
    work = tmp_path_factory.mktemp("identity")
    (source,) = write_sessions(work / "sim", n_sessions=1, rows=ROWS, seed=5)
    group = f"t{uuid.uuid4().hex[:12]}"
    db = work / "cloud.db"
    argv = sparsetel(
        "serve", "--model", str(run), "--group", group, "--db", str(db),
        "--broker", broker_url, "--clean-session", "--json",
    )  # fmt: skip
    with started(argv) as serve:
        # the store is created once serve is connected and subscribed
        wait_ready(serve, db.exists, 60, "serve")
        try:
            yield Cloud(group, db, run, broker_url, source)
        finally:
            out, err = stop(serve, timeout=30)
    assert serve.returncode == 0, err[-2000:]
    assert last_json(out)["duplicates"] == 0


def _agent(cloud: Cloud, edge: str, state_dir: Path | None) -> AgentStats:
    cfg = EdgeConfig(
        group=cloud.group, edge_id=edge, model=cloud.run, source=str(cloud.source),
        state_dir=state_dir, broker=BrokerConfig(url=cloud.url), batch=20,
        confirm="store", confirm_wait_s=1.0, ack_timeout_s=30.0,
    )  # fmt: skip
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0, stats.error
    assert (stats.measurements, stats.spool_depth) == (ROWS, 0), stats.to_dict()
    return stats


def _stored(cloud: Cloud, edge: str) -> dict[str, Any]:
    with sqlite3.connect(cloud.db) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM measurements WHERE edge = ?", (edge,))
        sessions = conn.execute("SELECT DISTINCT bd_seq FROM frames WHERE edge = ?", (edge,))
        return {"rows": rows[0], "bd_seqs": sorted(b for (b,) in sessions)}


def test_a_second_agent_with_the_same_edge_id_and_a_new_state_folder_loses_nothing(
    cloud: Cloud, tmp_path: Path
) -> None:
    first = _agent(cloud, "reimaged", tmp_path / "before-reimage")
    second = _agent(cloud, "reimaged", tmp_path / "after-reimage")  # a new, empty folder
    # both agents were told every frame is stored (their spools are empty): so it must be
    assert _stored(cloud, "reimaged")["rows"] == 2 * ROWS
    assert first.bd_seq is not None and second.bd_seq is not None
    assert _stored(cloud, "reimaged")["bd_seqs"] == sorted([first.bd_seq, second.bd_seq])


def test_an_agent_started_from_another_folder_keeps_its_state(
    cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "one")
    first = _agent(cloud, "wanderer", None)
    monkeypatch.chdir(tmp_path / "two")
    second = _agent(cloud, "wanderer", None)
    assert _stored(cloud, "wanderer")["rows"] == 2 * ROWS
    assert first.bd_seq is not None
    assert second.bd_seq == (first.bd_seq + 1) % 2**32  # the same state: the next bdSeq
    assert (tmp_path / "xdg-state/sparsetel/edges/wanderer/bdseq").exists()
    assert not (tmp_path / "one" / ".sparsetel").exists()
