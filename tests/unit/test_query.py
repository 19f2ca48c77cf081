"""``sparsetel query``: a KPI of an edge over a time range, as CSV or JSON, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetel.cli import main
from sparsetel.cloud.monitor.query import parse_time
from sparsetel.cloud.store.database import open_store
from tests.stores import check_kpi_series


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "q.db")
    with open_store(path) as store:
        check_kpi_series(store)  # edge-1: RSRP at 1000..5000 ms across two models
    return path


def test_times_are_epoch_ms_or_iso_8601_in_utc_by_default() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


def test_times_at_the_ends_of_what_the_store_holds_are_asked_for(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["query", "--db", db, "--edge", "edge-1", "--kpi", "RSRP", "--json"]
    assert main([*argv, "--from", str(-(2**63)), "--to", str(2**63 - 1)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    assert main([*argv, "--from", "9999-12-31T23:59:59Z"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 0


def test_the_series_prints_as_csv_with_blanks_where_unknown(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", "--db", db, "--edge", "edge-1", "--kpi", "RSRP", "--from", "2000"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "t_ms,RSRP", "2000,-89.5", "3000,-88.5", "4000,-80.0", "5000,",
    ]  # fmt: skip


def test_the_series_prints_as_one_json_object(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["query", "--db", db, "--edge", "edge-1", "--kpi", "SNR", "--to", "4001", "--json"]
    assert main(argv) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["rows"] == 4 and body["end_ms"] == 4001
    assert body["values"] == [None, None, None, 7.0]
    assert body["t_ms"] == [1000, 2000, 3000, 4000]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kpi", "DL_bitrate"], "no registered model has the KPI 'DL_bitrate'"),
        (["--kpi", "RSRP", "--from", "soon"], "not a time"),
        (["--kpi", "RSRP", "--limit", "0"], "--limit must be in 1..9223372036854775807, got 0"),
        (["--kpi", "RSRP", "--limit", "1" + "0" * 30], "--limit must be in 1.."),
        (["--kpi", "RSRP", "--from", "99999999999999999999999"], "--from: 999999999999999999"),
        (["--kpi", "RSRP", "--from", "-99999999999999999999"], "outside -9223372036854775808.."),
        (["--kpi", "RSRP", "--to", "9223372036854775808"], "--to: 9223372036854775808 is outside"),
        (["--kpi", "RSRP", "--to", "9" * 5000], "--to: 999999999999999999999999..."),
        (["--kpi", "RSRP", "--to", "later"], "--to: not a time"),
    ],
)
def test_bad_requests_exit_2_with_the_reason(
    db: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["query", "--db", db, "--edge", "edge-1", *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
