"""serve under bursts and restarts, on real brokers: nothing acknowledged is lost.

- A burst: several `sparsetel edge` agents publish thousands of one-measurement frames each
  while serve is away; the broker hands them all at once to a serve with a tiny queue, which
  must make the broker wait (TCP back-pressure) instead of acknowledging and dropping what
  does not fit. The agents confirm by the broker's ack here, so whatever serve acknowledged
  and dropped would be lost for good.
- The suite's stock Mosquitto keeps at most 1000 messages for a subscriber that is away and
  drops the rest silently: with default edge settings (confirm by the store) the edges send
  those again and every measurement is stored.
- serve SIGKILLed for 5 s and started again with the README's flags (no client id): its
  derived client id finds its persistent session, where the broker kept the frames.
- A broker that cannot write its persistence folder forgets every session on a restart:
  with default edge settings nothing is lost (the edges send again what has no receipt).
- The shipped dev.conf runs on the installed Mosquitto and refuses a packet over its
  `max_packet_size`; a frame-sized one passes.

Each measurement carries a unique time (`--time-column`), so what is lost or stored twice
shows as (edge, time) pairs in the store.
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import SparsetelError
from tests.helpers import free_port
from tests.mosquitto import OwnBroker, shipped_limits
from tests.processes import end_process, last_json, sparsetel, stop
from tests.quickrun import quick_exported_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path, rows: int, seed: int = 3) -> list[int]:
    """`rows` simulated measurements, each with a unique recent time (column "t")."""
    (session,) = write_sessions(
        path.parent / f"sim-{path.stem}", n_sessions=1, rows=rows, seed=seed
    )
    t0 = (int(time.time()) - 3 * 3600) * 1000
    with open(session, newline="") as src, open(path, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        writer.writerow([*next(reader), "t"])
        times = [t0 + 1000 * i for i in range(rows)]
        for row, t in zip(reader, times, strict=True):
            writer.writerow([*row, t])
    return times


class Agents:
    """`sparsetel edge` processes, their logs in `tmp`; `finish()` waits for their JSON."""

    def __init__(self, tmp: Path, run: Path, source: Path, url: str, group: str) -> None:
        self.tmp, self.run, self.source, self.url, self.group = tmp, run, source, url, group
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self._logs: list[IO[str]] = []

    def start(self, edge: str, *flags: str) -> None:
        log = open(self.tmp / f"{edge}.log", "w")  # noqa: SIM115 (closed in close())
        self._logs.append(log)
        argv = sparsetel(
            "edge", "--model", str(self.run), "--source", str(self.source), "--time-column", "t",
            "--group", self.group, "--edge-id", edge, "--broker", self.url,
            "--state-dir", str(self.state(edge)), "--json", *flags,
        )  # fmt: skip
        self.procs[edge] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)

    def state(self, edge: str) -> Path:
        return self.tmp / f"state-{edge}"

    def spooled(self, edge: str, unsent: bool = False) -> int:
        """Frames in the edge's spool (`unsent`: of those, the ones the broker has not
        acknowledged yet)."""
        where = " WHERE sent_ms IS NULL" if unsent else ""
        try:
            with sqlite3.connect(self.state(edge) / "spool.db", timeout=5) as db:
                return int(db.execute(f"SELECT COUNT(*) FROM frames{where}").fetchone()[0])
        except sqlite3.Error:
            return 0  # not created yet

    def finish(self, timeout: float) -> dict[str, dict[str, Any]]:
        out = {}
        for edge, proc in self.procs.items():
            stdout, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, (edge, stdout, (self.tmp / f"{edge}.log").read_text())
            out[edge] = last_json(stdout)
        return out

    def close(self) -> None:
        for proc in self.procs.values():
            end_process(proc)
        for log in self._logs:
            log.close()


@pytest.fixture
def agents_in(tmp_path: Path) -> Iterator[list[Agents]]:
    made: list[Agents] = []
    yield made
    for agents in made:
        agents.close()


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)


def _stored(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return [(str(e), int(t)) for e, t in conn.execute("SELECT edge, t_ms FROM measurements")]


def _wait_for_count(db: Path, n: int, timeout: float) -> None:
    """Until `n` measurements are stored; the failure says how many were."""
    deadline = time.monotonic() + timeout
    while (count := _count(db)) < n:
        if time.monotonic() > deadline:
            pytest.fail(f"{count} of {n} measurements stored after {timeout} s")
        time.sleep(0.1)


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
    except sqlite3.Error:
        return 0


def _report(name: str, db: Path, expected: dict[str, list[int]], **more: Any) -> dict[str, Any]:
    rows = _stored(db)
    per_edge = {edge: sum(1 for e, _ in rows if e == edge) for edge in expected}
    missing = sum(
        len(set(times) - {t for e, t in rows if e == edge}) for edge, times in expected.items()
    )
    report = {
        "stored": len(rows),
        "distinct": len(set(rows)),
        "missing": missing,
        "per_edge": per_edge,
        **more,
    }
    print(f"{name}:", json.dumps(report))
    return report


# -- a burst through a tiny queue ------------------------------------------------------------

BURST_AGENTS, BURST_ROWS, BURST_QUEUE = 4, 2500, 8


def test_a_burst_of_agent_backlogs_through_a_tiny_queue_is_stored_exactly_once(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, agents_in: list[Agents], group: str
) -> None:
    run = quick_exported_run(tmp_path_factory)
    times = _csv(tmp_path / "kpis.csv", BURST_ROWS)
    broker = OwnBroker(tmp_path, shipped_limits())
    broker.start()
    db = tmp_path / "cloud.db"
    # A fixed client id, so that the old code (persistent only with one) keeps the backlog
    # too: what this test shows is the queue, not the session.
    cfg = ServeConfig(
        broker=BrokerConfig(url=broker.url, client_id=f"burst-{group}"),
        group=group, models=(run,), db=str(db), queue_size=BURST_QUEUE,
    )  # fmt: skip
    agents = Agents(tmp_path, run, tmp_path / "kpis.csv", broker.url, group)
    agents_in.append(agents)
    edges = [f"site-{i}" for i in range(BURST_AGENTS)]
    try:
        first = DecoderService(cfg)
        first.start()
        first.stop()  # away: its session keeps what the agents publish
        for edge in edges:  # one measurement per frame: thousands of frames each
            agents.start(edge, "--batch", "1", "--confirm", "broker", "--ack-timeout", "60")
        agents.finish(timeout=120)  # every frame acknowledged by the broker: the burst waits
        service = DecoderService(cfg)
        service.start()
        try:
            _wait_for_count(db, BURST_AGENTS * BURST_ROWS, 60)
            time.sleep(0.5)  # anything stored twice would land now
        finally:
            service.stop()
        stats = service.stats()
    finally:
        broker.stop()
    report = _report(
        "burst", db, dict.fromkeys(edges, times),
        queue_waits=stats["queue_waits"], queue_full=stats["queue_full"], acks=stats["acks"],
    )  # fmt: skip
    assert report["missing"] == 0 and report["distinct"] == report["stored"], report
    assert report["stored"] == BURST_AGENTS * BURST_ROWS
    assert stats["queue_waits"] > 10, "the queue should have been full many times"


# -- the suite's stock Mosquitto drops beyond 1000 queued messages -----------------------------

STOCK_AGENTS, STOCK_ROWS = 3, 1200


def test_a_burst_the_stock_broker_drops_in_part_is_sent_again_and_stored_once(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    agents_in: list[Agents],
    broker_url: str,
    group: str,
) -> None:
    run = quick_exported_run(tmp_path_factory)
    times = _csv(tmp_path / "kpis.csv", STOCK_ROWS)
    db = tmp_path / "cloud.db"
    cfg = ServeConfig(broker=BrokerConfig(url=broker_url), group=group, models=(run,), db=str(db))
    agents = Agents(tmp_path, run, tmp_path / "kpis.csv", broker_url, group)
    agents_in.append(agents)
    edges = [f"site-{i}" for i in range(STOCK_AGENTS)]
    first = DecoderService(cfg)
    first.start()
    first.stop()  # away: the broker keeps 1000 of what comes for it, and drops the rest
    for edge in edges:  # default settings: confirm by the store
        agents.start(edge, "--batch", "1", "--confirm-wait", "2", "--ack-timeout", "90")
    _wait_until(
        lambda: all(
            agents.spooled(e) == STOCK_ROWS and agents.spooled(e, unsent=True) == 0 for e in edges
        ),
        60,
        "every frame published and acknowledged by the broker",
    )
    service = DecoderService(cfg)
    service.start()
    try:
        results = agents.finish(timeout=150)  # each ends once every frame has its receipt
        _wait_for_count(db, STOCK_AGENTS * STOCK_ROWS, 30)
    finally:
        service.stop()
    report = _report(
        "stock broker", db, dict.fromkeys(edges, times),
        resent=[r["resent"] for r in results.values()],
        spool_left=[r["spool_depth"] for r in results.values()],
    )  # fmt: skip
    assert report["missing"] == 0 and report["distinct"] == report["stored"], report
    assert report["stored"] == STOCK_AGENTS * STOCK_ROWS
    assert sum(report["resent"]) > 0, "the broker should have dropped part of the burst"
    assert report["spool_left"] == [0] * STOCK_AGENTS


# -- serve killed for 5 s, started again as the README shows ---------------------------------

KILL_ROWS, KILL_RATE = 3000, 300


class Serve:
    """``sparsetel serve`` as the README runs it: --model, --db, --broker, nothing more."""

    def __init__(self, tmp: Path, run: Path, db: Path, url: str) -> None:
        self.argv = sparsetel(
            "serve", "--model", str(run), "--db", str(db), "--broker", url, "--json"
        )
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log, text=True)
        self.starts += 1
        _wait_until(
            lambda: self.log.read_text().count("subscribed to") >= self.starts,
            60,
            f"serve start {self.starts} subscribed",
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        out, _ = stop(self.proc, timeout=60)
        return last_json(out)

    def close(self) -> None:
        if self.proc is not None:
            end_process(self.proc)


def test_serve_killed_for_five_seconds_and_restarted_without_a_client_id_loses_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, agents_in: list[Agents], group: str
) -> None:
    run = quick_exported_run(tmp_path_factory)
    times = _csv(tmp_path / "kpis.csv", KILL_ROWS)
    broker = OwnBroker(tmp_path, shipped_limits())
    broker.start()
    db = tmp_path / "cloud.db"
    serve = Serve(tmp_path, run, db, broker.url)
    agents = Agents(tmp_path, run, tmp_path / "kpis.csv", broker.url, group)
    agents_in.append(agents)
    try:
        serve.start()
        # The broker's ack is final here: only serve's kept session can save the frames.
        agents.start("site-1", "--rate", str(KILL_RATE), "--batch", "10", "--confirm", "broker")
        _wait_until(lambda: _count(db) > 0, 60, "the first frames stored")
        serve.kill()
        time.sleep(5.0)  # the outage being tested: frames keep coming meanwhile
        serve.start()
        results = agents.finish(timeout=120)
        _wait_for_count(db, KILL_ROWS, 60)
        stats = serve.stop()
    finally:
        serve.close()
        broker.stop()
    report = _report("serve killed 5 s", db, {"site-1": times}, acked=results["site-1"]["acked"])
    assert report["missing"] == 0 and report["distinct"] == report["stored"] == KILL_ROWS, report
    assert stats["connects"] == 1  # the second run's own count: it came back to its session


# -- a broker that cannot keep its sessions -------------------------------------------------


def test_a_broker_that_cannot_write_its_persistence_loses_nothing_with_default_edges(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, agents_in: list[Agents], group: str
) -> None:
    run = quick_exported_run(tmp_path_factory)
    times = _csv(tmp_path / "kpis.csv", KILL_ROWS)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)  # nobody writes here: not we, not the "mosquitto" user
    broker = OwnBroker(tmp_path, shipped_limits(), persistence_location=locked, run_as="mosquitto")
    broker.start()
    db = tmp_path / "cloud.db"
    cfg = ServeConfig(broker=BrokerConfig(url=broker.url), group=group, models=(run,), db=str(db))
    service = DecoderService(cfg)
    agents = Agents(tmp_path, run, tmp_path / "kpis.csv", broker.url, group)
    agents_in.append(agents)
    try:
        service.start()
        agents.start("site-1", "--rate", str(KILL_RATE), "--batch", "10", "--confirm-wait", "2",
                     "--ack-timeout", "90")  # fmt: skip
        _wait_until(lambda: _count(db) > 0, 60, "the first frames stored")
        broker.stop()  # it cannot save: every session and queued frame is gone
        time.sleep(1.0)
        broker.start()
        results = agents.finish(timeout=150)
        _wait_for_count(db, KILL_ROWS, 30)
    finally:
        service.stop()
        broker.stop()
    assert "Error saving in-memory database" in broker.log.read_text()
    report = _report(
        "unwritable persistence", db, {"site-1": times}, resent=results["site-1"]["resent"]
    )
    assert report["missing"] == 0 and report["distinct"] == report["stored"] == KILL_ROWS, report


# -- the shipped dev.conf on the installed Mosquitto ---------------------------------------


def test_the_shipped_dev_conf_runs_and_refuses_packets_over_its_limit(tmp_path: Path) -> None:
    port = free_port()
    dev = (REPO / "deploy" / "mosquitto" / "dev.conf").read_text()
    conf = tmp_path / "dev.conf"
    conf.write_text(
        dev.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1").replace(
            "persistence_location /var/tmp/", f"persistence_location {tmp_path}/"
        )
        + f"user {getpass.getuser()}\n"
    )
    broker = OwnBroker(tmp_path, conf=conf, port=port)
    broker.start()
    try:
        small = _publish_outcome(port, b"\x00" * 262_144)
        large = _publish_outcome(port, b"\x00" * (16 * 2**20 + 1))
    finally:
        broker.stop()
    log = broker.log.read_text()
    assert "Error" not in log.split("running", 1)[0], log  # every option was accepted
    assert small == "acked" and large == "disconnected", (small, large)


def _publish_outcome(port: int, payload: bytes) -> str:
    """What the broker does with one QoS 1 publish of `payload`: "acked" or "disconnected"."""
    outcome: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{len(payload)}")

    def on_publish(*_: Any) -> None:
        outcome.append("acked")
        done.set()

    def on_disconnect(*_: Any) -> None:
        outcome.append("disconnected")
        done.set()

    client.on_publish, client.on_disconnect = on_publish, on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish("sparsetel/v1/g/DATA/e", payload, qos=1)
        assert done.wait(20), "no answer from the broker"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]


# -- two services with one derived client id ------------------------------------------------


def test_two_serves_sharing_one_derived_client_id_log_the_takeover(
    tmp_path: Path, broker_url: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ServeConfig(broker=BrokerConfig(url=broker_url), group=group, db=str(tmp_path / "t.db"))
    first, second = DecoderService(cfg), DecoderService(cfg)
    first.start()
    try:
        with contextlib.suppress(SparsetelError):  # it may lose its session while starting
            second.start(timeout=5)
        _wait_until(
            lambda: any("took this session over" in r.message for r in caplog.records),
            30,
            "a takeover reported",
        )
    finally:
        first.stop()
        second.stop()
    lines = [r for r in caplog.records if r.levelname == "ERROR" and "took this" in r.message]
    assert f"sparsetel-serve-{group}" in lines[0].message and "client_id" in lines[0].message
    assert len(lines) <= 2  # once per service and minute, not once per reconnect
