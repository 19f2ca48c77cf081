"""Fault test: 10,000 measurements from an edge agent into the cloud store while the broker
is restarted twice and the agent is SIGKILLed once; every measurement must be stored exactly
once.

Everything is real: Mosquitto (our own instance, with persistence, so it can be restarted),
the agent as a `sparsetel edge` process replaying a CSV at a steady rate, and the decoder
service with a persistent session storing into SQLite. Each measurement is identified by the
time in its CSV row (`--time-column`), so a lost or repeated one shows in the store.
The killed agent's successor replays its spool and resumes the CSV after the last spooled
frame; the store drops repeats by (edge, bdSeq, seq).
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.config import BrokerConfig
from tests.mosquitto import OwnBroker
from tests.processes import DEVNULL, last_json, sparsetel, started
from tests.quickrun import quick_exported_run, quick_temporal_run

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# The agent's two codecs: memoryless (version 2 frames that stand alone) and temporal
# (version 3 chained frames the cloud decodes in order from the chain state in its store).
CODECS = ("memoryless", "temporal")


def chaos_run(codec: str, factory: pytest.TempPathFactory) -> Path:
    """The exported run of `codec` that the agents and the decoder load."""
    return quick_temporal_run(factory) if codec == "temporal" else quick_exported_run(factory)


N = 10_000
RATE_HZ = 800
T0_MS = (int(time.time()) - 3600) * 1000  # recent: inside serve's window for frame times
GROUP, EDGE = "chaos", "site-1"


def _csv(path: Path, tmp: Path) -> list[int]:
    """N simulated measurements with a unique time each (column "t"); the times."""
    (session,) = write_sessions(tmp / "sim", n_sessions=1, rows=N, seed=11)
    with open(session, newline="") as src, open(path, "w", newline="") as dst:
        rows = csv.reader(src)
        out = csv.writer(dst)
        out.writerow([*next(rows), "t"])
        times = []
        for i, row in enumerate(rows):
            times.append(T0_MS + 1000 * i)
            out.writerow([*row, times[-1]])
    return times


def _agent(run: Path, source: Path, url: str, state: Path) -> list[str]:
    """The command line of the `sparsetel edge` agent replaying `source`."""
    return sparsetel(
        "edge", "--model", str(run), "--source", str(source),
        "--time-column", "t", "--rate", str(RATE_HZ), "--batch", "50", "--group", GROUP,
        "--edge-id", EDGE, "--broker", url, "--state-dir", str(state), "--json",
    )  # fmt: skip


def _wait_for_frames(db: Path, bd_seq: int, timeout_s: float = 30.0) -> None:
    """Until the store holds a frame of run `bd_seq` (the agent reached the broker)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            query = "SELECT COUNT(*) FROM frames WHERE bd_seq = ? AND historical = 0"
            if conn.execute(query, (bd_seq,)).fetchone()[0]:
                return
        time.sleep(0.1)
    pytest.fail(f"no live frame of bdSeq {bd_seq} reached the store in {timeout_s} s")


def _restart(broker: OwnBroker, down_s: float) -> None:
    broker.stop()
    time.sleep(down_s)
    broker.start()


@pytest.mark.parametrize("codec", CODECS)
def test_every_measurement_is_stored_once_through_broker_restarts_and_an_agent_kill(
    own_broker: OwnBroker, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, codec: str
) -> None:
    run = chaos_run(codec, tmp_path_factory)
    times = _csv(tmp_path / "kpis.csv", tmp_path)
    db = tmp_path / "cloud.db"
    # A fixed client id: a persistent session keeps the frames published while it is away.
    cloud = BrokerConfig(url=own_broker.url, client_id="chaos-cloud")
    service = DecoderService(ServeConfig(broker=cloud, group=GROUP, models=(run,), db=str(db)))
    service.start()
    state = tmp_path / "edge-state"
    state.mkdir()
    (state / "bdseq").write_text("0\n")  # runs 1 and 2 (a new folder would draw one at random)
    log: list[str] = []
    agent = _agent(run, tmp_path / "kpis.csv", own_broker.url, state)  # both runs
    try:
        with contextlib.ExitStack() as procs:  # the agents, killed on the way out if running
            first = procs.enter_context(started(agent, stderr=DEVNULL))
            time.sleep(2.5)
            own_broker.stop()  # restart 1: the broker goes away ...
            time.sleep(1.0)
            first.send_signal(signal.SIGKILL)  # ... and the agent dies with frames unacknowledged
            first.wait(timeout=10)
            log.append("broker down, agent SIGKILLed")
            second = procs.enter_context(started(agent, stderr=DEVNULL))  # boots offline
            time.sleep(1.0)
            own_broker.start()
            log.append("broker back")
            _wait_for_frames(db, bd_seq=2)  # the second agent is through: its live frames land
            time.sleep(1.0)
            _restart(own_broker, 1.5)  # restart 2, while the second agent streams
            log.append("broker restarted")
            out, _ = second.communicate(timeout=120)
            assert second.returncode == 0, out
            stats = last_json(out)
            store = open_store(str(db))
            deadline = time.monotonic() + 60
            while store.count_measurements(EDGE) < N and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1.0)  # anything late (a repeat) would land now
            frames = store.count_frames(EDGE)
            store.close()
            with sqlite3.connect(db) as conn:
                stored = [int(t) for (t,) in conn.execute("SELECT t_ms FROM measurements")]
    finally:
        service.stop()
    counts = Counter(stored)
    summary = {
        "events": log,
        "stored": len(stored),
        "distinct": len(counts),
        "repeated": sum(1 for c in counts.values() if c > 1),
        "missing": len(set(times) - set(counts)),
        "frames_stored": frames,
        "second_run": {
            k: stats[k]
            for k in ("resumed_at", "replayed", "measurements", "frames", "acked", "connects")
        },
    }
    print("chaos:", json.dumps(summary, default=str))
    assert summary["missing"] == 0 and summary["repeated"] == 0, summary
    assert sorted(stored) == times
    # The second run really had work left behind: unacknowledged frames, and the CSV's rest.
    assert stats["replayed"] > 0 and 0 < stats["resumed_at"] < N
    assert stats["measurements"] == N - stats["resumed_at"] and stats["connects"] == 2
