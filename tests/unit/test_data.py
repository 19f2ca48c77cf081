"""Loading KPI CSVs into sessions, the load report, timestamps and the split by session."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.cloud.data.datasets import (
    Dataset,
    Session,
    load_dataset,
    parse_cells,
    parse_times,
    split_sessions,
)
from sparsetel.cloud.data.simulator import SENTINEL, write_sessions
from sparsetel.shared.errors import DataError
from sparsetel.shared.kpi import STATUSES, Sentinels, parse_sentinels, parse_value

KPIS = ("RSRP", "RSRQ", "SNR", "CQI", "RSSI", "DL_bitrate")
CELLS = [
    "-92", " -92 ", "\xa0-92", "+5", ".5", "5.", "-0", "1e3", "1.5E-2", "-8.388338000000001",
    "0.1000000000000000055511151231257827", "", "  ", "-", " - ", "--", "nan", "NaN", "NAN",
    "N/A", "#N/A", "null", "None", "2147483647", "2147483647.0", "-2147483648", "2147483646",
    "-200", "-200.0", "9E38", "-3e38", "inf", "-Infinity", "1e400", "12 dBm", "1,5", "1_000",
    "0x1F", "١٢٣", "１２", "−92", "--5", "e5", ".", '"-92"', "True", "LTE",
]  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _agree(cells: list[str], column: str, sentinels: Sentinels | None) -> None:
    values, status = parse_cells(cells, column, sentinels)
    for cell, value, code in zip(cells, values, status, strict=True):
        expected_value, expected_status = parse_value(cell, column, sentinels)
        assert STATUSES[code] == expected_status, cell
        assert value == expected_value or (math.isnan(value) and math.isnan(expected_value)), cell


@pytest.mark.parametrize("sentinels", [None, parse_sentinels("RSRP=-200")])
def test_parse_cells_agrees_with_parse_value_on_tricky_cells(sentinels: Sentinels | None) -> None:
    _agree(CELLS + CELLS[::-1], "RSRP", sentinels)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789+-.eE _,x\u0661 naif/\t", max_size=8), max_size=20))
def test_parse_cells_agrees_with_parse_value_on_random_cells(cells: list[str]) -> None:
    _agree(cells, "RSRP", parse_sentinels("RSRP=-2"))


def test_parse_cells_reads_the_pandas_string_dtype_and_short_rows() -> None:
    values, status = parse_cells(pd.Series(["1", None, "x"], dtype="str"), "c")
    assert values[0] == 1.0 and np.isnan(values[1:]).all()
    assert [STATUSES[s] for s in status] == ["ok", "missing", "invalid"]


def _count_text(paths: list[Path], column: str, token: str) -> int:
    count = 0
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            count += sum(row[column] == token for row in csv.DictReader(handle))
    return count


def test_load_counts_exactly_the_warts_the_simulator_wrote(tmp_path: Path) -> None:
    paths = write_sessions(tmp_path, 4, 600, seed=3, missing_share=0.05, sentinel_share=0.01)
    ds = load_dataset(tmp_path, KPIS, "DL_bitrate")
    assert (ds.report.files, ds.report.rows, ds.rows) == (4, 2400, 2400)
    for column in KPIS:
        counts = ds.report.counts[column]
        assert counts.missing == _count_text(paths, column, "-")
        assert counts.sentinel == _count_text(paths, column, SENTINEL)
        assert counts.invalid == 0
    assert ds.report.counts["RSSI"].missing > 0 and ds.report.counts["CQI"].sentinel > 0
    nan_cells = sum(int(np.isnan(s.kpis).sum()) for s in ds.sessions)
    assert nan_cells == sum(c.missing + c.sentinel for c in ds.report.counts.values())


def test_load_returns_the_numbers_in_the_files(tmp_path: Path) -> None:
    paths = write_sessions(tmp_path, n_sessions=2, rows=50, seed=1)
    ds = load_dataset(tmp_path, KPIS, "UL_bitrate")
    assert [s.name for s in ds.sessions] == ["session_000.csv", "session_001.csv"]
    frame = pd.read_csv(paths[1], dtype=str, keep_default_na=False)
    expected = np.array([[parse_value(c)[0] for c in frame[k]] for k in KPIS]).T
    session = ds.sessions[1]
    assert session.kpis.dtype == np.float32 and session.kpis.shape == (50, len(KPIS))
    np.testing.assert_array_equal(session.kpis, expected.astype(np.float32))
    np.testing.assert_array_equal(session.target, frame["UL_bitrate"].astype(np.float32))


def test_load_works_on_renamed_and_odd_column_names(tmp_path: Path) -> None:
    names = {"RSRP": "rsrp dBm", "SNR": 'SNR "dB", µ', "Timestamp": "time", "RSSI": "débit"}
    write_sessions(tmp_path / "plain", n_sessions=2, rows=30, seed=0)
    write_sessions(tmp_path / "odd", n_sessions=2, rows=30, seed=0, column_names=names)
    header = (tmp_path / "odd" / "session_000.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith('time,rsrp dBm,RSRQ,"SNR ""dB"", µ",CQI,débit,')
    kpis = ("rsrp dBm", 'snr "DB",  µ', "Débit", "dl bitrate")
    odd = load_dataset(tmp_path / "odd", kpis, "RSRQ")
    plain = load_dataset(tmp_path / "plain", ("RSRP", "SNR", "RSSI", "DL_bitrate"), "RSRQ")
    assert odd.kpis == kpis and list(odd.report.counts) == [*kpis, "RSRQ"]
    for a, b in zip(odd.sessions, plain.sessions, strict=True):
        np.testing.assert_array_equal(a.kpis, b.kpis)
        np.testing.assert_array_equal(a.t_ms, b.t_ms)
    assert plain.sessions[0].t_ms[0] > 1_500_000_000_000


def test_load_names_the_file_and_the_columns_there_are_when_a_kpi_is_absent(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "a.csv", "RSRP,SINR\n-90,3\n")
    _write(tmp_path / "b.csv", "RSRP,SNR\n-90,3\n")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path, ("RSRP", "SNR"), "RSRP")
    assert "a.csv" in str(info.value) and "'SNR'" in str(info.value)
    assert "'RSRP', 'SINR'" in str(info.value)


def test_load_rejects_two_kpis_that_are_the_same_column(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "RSRP,SNR\n-90,3\n")
    with pytest.raises(DataError, match="same column"):
        load_dataset(tmp_path, ("RSRP", "rsrp"), "SNR")


def test_a_column_missing_in_every_row_of_a_file_is_all_nan(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "RSRP,SNR\n-90,-\n-91,-\n")
    ds = load_dataset(tmp_path, ("RSRP", "SNR"), "RSRP")
    assert np.isnan(ds.sessions[0].kpis[:, 1]).all()
    assert ds.report.counts["SNR"].missing == 2


def test_empty_and_header_only_files_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "a.csv", "")
    _write(tmp_path / "b.csv", "RSRP,SNR\n")
    _write(tmp_path / "c.csv", "\n\n")
    _write(tmp_path / "d.csv", "RSRP,SNR\n-90,3\n")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(tmp_path, ("RSRP",), "SNR")
    assert ds.report.skipped == ("a.csv", "b.csv", "c.csv")
    assert ds.report.to_dict()["skipped_files"] == ["a.csv", "b.csv", "c.csv"]
    assert [s.name for s in ds.sessions] == ["d.csv"]
    assert "b.csv" in caplog.text


def test_a_folder_of_only_empty_files_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "RSRP\n")
    with pytest.raises(DataError, match="no CSV file with data rows"):
        load_dataset(tmp_path, ("RSRP",), "RSRP")


@pytest.mark.parametrize("name", ["nothing-here", "empty-folder"])
def test_a_path_without_csv_files_is_an_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(DataError):
        load_dataset(tmp_path / name, ("RSRP",), "RSRP")


def test_folders_are_searched_recursively_in_sorted_order_without_hidden_files(
    tmp_path: Path,
) -> None:
    for rel in ("b/x.csv", "a/z/y.CSV", "a/w.csv", ".hidden/q.csv", "a/._w.csv"):
        _write(tmp_path / rel, "RSRP\n-90\n")
    _write(tmp_path / "notes.txt", "RSRP\n-90\n")
    ds = load_dataset(tmp_path, ("RSRP",), "RSRP")
    assert [s.name for s in ds.sessions] == ["a/w.csv", "a/z/y.CSV", "b/x.csv"]


def test_invalid_cells_per_column_and_sentinels_are_counted(tmp_path: Path) -> None:
    text = "RSRP,RSRQ\n-200,12 dB\n2147483647,1,5\n-90,-\n"
    _write(tmp_path / "a.csv", text.replace("1,5", '"1,5"'))
    ds = load_dataset(tmp_path, ("RSRP", "RSRQ"), "RSRQ", sentinels=parse_sentinels("RSRP=-200"))
    report = ds.report.to_dict()["columns"]
    assert report["RSRP"] == {"missing": 0, "sentinel": 2, "invalid": 0}
    assert report["RSRQ"] == {"missing": 1, "sentinel": 0, "invalid": 2}
    assert json.loads(json.dumps(ds.report.to_dict())) == ds.report.to_dict()


def test_short_rows_are_missing_and_long_rows_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "RSRP,SNR\n-90,3\n-91\n")
    assert load_dataset(tmp_path, ("RSRP", "SNR"), "SNR").report.counts["SNR"].missing == 1
    for text in ("RSRP,SNR\n-90,3\n-91,2,7,8\n", "RSRP,SNR\n-90,3,1\n-91,2,7\n"):
        _write(tmp_path / "a.csv", text)
        with pytest.raises(DataError, match=r"a\.csv"):
            load_dataset(tmp_path, ("RSRP", "SNR"), "SNR")


def test_a_quoted_comma_stays_in_its_cell(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", 'Operator,RSRP\n"Vodafone, IE",-90\n')
    assert load_dataset(tmp_path, ("RSRP",), "RSRP").sessions[0].kpis[0, 0] == -90


def test_a_byte_order_mark_does_not_hide_the_first_column(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("\ufeffTimestamp,RSRP\n2019.11.25_15.34.34,-90\n".encode())
    assert load_dataset(tmp_path, ("RSRP",), "RSRP").sessions[0].t_ms[0] == 1574696074000


def test_a_file_that_is_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("RSRP,d\xe9bit\n-90,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.csv"):
        load_dataset(tmp_path, ("RSRP",), "RSRP")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["2019.11.25_15.34.34", "2019.11.25_15.34.34", "2019.11.25_15.34.35"], [0, 0, 1000]),
        (
            ["2019-11-25T15:34:34Z", "2019-11-25 15:34:34.5", "2019-11-25T16:34:36+01"],
            [0, 500, 2000],
        ),
        (["1574696074", "1574696074.25", " 1574696075 "], [0, 250, 1000]),
        (["1574696074000", "1574696074250"], [0, 250]),
    ],
)
def test_parse_times_reads_the_usual_formats(cells: list[str], expected: list[int]) -> None:
    t_ms = parse_times(cells)
    assert t_ms.dtype == np.int64
    assert list(t_ms - 1574696074000) == expected


@pytest.mark.parametrize("cells", [["2019.11.25_15.34.34", ""], ["2019-11-25", "soon"], ["1", "x"]])
def test_parse_times_names_the_first_bad_row(cells: list[str]) -> None:
    with pytest.raises(ValueError, match="data row 2"):
        parse_times(cells)


def test_time_column_is_found_named_or_absent(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "x.csv", "RSRP,epoch\n-90,1574696074\n-91,1574696076\n")
    _write(tmp_path / "b" / "x.csv", "RSRP,when\n-90,1574696074\n-91,1574696076\n")
    found = load_dataset(tmp_path / "a", ("RSRP",), "RSRP")
    named = load_dataset(tmp_path / "b", ("RSRP",), "RSRP", time_column="WHEN")
    absent = load_dataset(tmp_path / "b", ("RSRP",), "RSRP")
    assert list(found.sessions[0].t_ms) == list(named.sessions[0].t_ms)
    assert list(named.sessions[0].t_ms) == [1574696074000, 1574696076000]
    assert list(absent.sessions[0].t_ms) == [0, 1000]
    with pytest.raises(DataError, match=r"x\.csv"):
        load_dataset(tmp_path / "b", ("RSRP",), "RSRP", time_column="Timestamp")


def test_a_bad_timestamp_is_an_error_naming_file_and_row(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "Timestamp,RSRP\n2019.11.25_15.34.34,-90\nyesterday,-91\n")
    with pytest.raises(DataError, match=r"a\.csv.*data row 2.*yesterday"):
        load_dataset(tmp_path, ("RSRP",), "RSRP")


def test_session_converts_dtypes_and_rejects_bad_shapes() -> None:
    session = Session("s", [0, 1000], [[1.0], [2.0]], [1.0, 2.0])
    assert (session.t_ms.dtype, session.kpis.dtype, session.target.dtype, len(session)) == (
        np.int64, np.float32, np.float32, 2
    )  # fmt: skip
    with pytest.raises(ValueError, match="shapes"):
        Session("s", [0, 1000], [[1.0]], [1.0, 2.0])


def _dataset(tmp_path: Path, n_files: int, rows: int = 40) -> Dataset:
    write_sessions(tmp_path, n_sessions=n_files, rows=rows, seed=0)
    return load_dataset(tmp_path, KPIS, "DL_bitrate")


def _names(parts: tuple[Dataset, Dataset, Dataset]) -> list[list[str]]:
    return [[s.name for s in part.sessions] for part in parts]


def test_split_by_file_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, 10)
    parts = split_sessions(ds, seed=5)
    names = _names(parts)
    assert names == _names(split_sessions(ds, seed=5))
    assert [len(n) for n in names] == [6, 2, 2]
    assert sorted(n for part in names for n in part) == [s.name for s in ds.sessions]
    others = [_names(split_sessions(ds, seed=seed)) for seed in range(6)]
    assert any(other != names for other in others)
    assert all(part.kpis == ds.kpis and part.target == ds.target for part in parts)


def test_split_reports_add_up_to_the_whole(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, 7)
    parts = split_sessions(ds, seed=1)
    assert sum(p.report.files for p in parts) == 7
    assert sum(p.report.rows for p in parts) == ds.report.rows
    for column, counts in ds.report.counts.items():
        assert sum(p.report.counts[column].missing for p in parts) == counts.missing
        assert sum(p.report.counts[column].sentinel for p in parts) == counts.sentinel


@pytest.mark.parametrize("n_files", [3, 4])
def test_split_leaves_no_part_empty(tmp_path: Path, n_files: int) -> None:
    parts = split_sessions(_dataset(tmp_path, n_files), fractions=(0.1, 0.45, 0.45))
    assert all(part.sessions for part in parts)


def test_a_single_file_is_split_into_contiguous_time_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _dataset(tmp_path, 1, rows=100)
    with caplog.at_level(logging.WARNING):
        parts = split_sessions(ds, seed=3)
    assert "time blocks" in caplog.text
    assert _names(parts) == [
        ["session_000.csv[0:70]"],
        ["session_000.csv[70:85]"],
        ["session_000.csv[85:100]"],
    ]
    whole = ds.sessions[0]
    np.testing.assert_array_equal(np.concatenate([p.sessions[0].t_ms for p in parts]), whole.t_ms)
    np.testing.assert_array_equal(np.concatenate([p.sessions[0].kpis for p in parts]), whole.kpis)
    for column, counts in ds.report.counts.items():
        assert sum(p.report.counts[column].missing for p in parts) == counts.missing


def test_two_files_are_each_split_into_blocks(tmp_path: Path) -> None:
    names = _names(split_sessions(_dataset(tmp_path, 2, rows=20)))
    assert names[2] == ["session_000.csv[17:20]", "session_001.csv[17:20]"]


def test_split_needs_three_rows_and_sane_fractions(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too few rows"):
        split_sessions(_dataset(tmp_path, 1, rows=2))
    ds = _dataset(tmp_path, 3)
    for fractions in [(0.5, 0.5, 0.0), (0.7, 0.2, 0.2), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="fractions"):
            split_sessions(ds, fractions=fractions)  # type: ignore[arg-type]
