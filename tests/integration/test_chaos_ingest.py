"""Fault test for the cloud side: 100,000 measurements from 4 agents into `serve --workers 2`
while one decoder worker is SIGKILLed and then the broker restarted; every measurement must
be stored exactly once.

The broker restart is the hard part. Mosquitto 2.0.11 does not restore shared subscriptions
from its persistence, so frames published after the restart and before the workers
subscribe again match no subscriber, and the broker acknowledges them to the edges all the
same: with the broker's PUBACK as the edges' only acknowledgement this test lost 19,200 of
the 100,000 (4,800 per edge, about 3 s of traffic). The agents here confirm by the store
(``--confirm store``): a frame leaves an edge's spool only when the decoder's receipt says
the database has it, and one without a receipt in time is published again.

Everything is real and in processes of its own: Mosquitto (our own, with persistence and a
deep queue, as `deploy/mosquitto` configures it), four `sparsetel edge` agents replaying a
CSV at a steady rate, and `sparsetel serve --workers 2` sharing the stream through MQTT 5.
Each measurement is identified by its edge and the time in its CSV row (`--time-column`).
The killed worker is started again by its parent and gets back, through its persistent
session, the frames it had taken but not acknowledged; the store drops repeats by key.
Set SPARSETEL_CHAOS_CONFIRM=broker to see the loss without receipts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from sparsetel.cloud.data.simulator import write_sessions
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


AGENTS, PER_AGENT, RATE_HZ = 4, 25_000, 1_600
T0_MS = (int(time.time()) - 3600) * 1000  # recent: inside serve's window for frame times
GROUP = "chaos-cloud"
CONFIRM = os.environ.get("SPARSETEL_CHAOS_CONFIRM", "store")


def _csv(path: Path, tmp: Path) -> None:
    (session,) = write_sessions(tmp / "sim", n_sessions=1, rows=PER_AGENT, seed=5)
    with open(session, newline="") as src, open(path, "w", newline="") as dst:
        rows, out = csv.reader(src), csv.writer(dst)
        out.writerow([*next(rows), "t"])
        for i, row in enumerate(rows):
            out.writerow([*row, T0_MS + 1000 * i])


def _workers_of(parent: int) -> list[int]:
    """The worker processes `serve --workers` spawned (not multiprocessing's tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _thaw_workers(parent: int) -> None:
    for pid in _workers_of(parent):
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("codec", CODECS)
def test_every_measurement_of_four_agents_is_stored_once_through_a_worker_kill_and_broker_restart(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, codec: str
) -> None:
    run = chaos_run(codec, tmp_path_factory)
    source = tmp_path / "kpis.csv"
    _csv(source, tmp_path)
    broker = OwnBroker(tmp_path, "max_queued_messages 100000\nmax_inflight_messages 100\n")
    broker.start()
    config = tmp_path / "serve.toml"
    config.write_text(f'[broker]\nurl = "{broker.url}"\nclient_id = "chaos-dec"\nprotocol = "5"\n')
    db = tmp_path / "cloud.db"
    agents: list[subprocess.Popen[str]] = []
    agent_stats = []
    events = []
    with contextlib.ExitStack() as cleanup:  # undone in reverse: agents, workers, serve, broker
        cleanup.callback(broker.stop)
        serve = cleanup.enter_context(started(sparsetel(
            "serve", "--model", str(run), "--db", str(db),
            "--group", GROUP, "--config", str(config), "--workers", "2",
            "--stop-after", str(AGENTS * PER_AGENT), "--idle-timeout", "120", "--json",
        ), stderr=DEVNULL))  # fmt: skip
        cleanup.callback(_thaw_workers, serve.pid)  # a frozen worker could not end
        deadline = time.monotonic() + 60
        while len(_workers_of(serve.pid)) < 2 or not db.exists():
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        time.sleep(2.0)  # both subscribed: their sessions exist from here on
        for i in range(AGENTS):
            agents.append(cleanup.enter_context(started(sparsetel(
                "edge", "--model", str(run),
                "--source", str(source), "--time-column", "t", "--rate", str(RATE_HZ),
                "--group", GROUP, "--edge-id", f"site-{i}", "--broker", broker.url,
                "--state-dir", str(tmp_path / f"edge-{i}"), "--json", "--confirm", CONFIRM,
                "--confirm-wait", "3", "--ack-timeout", "90",
            ), stderr=DEVNULL)))  # fmt: skip
        time.sleep(4.0)
        victim = _workers_of(serve.pid)[0]
        os.kill(victim, signal.SIGKILL)
        events.append("worker SIGKILLed")
        time.sleep(3.0)
        # The decoders come back after the edges (a slower cloud host): frozen across the
        # restart, they resubscribe only once the edges have published for a while.
        frozen = _workers_of(serve.pid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        broker.stop()
        events.append("broker stopped")
        time.sleep(1.0)
        broker.start()
        events.append("broker restarted")
        time.sleep(3.0)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        events.append(f"{len(frozen)} workers resumed 3 s later")
        for agent in agents:
            agent_stats.append(json.loads(agent.communicate(timeout=180)[0]))
            assert agent.returncode == 0
        out, _ = serve.communicate(timeout=180)
    summary = last_json(out)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT edge, t_ms FROM measurements").fetchall()
    per_edge = {f"site-{i}": 0 for i in range(AGENTS)}
    for edge, _ in rows:
        per_edge[edge] += 1
    report = {
        "events": events,
        "stored": len(rows),
        "distinct": len(set(rows)),
        "per_edge": per_edge,
        "restarts": summary.get("restarts"),
        "duplicates": summary.get("duplicates"),
        "workers_frames": [w.get("frames_ok") for w in summary.get("workers", [])],
        "agents_resent": [a["resent"] for a in agent_stats],
        "agents_spool_left": [a["spool_depth"] for a in agent_stats],
    }
    print("chaos-ingest:", json.dumps(report))
    assert report["distinct"] == report["stored"] == AGENTS * PER_AGENT, report
    assert set(per_edge.values()) == {PER_AGENT}
    expected = {T0_MS + 1000 * i for i in range(PER_AGENT)}
    assert all({t for e, t in rows if e == edge} == expected for edge in per_edge)
    assert report["restarts"] >= 1
