"""Store receipts end to end, on the real Mosquitto: frames the broker acknowledged but no
decoder received (none was subscribed yet) come again and are stored once when the edge
confirms by the store (``--confirm store``); an edge that trusts the broker's PUBACK alone
loses them. Both agents run side by side under the same conditions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.fleet.client import BrokerLink, discover_edges
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.config import BrokerConfig
from tests.processes import sparsetel, started
from tests.quickrun import quick_exported_run

pytestmark = pytest.mark.integration

ROWS, RATE_HZ = 600, 200  # three seconds of measurements


def _agent(
    run: Path, source: Path, url: str, group: str, edge: str, state: Path, *extra: str
) -> list[str]:
    """The command line of a `sparsetel edge` agent sending ROWS rows of `source`."""
    return sparsetel(
        "edge", "--model", str(run), "--source", str(source),
        "--group", group, "--edge-id", edge, "--broker", url, "--limit", str(ROWS),
        "--rate", str(RATE_HZ), "--batch", "20", "--state-dir", str(state), "--json", *extra,
    )  # fmt: skip


def test_frames_no_decoder_received_are_sent_again_until_the_store_confirms_them(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, broker_url: str, group: str
) -> None:
    run = quick_exported_run(tmp_path_factory)
    (source,) = write_sessions(tmp_path / "sim", n_sessions=1, rows=ROWS, seed=11)
    by_store_argv = _agent(
        run, source, broker_url, group, "by-store", tmp_path / "a",
        "--confirm", "store", "--confirm-wait", "1", "--ack-timeout", "30",
    )  # fmt: skip
    by_broker_argv = _agent(
        run, source, broker_url, group, "by-broker", tmp_path / "b", "--confirm", "broker"
    )
    db = tmp_path / "cloud.db"
    service = DecoderService(
        ServeConfig(broker=BrokerConfig(url=broker_url), group=group, models=(run,), db=str(db))
    )
    try:
        with (
            started(by_store_argv, stderr=None) as confirming,
            started(by_broker_argv, stderr=None) as trusting,
        ):
            deadline = time.monotonic() + 60
            with BrokerLink(BrokerConfig(url=broker_url)) as link:
                while len(discover_edges(link, group, settle_s=0.2, limit_s=2)) < 2:
                    assert time.monotonic() < deadline, "the agents did not come online"
            # both agents publish; no decoder is subscribed: the broker drops it all
            time.sleep(1.0)
            service.start()
            outs = [json.loads(p.communicate(timeout=90)[0]) for p in (confirming, trusting)]
            assert [p.returncode for p in (confirming, trusting)] == [0, 0]
    finally:
        service.stop()
    by_store, by_broker = outs
    store = open_store(str(db))
    try:
        got = {e: store.fetch_measurements(edge=e) for e in ("by-store", "by-broker")}
        rsrp = store.kpi_series("by-store", "RSRP")  # the service registered the model's KPIs
    finally:
        store.close()
    print("receipts:", json.dumps({
        "by_store": {k: by_store[k] for k in ("frames", "resent", "receipts", "confirmed",
                                               "spool_depth")},
        "stored": {e: len(rows) for e, rows in got.items()},
        "service": {k: service.stats()[k] for k in ("receipts", "duplicates", "records_stored")},
    }))  # fmt: skip
    keys = {(r["bd_seq"], r["seq"], r["rec"]) for r in got["by-store"]}
    assert len(got["by-store"]) == len(keys) == ROWS  # every measurement, once
    assert [t for t, _ in rsrp] == sorted(r["t_ms"] for r in got["by-store"])
    assert sum(v is not None for _, v in rsrp) > ROWS // 2
    assert by_store["resent"] > 0 and by_store["spool_depth"] == 0
    assert by_store["confirmed"] == ROWS // 20
    assert 0 < len(got["by-broker"]) < ROWS  # its early frames are gone for good
    assert by_broker["spool_depth"] == 0
