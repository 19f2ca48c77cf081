"""Hostile input against the cloud's read side: malformed births and heartbeats sent on the
real broker to a real decoder service, and idle or slow HTTP clients against a real
``sparsetel monitor`` on a real SQLite store. Whatever they send, the fleet stays visible:
``sparsetel status`` answers, and the monitor's ``/``, ``/api/dashboard`` and ``/metrics``
answer 200, each scrape within a second."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from sparsetel.cli import main
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.monitor.server import monitor_app
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.cloud.webserver import WebServer
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.health import beat_payload
from sparsetel.shared.topics import health_topic, state_topic
from tests.frames import TOPIC, FakeCodec, data_frame
from tests.helpers import ANY_TIME, free_port, wait_until
from tests.mqttclients import Publisher
from tests.processes import DEVNULL, sparsetel, started, wait_ready

pytestmark = pytest.mark.integration

SCRAPE_S = 1.0  # a Prometheus scrape must be answered within this
START_S = 30.0


def _get(url: str, timeout: float = SCRAPE_S) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def _timed_scrape(base: str) -> tuple[float, str]:
    started = time.monotonic()
    status, body = _get(f"{base}/metrics")
    assert status == 200
    return time.monotonic() - started, body.decode()


def _fleet_db(path: Path, frames: int = 3) -> Path:
    with open_store(path) as store:
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
        for seq in range(frames):
            assert ingest.handle(TOPIC, data_frame(seq)) == "stored"
    return path


@pytest.fixture(scope="module")
def monitor_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fleet_db(tmp_path_factory.mktemp("monitor") / "fleet.db")


@pytest.fixture(scope="module")
def monitor(monitor_db: Path) -> Iterator[str]:
    """A real `sparsetel monitor` on a real SQLite store of one edge (`monitor_db`), shared by
    this module's tests; its base URL."""
    port = free_port()
    argv = sparsetel("monitor", "--db", str(monitor_db), "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            _get(f"{base}/metrics", timeout=5)
        except OSError:
            return False
        return True

    # SIGTERM at the end, and at most 10 s to go
    with started(argv, stdout=None, stderr=DEVNULL, end=signal.SIGTERM, end_timeout=10) as proc:
        wait_ready(proc, answers, START_S, "monitor")
        yield base


def _idle_clients(base: str, n: int, stack: ExitStack) -> list[socket.socket]:
    """`n` connections that each send half a request and then hold it."""
    host, port = base.removeprefix("http://").split(":")
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection((host, int(port)), timeout=5))
        s.sendall(b"GET / HTTP/1.1\r\nHost: monitor\r\n")  # no blank line: never complete
        out.append(s)
    return out


def test_a_client_holding_a_half_sent_request_does_not_stop_metrics(monitor: str) -> None:
    with ExitStack() as stack:
        _idle_clients(monitor, 1, stack)
        for _ in range(3):
            elapsed, _ = _timed_scrape(monitor)
            assert elapsed < SCRAPE_S


def test_five_hundred_idle_clients_do_not_stop_metrics(monitor: str) -> None:
    with ExitStack() as stack:
        _idle_clients(monitor, 500, stack)
        times = [_timed_scrape(monitor)[0] for _ in range(5)]
        status, page = _get(f"{monitor}/", timeout=5)
    assert max(times) < SCRAPE_S, times
    assert status == 200 and b"<table id='fleet'>" in page


def test_a_client_that_never_reads_its_page_does_not_stop_metrics(monitor: str) -> None:
    with ExitStack() as stack:
        (slow,) = _idle_clients(monitor, 1, stack)
        slow.sendall(b"\r\n")  # the request is complete; its answer is never read
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        for _ in range(3):
            elapsed, _ = _timed_scrape(monitor)
            assert elapsed < SCRAPE_S


def test_metrics_answer_while_the_decoder_writes(monitor_db: Path, monitor: str) -> None:
    db = monitor_db
    done = threading.Event()
    stored: list[str] = []

    def write() -> None:
        with open_store(db) as store:
            ingest = FrameIngest(
                ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME
            )
            seq = 3
            while not done.is_set() and seq < 2000:
                stored.append(ingest.handle(TOPIC, data_frame(seq)))
                seq += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        times = [_timed_scrape(monitor)[0] for _ in range(10)]
    finally:
        done.set()
        writer.join(timeout=30)
    assert max(times) < SCRAPE_S, times
    assert stored and set(stored) == {"stored"}
    _, body = _timed_scrape(monitor)
    total = [
        line for line in body.splitlines() if line.startswith("sparsetel_edge_measurements_total")
    ]
    assert total and float(total[0].split()[-1]) == 2 * (3 + len(stored))


def test_at_the_connection_cap_a_scrape_waits_for_idle_clients_to_time_out(
    tmp_path: Path,
) -> None:
    """Beyond the cap, connections wait in the listen backlog; idle ones are closed after
    the channel timeout, and the scrape queued behind them is answered then."""
    with ExitStack() as stack:
        store = stack.enter_context(open_store(_fleet_db(tmp_path / "cap.db")))
        server = WebServer(monitor_app(store), "127.0.0.1", 0, connection_limit=20,
                           channel_timeout_s=1.0)  # fmt: skip
        server.start()
        stack.callback(server.stop)
        base = f"http://127.0.0.1:{server.port}"
        idle = _idle_clients(base, 25, stack)
        started = time.monotonic()
        status, _ = _get(f"{base}/metrics", timeout=10)
        waited = time.monotonic() - started
        idle[0].settimeout(5)
        closed = idle[0].recv(1024)
    assert status == 200 and 0.5 < waited < 5, waited
    assert closed == b""  # the server hung up on the idle client


# -- births and heartbeats on the real broker ---------------------------------------------


def _good_birth(group: str, edge: str) -> bytes:
    state = state_from_manifest(
        FakeCodec().manifest, edge=edge, group=group, bd_seq=0, agent_version="it",
        runtime_version="none", timestamp_ms=int(time.time() * 1000),
    )  # fmt: skip
    return birth_payload(state)


def _bad_control_messages(group: str) -> list[tuple[str, bytes]]:
    """The malformed heartbeats and births of issue 15, and a few more."""
    a, beat = health_topic(group, "edge-a"), {"edge": "edge-a", "group": group}
    birth = json.loads(_good_birth(group, "edge-b"))
    return [
        (health_topic(group, "x"), b'{"edge":"x","rejects":[1,2,3]}'),
        (a, json.dumps({**beat, "rejects": [1, 2, 3]}).encode()),
        (a, json.dumps({**beat, "spool_depth": "abc"}).encode()),
        (a, json.dumps(beat).encode()[:-1] + b',"spool_depth":1e400}'),
        (a, b'{"a":"x"}'),
        (a, b"{}"),
        (state_topic(group, "edge-b"), b"{}"),
        (state_topic(group, "edge-b"), json.dumps({**birth, "pad": "x" * 5_000_000}).encode()),
        (state_topic(group, "edge-b"), json.dumps({**birth, "agent_version": "v" * 65}).encode()),
    ]


def test_malformed_births_and_heartbeats_are_rejected_and_the_fleet_still_shows(
    broker_url: str,
    publisher: Publisher,
    group: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "fleet.db"
    cfg = ServeConfig(broker=BrokerConfig(url=broker_url), group=group, db=str(db))
    service = DecoderService(cfg, ModelRegistry([FakeCodec()]))
    service.start(timeout=15)
    good = beat_payload({"edge": "edge-a", "group": group, "spool_depth": 2, "rejects": {"nan": 1}})
    bad = _bad_control_messages(group)
    try:
        publisher.send(state_topic(group, "edge-a"), _good_birth(group, "edge-a"), retain=True)
        publisher.send(health_topic(group, "edge-a"), good)
        for topic, payload in bad:
            publisher.send(topic, payload)
        assert wait_until(lambda: sum(service.stats()["rejects"].values()) == len(bad), 30.0)
        assert wait_until(lambda: service.stats()["dead_letters"] == len(bad), 30.0)
        stats = service.stats()
    finally:
        service.stop()
        publisher.send(state_topic(group, "edge-a"), b"", retain=True)  # no retained birth left
    rejects = dict(stats["rejects"])
    big = rejects.pop("too_large", 0)  # the 5 MB birth, if the inbox refuses it first
    assert rejects == {"health_invalid": 6, "state": 3 - big}
    assert (stats["births"], stats["heartbeats"]) == (1, 1)
    with open_store(db) as store:
        assert [e["edge"] for e in store.edges()] == ["edge-a"]
        assert store.health()["edge-a"]["body"] == json.loads(good)
        answers = _monitor_answers(store)
    assert answers == {"/": 200, "/api/dashboard": 200, "/metrics": 200}
    assert main(["status", "--db", str(db), "--json"]) == 0
    (edge,) = json.loads(capsys.readouterr().out)["edges"]
    assert (edge["edge"], edge["spool_depth"], edge["edge_rejects"]) == ("edge-a", 2, 1)


def _monitor_answers(store: Store) -> dict[str, int]:
    server = WebServer(monitor_app(store), "127.0.0.1", 0)
    server.start()
    try:
        return {
            path: _get(f"http://127.0.0.1:{server.port}{path}", timeout=10)[0]
            for path in ("/", "/api/dashboard", "/metrics")
        }
    finally:
        server.stop()
