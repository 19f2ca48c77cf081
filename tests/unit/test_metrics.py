"""Prometheus metrics of the fleet (`cloud.monitor.server`), read from the store at each scrape, and
``sparsetel monitor`` serving them over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.monitor.metrics import FleetCollector
from sparsetel.cloud.monitor.server import monitor_app
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.cloud.webserver import WebServer
from tests.frames import EDGE, GROUP, REF, TOPIC, FakeCodec, audited_frame
from tests.helpers import ANY_TIME, free_port, metric_samples
from tests.processes import DEVNULL, sparsetel, started, wait_ready
from tests.stores import fill_fleet, write_old_rows


def _scrape(store: Store) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, window_s=3600, accuracy_window_s=10**9))
    return metric_samples(generate_latest(registry).decode())


def test_the_fleet_and_its_live_accuracy_are_metrics_in_base_units(tmp_path: Path) -> None:
    with open_store(tmp_path / "m.db") as store:
        fill_fleet(store)  # e1: online, 6 measurements, a gap, spool 4; e2: a heartbeat
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
        audit = {4: (1.0, 100.0, 3.0)}
        for seq, first, audits in ((10, 0, {}), (11, 3, audit)):
            assert ingest.handle(TOPIC, audited_frame(seq, first, audits)) == "stored"
        got = _scrape(store)
        (live,) = store.accuracy()
    e1 = (("edge", EDGE), ("group", GROUP))
    assert got[("sparsetel_edge_online", e1)] == 1.0
    assert got[("sparsetel_edge_online", (("edge", "e2"), ("group", GROUP)))] == 0.0
    assert got[("sparsetel_edge_measurements_total", e1)] == 12.0
    assert got[("sparsetel_edge_missing_frames", e1)] == 1.0 + 6  # seq 2, then 4..9
    assert got[("sparsetel_edge_spool_frames", e1)] == 4.0
    assert got[("sparsetel_edge_rejected_measurements", e1)] == 3.0
    assert got[("sparsetel_edge_wire_bytes_per_measurement", e1)] > 0
    model = (("L", "3"), ("edge", EDGE), ("model", REF.hex()))
    assert got[("sparsetel_live_reconstruction_nmse", model)] == pytest.approx(live["nmse"])
    assert got[("sparsetel_live_target_mae", model)] == pytest.approx(live["target_mae"])
    assert got[("sparsetel_live_audits", model)] == 1.0


def test_sparsetel_monitor_serves_the_metrics_over_http(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with open_store(db) as store:
        fill_fleet(store)
    port = free_port()
    argv = sparsetel("monitor", "--db", str(db), "--port", str(port))
    scraped: list[str] = []

    def scrape() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                scraped.append(r.read().decode())
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    # SIGTERM at the end, and at most 10 s to go
    with started(argv, stdout=None, stderr=DEVNULL, end=signal.SIGTERM, end_timeout=10) as proc:
        wait_ready(proc, scrape, 30, "monitor", interval=0.2)
        (body,) = scraped
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html") and "<table id='fleet'>" in page
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
        assert other.value.code == 404
    got = metric_samples(body)
    assert got[("sparsetel_edge_measurements_total", (("edge", EDGE), ("group", GROUP)))] == 6.0


def test_the_monitor_answers_every_page_over_old_bad_rows(tmp_path: Path) -> None:
    with open_store(tmp_path / "old.db") as store:
        fill_fleet(store)
        write_old_rows(store)  # heartbeats with rejects [1,2,3], "abc", 1e400; a 5 MB birth
        server = WebServer(monitor_app(store), "127.0.0.1", 0)
        server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            answers = {}
            for path in ("/", "/api/dashboard", "/metrics"):
                with urllib.request.urlopen(base + path, timeout=10) as r:
                    answers[path] = (r.status, r.read().decode())
        finally:
            server.stop()
    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(answers, 200)
    data = json.loads(answers["/api/dashboard"][1])
    shown = {e["edge"]: e for e in data["fleet"]["edges"]}
    assert shown["x2"]["spool_depth"] is None and shown["x6"]["L"] is None
    assert "<tr data-edge='x1'>" in answers["/"][1]
    got = metric_samples(answers["/metrics"][1])
    x1 = (("edge", "x1"), ("group", GROUP))
    assert got[("sparsetel_edge_spool_frames", x1)] == 5.0
    assert ("sparsetel_edge_rejected_measurements", x1) not in got  # unknown, not 0


FIT = """
import resource, sys
from sparsetel.cloud.webserver import WebServer
resource.setrlimit(resource.RLIMIT_NOFILE, (256, int(sys.argv[1])))
server = WebServer(lambda e, r: [], "127.0.0.1", 0, connection_limit=1024)
server.start()
print(server.connection_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
server.stop()
"""


@pytest.mark.parametrize(("hard", "expected"), [(256, "128 256"), (4096, "1024 1152")])
def test_the_web_servers_connection_cap_fits_the_open_files_limit(hard: int, expected: str) -> None:
    """Raised towards the hard limit when it can be, else the cap comes down: a process out
    of descriptors spins on its listening socket instead of waiting below the cap."""
    run = subprocess.run(
        [sys.executable, "-c", FIT, str(hard)], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == expected.split()
