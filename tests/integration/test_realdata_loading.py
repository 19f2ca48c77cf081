"""Loading the real uccmisl 5G traces reproduces the figures their README states.

The traces live beside the repository in ``../shared/data/uccmisl-5g`` and are never copied
into it; without them these tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.data.datasets import Dataset, load_dataset, split_sessions
from sparsetel.shared.kpi import parse_sentinels

pytestmark = pytest.mark.realdata

KPIS = (
    "RSRP",
    "RSRQ",
    "SNR",
    "CQI",
    "RSSI",
    "NRxRSRP",
    "NRxRSRQ",
    "DL_bitrate",
    "UL_bitrate",
    "Speed",
)
ALL_COLUMNS = (
    "Longitude", "Latitude", "Speed", "Operatorname", "CellID", "NetworkMode", "RSRP", "RSRQ",
    "SNR", "CQI", "RSSI", "DL_bitrate", "UL_bitrate", "State", "PINGAVG", "PINGMIN", "PINGMAX",
    "PINGSTDEV", "PINGLOSS", "CELLHEX", "NODEHEX", "LACHEX", "RAWCELLID", "NRxRSRP", "NRxRSRQ",
)  # fmt: skip


@pytest.fixture(scope="module")
def timed_load(uccmisl_dir: Path) -> tuple[Dataset, float]:
    start = time.perf_counter()
    ds = load_dataset(uccmisl_dir, KPIS, "DL_bitrate", sentinels=parse_sentinels("RSRP=-200"))
    return ds, time.perf_counter() - start


def test_all_83_sessions_and_188711_rows_load(timed_load: tuple[Dataset, float]) -> None:
    ds, _ = timed_load
    assert (ds.report.files, ds.report.rows, ds.rows) == (83, 188_711, 188_711)
    assert ds.report.skipped == ()


def test_sentinels_are_found_where_the_readme_says(timed_load: tuple[Dataset, float]) -> None:
    report = timed_load[0].report
    assert 0.004 < report.counts["NRxRSRQ"].sentinel / report.rows < 0.008  # "about 0.6%"
    assert 0 < report.counts["RSRP"].sentinel < 200  # "a few rows have RSRP = -200"
    assert all(c.invalid == 0 for c in report.counts.values())


def test_missing_shares_match_the_readme(timed_load: tuple[Dataset, float]) -> None:
    report = timed_load[0].report
    stated = {"RSSI": 0.28, "NRxRSRP": 0.18, "SNR": 0.09, "CQI": 0.09}
    for column, share in stated.items():
        assert report.counts[column].missing / report.rows == pytest.approx(share, abs=0.01)


def test_a_fifth_of_all_cells_are_dashes(uccmisl_dir: Path) -> None:
    ds = load_dataset(uccmisl_dir, ALL_COLUMNS, "DL_bitrate")
    counts = ds.report.counts
    share = sum(c.missing for c in counts.values()) / (ds.rows * (len(ALL_COLUMNS) + 1))
    assert share == pytest.approx(0.22, abs=0.01)  # the Timestamp column has no dashes
    assert counts["PINGAVG"].missing / ds.rows == pytest.approx(0.98, abs=0.01)
    assert counts["State"].invalid == ds.rows  # "D" and "I" are never taken for numbers
    assert counts["CELLHEX"].invalid > 0.5 * ds.rows  # hex ids: mostly not numbers


def test_dl_bitrate_is_zero_in_44_percent_of_rows(timed_load: tuple[Dataset, float]) -> None:
    target = np.concatenate([s.target for s in timed_load[0].sessions])
    assert np.mean(target == 0) == pytest.approx(0.44, abs=0.01)


def test_timestamps_are_2019_and_repeats_are_kept(timed_load: tuple[Dataset, float]) -> None:
    sessions = timed_load[0].sessions
    first = min(int(s.t_ms[0]) for s in sessions)
    assert 1_546_300_800_000 <= first < 1_577_836_800_000  # in 2019 (UTC)
    assert any((np.diff(s.t_ms) == 0).any() for s in sessions)


def test_the_split_is_by_session_file(timed_load: tuple[Dataset, float]) -> None:
    parts = split_sessions(timed_load[0], seed=0)
    names = [{s.name for s in part.sessions} for part in parts]
    assert [len(n) for n in names] == [59, 12, 12]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
