"""The monitor's dashboard for real: the decoder service on the real Mosquitto, four edge
agents sending audit samples (one of them on data whose RSRP reads 40 dB high, a sensor
fault), two models at different L evaluated offline on other simulated sessions, a real
``sparsetel benchmark`` for the offline curves, and ``sparsetel monitor`` on a free port,
loaded in headless Chromium.

The page must show the live numbers the store holds: the fleet table (edges, online, model,
L, bytes per measurement, compression ratio), the live points of the accuracy-against-
sparsity charts, the drift alert of the drifting edge, and the codebook. A screenshot is
saved under the test's temporary directory (its path is printed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.shared.config import BrokerConfig
from tests.conftest import skip_or_fail
from tests.helpers import free_port
from tests.processes import sparsetel, started
from tests.quickrun import KPIS, TARGET, quick_run

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ROWS, SHARE, SLOW_ROWS = 1500, 0.2, 4000


@pytest.fixture
def browser() -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            skip_or_fail(f"{path} missing: apt-get install chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--window-size=1400,3000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _models(tmp_path: Path, factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(L=4 run, L=2 run, their training data): both exported, and evaluated on four fresh
    simulated sessions, as an operator evaluates on recent normal data of the fleet (the
    reference of the drift alerts: a run's own three test sessions are too few for a model
    this small, whose error on a KPI varies up to five-fold from session to session)."""
    four = tmp_path / "models" / "l4"
    shutil.copytree(quick_run(factory), four)
    data = factory.getbasetemp() / "sparsetel-quick" / "data"
    two = tmp_path / "models" / "l2"
    train_run(TrainOptions(
        codec="memoryless",
        data=data, kpis=KPIS, target=TARGET, out=two, L=2, K=32, quick=True, steps=150,
        finetune_steps=40, eval_every=50, seed=0, progress=False,
    ))  # fmt: skip
    recent = tmp_path / "recent"
    write_sessions(recent, n_sessions=4, rows=1500, seed=30)
    for run in (four, two):
        export_run(run)
        evaluate_run(run, recent)
    return four, two, data


def _edge(
    run: Path, source: Path, edge: str, group: str, broker: str, tmp: Path, rate: float
) -> list[str]:
    """The command line of a `sparsetel edge` agent auditing a share of its measurements."""
    return sparsetel(
        "edge", "--model", str(run), "--source", str(source),
        "--group", group, "--edge-id", edge, "--broker", broker, "--audit-share", str(SHARE),
        "--state-dir", str(tmp / edge), "--json", "--health-interval", "0.5",
        "--rate", str(rate),
    )  # fmt: skip


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_the_dashboard_shows_the_live_fleet_and_accuracy_in_chromium(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    broker_url: str,
    group: str,
    browser: Any,
) -> None:
    four, two, data = _models(tmp_path, tmp_path_factory)
    bench = tmp_path / "bench"
    subprocess.run(
        [sys.executable, "-m", "sparsetel", "benchmark", "--data", str(data), "--kpis",
         ",".join(KPIS), "--target", TARGET, "--quick", "--methods", "sdlgm", "--L", "2,4",
         "--seeds", "0", "--out", str(bench)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (steady,) = write_sessions(tmp_path / "sim", n_sessions=1, rows=SLOW_ROWS, seed=21)
    frame = pd.read_csv(steady)
    frame.head(ROWS).to_csv(tmp_path / "short.csv", index=False)
    frame["RSRP"] = frame["RSRP"] + 40.0  # the drifting edge: its RSRP reads 40 dB high
    frame.head(ROWS).to_csv(tmp_path / "drifted.csv", index=False)

    db = tmp_path / "cloud.db"
    service = DecoderService(ServeConfig(
        broker=BrokerConfig(url=broker_url), group=group, models=(four, two), db=str(db),
    ))  # fmt: skip
    service.start()
    port = free_port()
    argvs = {
        "site-a": _edge(four, tmp_path / "short.csv", "site-a", group, broker_url, tmp_path, 1000),
        "site-b": _edge(two, tmp_path / "short.csv", "site-b", group, broker_url, tmp_path, 1000),
        "site-drift": _edge(four, tmp_path / "drifted.csv", "site-drift", group, broker_url,
                            tmp_path, 1000),
        # still streaming while the page loads: online
        "site-live": _edge(two, steady, "site-live", group, broker_url, tmp_path, 40),
    }  # fmt: skip
    ending: dict[str, Any] = {"end": signal.SIGTERM, "end_timeout": 20}  # each, if still running
    try:
        with contextlib.ExitStack() as procs:
            edges = {
                name: procs.enter_context(started(argv, **ending)) for name, argv in argvs.items()
            }
            for name in ("site-a", "site-b", "site-drift"):
                _out, err = edges[name].communicate(timeout=120)
                assert edges[name].returncode == 0, err[-2000:]
            assert service.wait_for_records(3 * ROWS + 200, timeout=60)
            monitor = procs.enter_context(started(sparsetel(
                "monitor", "--db", str(db), "--port", str(port),
                "--model", str(four), "--model", str(two), "--benchmark", str(bench),
                "--drift-min-values", "20", "--refresh", "0", "--window", "600",
            ), stdout=None, **ending))  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    _get(f"{base}/api/dashboard")
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert monitor.poll() is None, monitor.stderr.read() if monitor.stderr else ""
                    assert time.monotonic() < deadline, "the monitor never answered"
                    time.sleep(0.3)
            browser.get(base + "/")
            expected = _get(f"{base}/api/dashboard")  # what the store says right after the load
            shot = tmp_path / "dashboard.png"
            height = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1400, height + 40)  # the whole page in one screenshot
            browser.save_screenshot(str(shot))
            print("dashboard screenshot:", shot)
            _check_page(browser, expected)
            assert edges["site-live"].poll() is None, "the slow edge stopped before the page loaded"
    finally:
        service.stop()


def _cells(browser: Any, selector: str) -> list[dict[str, str]]:
    from selenium.webdriver.common.by import By

    rows = []
    for tr in browser.find_elements(By.CSS_SELECTOR, selector):
        cells = tr.find_elements(By.CSS_SELECTOR, "td")
        rows.append({c.get_attribute("data-key"): c.get_attribute("data-value") for c in cells})
    return rows


def _check_page(browser: Any, expected: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    assert browser.title == "sparsetel monitor"
    # the fleet table: every edge, its model and L, and the numbers the store gives
    fleet = {r["edge"]: r for r in _cells(browser, "#fleet tbody tr")}
    want = {e["edge"]: e for e in expected["fleet"]["edges"]}
    assert set(fleet) == set(want) == {"site-a", "site-b", "site-drift", "site-live"}
    for name, e in want.items():
        row = fleet[name]
        # the slow edge may send a frame between the page's load and the JSON read
        rel = 0.1 if name == "site-live" else 1e-6
        assert row["model"] == e["model_sha256"] and int(row["L"]) == e["L"]
        for key in ("bytes_per_measurement", "compression_ratio"):
            assert float(row[key]) == pytest.approx(e[key], rel=rel), (name, key)
        assert float(row["compression_ratio"]) > 1
    assert fleet["site-live"]["online"] == "1" and fleet["site-a"]["online"] == "0"
    assert fleet["site-b"]["L"] == "2" and fleet["site-a"]["L"] == "4"
    # accuracy against sparsity: one live point per model, at its L, with the live MAE
    points = browser.find_elements(By.CSS_SELECTOR, "#sparsity-mae circle.live")
    live = {(float(p.get_attribute("data-x")), p.get_attribute("data-label")):
            float(p.get_attribute("data-y")) for p in points}  # fmt: skip
    assert len(live) == 2
    for row in expected["sparsity"]["live"]:
        # the slow edge keeps adding audits: its model's value may move a little meanwhile
        assert live[(float(row["L"]), row["model_ref"])] == pytest.approx(
            row["target_mae"], rel=0.1
        )
    curve = browser.find_elements(By.CSS_SELECTOR, "#sparsity-mae polyline.offline-curve")
    assert curve and browser.find_elements(By.CSS_SELECTOR, "#sparsity-mae line.raw_target_mae")
    assert browser.find_elements(By.CSS_SELECTOR, "#sparsity-mae line.persistence_target_mae")
    nmse = browser.find_elements(By.CSS_SELECTOR, "#sparsity-nmse circle.live")
    assert len(nmse) == 2 and all(float(p.get_attribute("data-y")) > 0 for p in nmse)
    # the drifting edge is flagged on RSRP, on the page and in the KPI table
    banner = browser.find_element(By.ID, "alert-banner")
    assert "site-drift (RSRP)" in banner.text, banner.text
    alerts = {(r["edge"], r["kpi"]) for r in _cells(browser, "#kpi-table tr.alert")}
    assert ("site-drift", "RSRP") in alerts
    assert not any(edge in ("site-a", "site-b") for edge, _ in alerts), alerts
    drift = browser.find_elements(By.CSS_SELECTOR, "#kpi-RSRP circle.kpi-line")
    assert "site-drift" in {p.get_attribute("data-label") for p in drift}
    # the codebook: each model's codes with prototypes in units, the most used first
    # (the slow edge's model keeps counting codes between the page's load and the JSON read)
    streaming = [e["model_sha256"] for e in expected["fleet"]["edges"] if e["edge"] == "site-live"]
    for book in expected["codebook"]:
        rows = _cells(browser, f"#codebook-{book['model_ref']} tbody tr")
        assert rows
        codes = {str(c["code"]): c for c in book["codes"]}
        top = codes[rows[0]["code"]]
        rel = 0.1 if any(sha.startswith(book["model_ref"]) for sha in streaming) else 1e-9
        assert int(rows[0]["count"]) == pytest.approx(top["count"], rel=rel) and top["count"] > 0
        assert float(rows[0]["kpi:RSRP"]) == pytest.approx(top["prototype"][0])
        assert any(r["reads_as"] for r in rows)  # codes read as network states
    shown = browser.execute_script("return document.body.innerText.length")
    print("dashboard:", json.dumps({
        "fleet": {n: {k: fleet[n][k] for k in ("online", "L", "bytes_per_measurement",
                  "compression_ratio", "measurements")} for n in sorted(fleet)},
        "live": [{k: r[k] for k in ("model_ref", "L", "audits", "nmse", "target_mae")}
                 for r in expected["sparsity"]["live"]],
        "offline": expected["sparsity"]["offline_models"],
        "alerts": sorted(alerts), "page_chars": shown,
        "closest_ok_ratio": max(r["mse"] / r["threshold"] for r in expected["kpis"]["recent"]
                                if r["edge"] != "site-drift" and r["threshold"]),
        "drift_rsrp": [{k: r[k] for k in ("mse", "threshold")} for r in expected["kpis"]["recent"]
                       if (r["edge"], r["kpi"]) == ("site-drift", "RSRP")],
    }, default=str))  # fmt: skip
