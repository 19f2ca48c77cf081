"""The synthetic 5G KPI sessions: determinism, state-driven levels, dynamics and file warts."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsetel.cloud.data.simulator import (
    KPI_COLUMNS,
    SENTINEL,
    STATES,
    simulate_sessions,
    write_sessions,
)


@pytest.fixture(scope="module")
def frames() -> list[pd.DataFrame]:
    return simulate_sessions(n_sessions=6, rows=1800, seed=0)


@pytest.fixture(scope="module")
def rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def _runs(states: np.ndarray) -> list[tuple[str, int, int]]:
    """(state, start, stop) of each run of one state."""
    edges = np.flatnonzero(states[1:] != states[:-1]) + 1
    bounds = [0, *edges.tolist(), len(states)]
    return [(str(states[a]), a, b) for a, b in itertools.pairwise(bounds)]


def test_sessions_have_the_kpi_columns_and_states(frames: list[pd.DataFrame]) -> None:
    assert len(frames) == 6
    for frame in frames:
        assert list(frame.columns) == ["Timestamp", *KPI_COLUMNS, "state"]
        assert len(frame) == 1800
        assert set(frame["state"]) <= set(STATES)
        assert not frame[list(KPI_COLUMNS)].isna().any().any()


def test_simulation_is_deterministic_in_the_seed(frames: list[pd.DataFrame]) -> None:
    again = simulate_sessions(n_sessions=6, rows=1800, seed=0)
    for a, b in zip(frames, again, strict=True):
        pd.testing.assert_frame_equal(a, b)
    other = simulate_sessions(n_sessions=1, rows=1800, seed=1)[0]
    assert not other["RSRP"].equals(frames[0]["RSRP"])


def test_session_i_does_not_depend_on_how_many_are_made(frames: list[pd.DataFrame]) -> None:
    pd.testing.assert_frame_equal(simulate_sessions(n_sessions=2, rows=1800, seed=0)[1], frames[1])


def test_every_state_occurs(rows: pd.DataFrame) -> None:
    assert set(rows["state"]) == set(STATES)


def test_states_visibly_differ_in_kpi_levels(rows: pd.DataFrame) -> None:
    mean = rows.groupby("state")[list(KPI_COLUMNS)].mean()
    normal = mean.loc["normal"]
    assert mean.loc["congestion", "Load"] > normal["Load"] + 40
    assert mean.loc["congestion", "DL_bitrate"] < normal["DL_bitrate"] / 3
    assert abs(mean.loc["congestion", "SNR"] - normal["SNR"]) < 3  # good radio all the same
    assert mean.loc["interference", "SNR"] < normal["SNR"] - 8
    assert mean.loc["interference", "RSRQ"] < normal["RSRQ"] - 4
    assert mean.loc["idle", "DL_bitrate"] < 10 and mean.loc["idle", "UL_bitrate"] < 5
    assert normal["DL_bitrate"] > 5000


def test_state_dwell_times_are_tens_of_seconds_and_handovers_short(
    frames: list[pd.DataFrame],
) -> None:
    runs = [run for f in frames for run in _runs(f["state"].to_numpy())[1:-1]]
    long = [b - a for s, a, b in runs if s != "handover"]
    short = [b - a for s, a, b in runs if s == "handover"]
    assert 20 <= np.median(long) <= 80
    assert short and max(short) <= 5 and min(short) >= 2


def test_handovers_are_dips_in_rsrp_rsrq_and_snr(frames: list[pd.DataFrame]) -> None:
    dips = []
    for frame in frames:
        for state, a, b in _runs(frame["state"].to_numpy()):
            if state == "handover" and a >= 10:
                before = frame.iloc[a - 10 : a - 2]
                during = frame.iloc[a:b]
                dips.append([before[k].mean() - during[k].mean() for k in ("RSRP", "RSRQ", "SNR")])
    assert len(dips) >= 5
    assert (np.median(dips, axis=0) > [5, 3, 5]).all()


def test_kpis_are_smooth_within_a_state(frames: list[pd.DataFrame]) -> None:
    for frame in frames:
        rsrp = frame["RSRP"].to_numpy(float)
        same = frame["state"].to_numpy()[1:] == frame["state"].to_numpy()[:-1]
        lag1 = np.corrcoef(rsrp[1:][same], rsrp[:-1][same])[0, 1]
        assert lag1 > 0.8


def test_speed_changes_slowly_and_is_zero_when_static(frames: list[pd.DataFrame]) -> None:
    for i, frame in enumerate(frames):
        speed = frame["Speed"].to_numpy()
        if i % 2 == 0:
            assert (speed == 0).all()
        else:
            assert np.abs(np.diff(speed)).max() <= 10 and speed.mean() > 20


def test_radio_chain_correlates(rows: pd.DataFrame) -> None:
    active = rows[rows["state"] != "idle"]
    corr = active[["RSRP", "SNR", "CQI", "DL_bitrate", "Load"]].corr()
    assert corr.loc["SNR", "CQI"] > 0.9
    assert corr.loc["RSRP", "SNR"] > 0.3
    assert corr.loc["CQI", "DL_bitrate"] > 0.3
    assert corr.loc["Load", "DL_bitrate"] < -0.3


def test_values_stay_in_physical_ranges(rows: pd.DataFrame) -> None:
    ranges = {"RSRP": (-140, -44), "RSRQ": (-20, -3), "CQI": (1, 15), "Load": (0, 100)}
    for column, (low, high) in ranges.items():
        assert rows[column].between(low, high).all(), column
    assert (rows["DL_bitrate"] >= 0).all() and (rows["UL_bitrate"] >= 0).all()


def test_simulating_six_half_hour_sessions_is_fast() -> None:
    start = time.perf_counter()
    simulate_sessions(n_sessions=6, rows=1800, seed=7)
    assert time.perf_counter() - start < 1.0


def test_written_files_have_timestamps_and_warts(tmp_path: Path) -> None:
    paths = write_sessions(tmp_path / "out", n_sessions=3, rows=1800, seed=2)
    assert [p.name for p in paths] == ["session_000.csv", "session_001.csv", "session_002.csv"]
    frame = pd.read_csv(paths[0], dtype=str, keep_default_na=False)
    dotted = r"\d{4}\.\d{2}\.\d{2}_\d{2}\.\d{2}\.\d{2}"
    assert all(re.fullmatch(dotted, t) for t in frame["Timestamp"])
    assert frame["Timestamp"].duplicated().any()
    assert frame["Timestamp"].is_monotonic_increasing
    assert (frame["RSSI"] == "-").mean() > (frame["RSRQ"] == "-").mean() > 0
    assert ((frame["SNR"] == "-") == (frame["CQI"] == "-")).mean() > 0.95
    assert sum((f == SENTINEL).sum() for f in (frame["RSRQ"], frame["CQI"])) > 0


def test_writing_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    a = write_sessions(tmp_path / "a", n_sessions=2, rows=100, seed=4)
    b = write_sessions(tmp_path / "b", n_sessions=2, rows=100, seed=4)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_write_without_warts_writes_clean_numbers(tmp_path: Path) -> None:
    path = write_sessions(tmp_path, 1, 300, 0, missing_share=0, sentinel_share=0)[0]
    frame = pd.read_csv(path)
    pd.testing.assert_frame_equal(frame, simulate_sessions(1, 300, 0)[0], check_dtype=False)


def test_write_renames_columns(tmp_path: Path) -> None:
    names = {"RSRP": "rsrp dBm", "state": "ground truth"}
    path = write_sessions(tmp_path, 1, 10, 0, column_names=names)[0]
    header = path.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[1] == "rsrp dBm" and header[-1] == "ground truth"
    with pytest.raises(ValueError, match="RSPR"):
        write_sessions(tmp_path, 1, 10, 0, column_names={"RSPR": "x"})


@pytest.mark.parametrize(("n", "rows", "seed"), [(0, 10, 0), (1, 0, 0), (1, 10, -1)])
def test_simulate_rejects_bad_arguments(n: int, rows: int, seed: int) -> None:
    with pytest.raises(ValueError):
        simulate_sessions(n, rows, seed)
