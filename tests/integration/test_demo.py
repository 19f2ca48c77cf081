"""`sparsetel demo` end to end, against the embedded amqtt broker it falls back to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetel.cli import main
from sparsetel.cloud.demo.broker import start_embedded_broker

pytestmark = pytest.mark.integration


def test_demo_stores_every_measurement_and_reports_compression_and_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with start_embedded_broker("127.0.0.1", 0) as broker:
        args = ["--broker", broker.url, "--workdir", str(tmp_path), "--measurements", "1000"]
        code = main(["demo", *args, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["measurements_sent"] == report["measurements_stored"] == 1000
    assert report["duplicates"] == 0 and report["rejects"] == {}
    assert report["monitor"].startswith("sparsetel monitor --db ")
    assert report["wire_bytes_per_measurement"] < report["raw_float32_bytes_per_measurement"] / 4
    assert report["json_bytes_per_measurement"] > report["raw_float32_bytes_per_measurement"]
    assert 0 < report["nmse"] < 0.5
    assert 0 < report["payload_bits_per_measurement"] < report["lossless_grid_bits_per_measurement"]
    assert report["target_r2"] is not None and report["target_r2"] > 0
