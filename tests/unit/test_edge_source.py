"""Edge measurement sources: CSV replay, JSON lines, the collector hook; bad input is counted."""

from __future__ import annotations

import io
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.edge.replay import MAX_LINE_BYTES, CsvReplaySource, JsonLinesSource, open_source
from sparsetel.edge.source import CallableSource, Measurement
from sparsetel.shared.errors import ConfigError, DataError
from sparsetel.shared.kpi import parse_sentinels

KPIS = ("RSRP", "RSRQ", "DL bitrate")
CSV_TEXT = (
    "\ufeffTimestamp, rsrp ,RSRQ,DL_bitrate\n"
    "t0,-90,-10,1500\n"
    "t1,-,-11,1600\n"  # missing
    "t2,-91,2147483647,1700\n"  # sentinel
    "t3,-92,12 dB,1800\n"  # non-numeric: that cell is missing, the row kept
    "t4,-93,-12\n"  # short row: rejected
    "\n"
    "t5,-94,-13,1900\n"
)


def _csv(tmp_path: Path, text: str = CSV_TEXT) -> Path:
    path = tmp_path / "kpis.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_replay_parses_rows_counts_missing_sentinels_and_invalid_cells(
    tmp_path: Path,
) -> None:
    source = CsvReplaySource(_csv(tmp_path), KPIS, start_ms=5000)
    got = list(source)
    values = np.stack([m.values for m in got])
    expected = [
        [-90, -10, 1500],
        [np.nan, -11, 1600],
        [-91, np.nan, 1700],
        [-92, np.nan, 1800],
        [-94, -13, 1900],
    ]
    np.testing.assert_array_equal(values, np.array(expected, np.float32))
    assert values.dtype == np.float32
    assert source.stats.measurements == 5
    assert source.stats.cells == {"missing": 1, "sentinel": 1, "invalid": 1}
    assert source.stats.invalid_cells == {"RSRQ": 1}
    assert source.stats.rejects == {"width": 1}


def test_a_bad_cell_keeps_its_row_with_that_kpi_missing_and_is_counted_per_kpi(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "RSRP,RSRQ,DL bitrate\n-90,n/a?,1\n-91,-9,x\n-92,bad,y\n"
    source = CsvReplaySource(_csv(tmp_path, text), KPIS)
    got = [m.values.tolist() for m in source]
    nan = math.nan
    np.testing.assert_array_equal(got, [[-90, nan, 1], [-91, -9, nan], [-92, nan, nan]])
    assert source.stats.invalid_cells == {"RSRQ": 2, "DL bitrate": 2}
    assert source.stats.rejects == {}
    warned = [r.getMessage() for r in caplog.records if "not a number" in r.getMessage()]
    assert len(warned) == 2, "the first bad cell of each KPI is logged, the rest counted"


def test_csv_replay_as_fast_as_possible_uses_a_regular_synthetic_clock(tmp_path: Path) -> None:
    source = CsvReplaySource(_csv(tmp_path), KPIS, period_ms=250, start_ms=10_000)
    assert [m.t_ms for m in source] == [10_000, 10_250, 10_500, 10_750, 11_000]
    assert source.period_ms == 250


def test_csv_replay_applies_per_column_sentinels(tmp_path: Path) -> None:
    sentinels = parse_sentinels("RSRP=-90")
    got = list(CsvReplaySource(_csv(tmp_path), KPIS, sentinels=sentinels))
    assert math.isnan(got[0].values[0]) and got[1].values[1] == -11


def test_csv_replay_stops_at_the_limit(tmp_path: Path) -> None:
    assert len(list(CsvReplaySource(_csv(tmp_path), KPIS, limit=2))) == 2
    assert list(CsvReplaySource(_csv(tmp_path), KPIS, limit=0)) == []


def test_csv_replay_loops_over_the_file_until_the_limit(tmp_path: Path) -> None:
    source = CsvReplaySource(_csv(tmp_path), KPIS, loop=True, limit=10, start_ms=0)
    got = list(source)
    assert len(got) == 10
    assert got[5].values[0] == -90 and got[9].values[0] == -94
    assert [m.t_ms for m in got] == [i * 1000 for i in range(10)]


def test_csv_replay_loop_ends_on_a_file_without_a_good_row(tmp_path: Path) -> None:
    source = CsvReplaySource(_csv(tmp_path, "RSRP,RSRQ,DL bitrate\nx,y\n"), KPIS, loop=True)
    assert list(source) == []
    assert source.stats.rejects == {"width": 1}


def test_csv_replay_fails_fast_on_a_missing_column_listing_the_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'CQI' is not among the columns.*'RSRQ'"):
        CsvReplaySource(_csv(tmp_path), ("RSRP", "CQI"))


def test_csv_replay_fails_fast_on_an_empty_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no header"):
        CsvReplaySource(_csv(tmp_path, ""), KPIS)
    with pytest.raises(DataError, match="cannot read"):
        CsvReplaySource(tmp_path / "absent.csv", KPIS)


def test_csv_replay_counts_undecodable_bytes_as_an_invalid_cell(tmp_path: Path) -> None:
    path = tmp_path / "kpis.csv"
    path.write_bytes(b"RSRP,RSRQ,DL bitrate\n-90,\xff\xfe,1\n-91,-9,2\n")
    source = CsvReplaySource(path, KPIS)
    got = [m.values.tolist() for m in source]
    np.testing.assert_array_equal(got, [[-90, math.nan, 1], [-91, -9, 2]])
    assert source.stats.invalid_cells == {"RSRQ": 1} and source.stats.rejects == {}


def test_source_rejects_bad_arguments(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    with pytest.raises(ValueError, match="rate_hz"):
        CsvReplaySource(path, KPIS, rate_hz=0)
    with pytest.raises(ValueError, match="limit"):
        CsvReplaySource(path, KPIS, limit=-1)
    with pytest.raises(ValueError, match="at least one KPI"):
        CsvReplaySource(path, ())


def test_csv_replay_at_a_rate_paces_and_stamps_the_wall_clock(tmp_path: Path) -> None:
    before_ms = time.time() * 1000
    started = time.monotonic()
    source = CsvReplaySource(_csv(tmp_path), KPIS, rate_hz=100.0)
    times = [m.t_ms for m in source]
    elapsed = time.monotonic() - started
    assert elapsed >= 4 / 100.0 * 0.9, "5 measurements at 100 Hz span 4 periods"
    assert source.period_ms == 10
    assert np.diff(times).tolist() == [10, 10, 10, 10]
    assert before_ms - 5 <= times[0] <= time.time() * 1000


def test_stop_interrupts_a_paced_wait(tmp_path: Path) -> None:
    source = CsvReplaySource(_csv(tmp_path), KPIS, rate_hz=0.2)  # 5 s between measurements
    iterator = iter(source)
    assert next(iterator).values[0] == -90
    timer = threading.Timer(0.05, source.stop)
    started = time.monotonic()
    timer.start()
    assert list(iterator) == []
    assert time.monotonic() - started < 2.0


def _json_source(lines: list[str]) -> JsonLinesSource:
    return JsonLinesSource(io.StringIO("".join(line + "\n" for line in lines)), KPIS)


def test_json_lines_accepts_objects_and_lists() -> None:
    source = _json_source(
        [
            json.dumps({"kpis": {"RSRP": -90.0, "rsrq": -10, "DL_bitrate": 1e3}, "t_ms": 7}),
            json.dumps([-91, "-11", None]),
            json.dumps({"kpis": {"RSRP": "-", "DL bitrate": 2147483647}, "t_ms": 2.0**53}),
        ]
    )
    got = list(source)
    np.testing.assert_array_equal(
        np.stack([m.values for m in got]),
        np.array([[-90, -10, 1000], [-91, -11, np.nan], [np.nan, np.nan, np.nan]], np.float32),
    )
    assert got[0].t_ms == 7 and got[2].t_ms == 2**53
    assert abs(got[1].t_ms - time.time() * 1000) < 5000, "no t_ms: the wall clock"
    assert source.stats.cells == {"missing": 3, "sentinel": 1}


def test_json_lines_without_t_ms_stamps_the_wall_clock_when_read() -> None:
    before = time.time() * 1000
    times = [m.t_ms for m in _json_source(["[1, 2, 3]"] * 3)]
    assert before - 5 <= times[0] <= times[1] <= times[2] <= time.time() * 1000


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "json"),
        ('"a string"', "shape"),
        ('{"values": [1, 2, 3]}', "shape"),
        ("[1, 2]", "width"),
        ("[1, 2, 3, 4]", "width"),
        ('{"kpis": {"RSPR": -90}}', "unknown_kpi"),
        ('{"kpis": {"RSRP": -90}, "t_ms": -1}', "bad_time"),
        ('{"kpis": {"RSRP": -90}, "t_ms": "now"}', "bad_time"),
        ('{"kpis": {"RSRP": -90}, "t_ms": 1.5}', "bad_time"),
    ],
)
def test_json_lines_counts_and_skips_a_bad_line(line: str, reason: str) -> None:
    source = _json_source([line, "[1, 2, 3]"])
    got = list(source)
    assert len(got) == 1 and got[0].values.tolist() == [1, 2, 3]
    assert source.stats.rejects == {reason: 1}


@pytest.mark.parametrize(
    "line",
    [
        '[1, "12 dBm", 3]',
        "[1, true, 3]",
        "[1, [2], 3]",
        '[1, {"v": 2}, 3]',
        "[1, 1e999, 3]",
        "[1, " + "9" * 400 + ", 3]",
        '{"kpis": {"RSRP": 1, "RSRQ": "12 dBm", "DL bitrate": 3}}',
    ],
)
def test_json_lines_keeps_a_line_with_a_bad_cell_and_counts_it(line: str) -> None:
    source = _json_source([line])
    (got,) = list(source)
    np.testing.assert_array_equal(got.values, np.array([1, np.nan, 3], np.float32))
    assert source.stats.invalid_cells == {"RSRQ": 1} and source.stats.rejects == {}


def test_json_lines_rejects_a_time_that_goes_backwards() -> None:
    lines = [json.dumps({"kpis": {"RSRP": v}, "t_ms": t}) for v, t in ((1, 100), (2, 50), (3, 100))]
    source = _json_source(lines)
    assert [m.t_ms for m in source] == [100, 100]
    assert source.stats.rejects == {"time_order": 1}


def test_json_lines_from_bytes_rejects_bad_utf8_and_overlong_lines() -> None:
    stream = io.BytesIO(
        b"[1, 2, 3]\n"
        b"[\xff, 2, 3]\n" + b"[" + b" " * (MAX_LINE_BYTES + 10) + b"1, 2, 3]\n" + b"[4, 5, 6]"
    )
    source = JsonLinesSource(stream, KPIS)
    assert [m.values.tolist() for m in source] == [[1, 2, 3], [4, 5, 6]]
    assert source.stats.rejects == {"encoding": 1, "too_long": 1}


def test_callable_source_collects_until_none_and_survives_collector_errors() -> None:
    script: list[object] = [
        [1.0, 2.0, 3.0],
        RuntimeError("modem busy"),
        np.array([4.0, np.nan, 6.0]),
        [1.0, 2.0],
        np.array([[1.0, 2.0, 3.0]]),
        "1,2,3",
        (np.float32(5.0), "x", None),
        Measurement(t_ms=10**15, values=np.array([7.0, 8.0, 9.0], np.float32)),
        None,
        [0.0, 0.0, 0.0],
    ]

    def collect() -> Any:
        item = script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    source = CallableSource(collect, KPIS)
    got = list(source)
    assert [m.values.tolist()[0] for m in got] == [1.0, 4.0, 5.0, 7.0]
    assert got[3].t_ms == 10**15 and got[0].t_ms <= got[1].t_ms <= got[3].t_ms
    assert source.stats.rejects == {"collector_error": 1, "width": 3}
    assert source.stats.cells == {"missing": 2, "invalid": 1}
    assert source.stats.invalid_cells == {"RSRQ": 1}
    assert len(script) == 1, "the source ends at the first None"


def test_callable_source_ends_after_max_errors_in_a_row() -> None:
    def collect() -> list[float]:
        raise OSError("no modem")

    source = CallableSource(collect, KPIS, max_errors=3)
    assert list(source) == []
    assert source.stats.rejects == {"collector_error": 3}


def test_a_py_source_spec_opens_the_named_collector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_modem.py").write_text(
        "readings = iter([[1, 2, 3], [4, 'x', 6], [7, 8, 9]])\n"
        "def read():\n"
        "    return next(readings, None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = open_source("py:my_modem:read", KPIS)
    assert isinstance(source, CallableSource)
    got = [m.values.tolist() for m in source]
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, math.nan, 6], [7, 8, 9]])
    assert source.stats.invalid_cells == {"RSRQ": 1} and source.stats.rejects == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("py:only_module", "py:MODULE:FUNCTION"),
        ("py:no_such_collector_module:read", "cannot import collector module"),
        ("py:math:pi", "not a callable collector"),
    ],
)
def test_a_bad_collector_spec_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_source(spec, KPIS)


def _numbered_csv(path: Path, n: int, time_cells: list[str] | None = None) -> Path:
    head = "RSRP,SNR" + (",t" if time_cells is not None else "")
    lines = [head]
    for i in range(n):
        cell = f",{time_cells[i]}" if time_cells is not None else ""
        lines.append(f"{-100 - i},{i}{cell}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_resumed_replay_goes_on_after_the_rows_already_framed(tmp_path: Path) -> None:
    path = _numbered_csv(tmp_path / "k.csv", 10)
    first = list(CsvReplaySource(path, ["RSRP", "SNR"], start_ms=5000, period_ms=100))
    assert [m.pos for m in first] == list(range(1, 11))
    again = CsvReplaySource(path, ["RSRP", "SNR"], period_ms=100)
    again.resume(first[5].pos or 0, first[5].t_ms)
    rest = list(again)
    # the same rows, at the same times, as the uninterrupted replay
    assert [(m.pos, m.t_ms, m.values[1]) for m in rest] == [
        (m.pos, m.t_ms, m.values[1]) for m in first[6:]
    ]
    assert again.resume_key == f"csv:{path.resolve()}"


def test_a_resumed_loop_counts_positions_across_laps(tmp_path: Path) -> None:
    path = _numbered_csv(tmp_path / "k.csv", 3)
    source = CsvReplaySource(path, ["RSRP", "SNR"], loop=True, limit=4)
    source.resume(4, 0)  # one lap and one row
    assert [(m.pos, float(m.values[1])) for m in source] == [(5, 1.0), (6, 2.0), (7, 0.0), (8, 1.0)]


def test_a_time_column_stamps_measurements_and_bad_times_are_counted(tmp_path: Path) -> None:
    times = ["1700000000000", "2023-11-14T22:13:21", "oops", "1699999999999", "1700000002500.0"]
    path = _numbered_csv(tmp_path / "k.csv", 5, times)
    source = CsvReplaySource(path, ["RSRP", "SNR"], time_column="t")
    got = [(m.t_ms, float(m.values[1])) for m in source]
    assert got == [(1700000000000, 0.0), (1700000001000, 1.0), (1700000002500, 4.0)]
    assert dict(source.stats.rejects) == {"bad_time": 1, "time_order": 1}
    with pytest.raises(DataError, match="when"):
        CsvReplaySource(path, ["RSRP", "SNR"], time_column="when")


def test_sources_that_cannot_resume_say_so() -> None:
    source = JsonLinesSource(io.StringIO(""), ["RSRP"])
    assert source.resume_key is None
    with pytest.raises(NotImplementedError):
        source.resume(3, 0)
