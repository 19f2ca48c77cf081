"""Synthetic 5G-like KPI sessions at 1 Hz, driven by a hidden chain of network states.

Each session follows a semi-Markov chain over `STATES` with dwell times of tens of seconds
(a handover lasts 2-5 s). The state sets KPI levels; within a state the KPIs move with AR(1)
noise around levels that change smoothly (a time constant of about a second):

- normal: good radio, moderate cell load, high throughput;
- congestion: good radio but load near 100%, so throughput is low;
- interference: RSRP as usual, RSRQ and SNR (hence CQI and throughput) low;
- handover: a short dip in RSRP, RSRQ and SNR;
- idle: DL and UL bitrate near zero (keep-alive traffic only).

Radio follows the usual chain: RSRP (slow shadowing, faster when driving) -> SNR -> CQI ->
capacity (3GPP CQI efficiency table, 20 MHz) -> DL_bitrate = capacity x free share of the cell
x demand; RSSI = RSRP + 17 - RSRQ (the RSRQ definition with 50 resource blocks); UL follows DL.
Odd sessions are driving (Speed an AR(1) process around 45 km/h), even ones static (Speed 0).

`simulate_sessions` returns clean numbers; `write_sessions` writes CSVs with the warts of the
real traces: "-" for missing cells (in bursts), a few 2147483647 sentinels, and a Timestamp
``YYYY.MM.DD_HH.MM.SS`` at one-second resolution, so that some timestamps repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["KPI_COLUMNS", "SENTINEL", "STATES", "simulate_sessions", "write_sessions"]

STATES = ("normal", "congestion", "interference", "handover", "idle")
KPI_COLUMNS = ("RSRP", "RSRQ", "SNR", "CQI", "RSSI", "DL_bitrate", "UL_bitrate", "Speed", "Load")
SENTINEL = "2147483647"
_TIME_FORMAT = "%Y.%m.%d_%H.%M.%S"

# Per state: mean dwell (s), minimum dwell (s), then the levels of
# RSRP offset (dB), RSRQ (dB), SNR offset (dB), Load (%), demand (share of the capacity wanted).
_DWELL = np.array([[60, 10], [45, 10], [30, 8], [3, 2], [40, 10]], dtype=float)
_LEVELS = np.array(
    [
        [0.0, -9.0, 0.0, 35.0, 0.8],
        [0.0, -11.0, -1.0, 93.0, 0.8],
        [0.0, -16.0, -13.0, 45.0, 0.8],
        [-12.0, -17.0, -10.0, 40.0, 0.5],
        [0.0, -9.0, 0.0, 30.0, 0.0],
    ]
)
# Next state after each state (rows: from, columns: to; no self-transitions).
_NEXT = np.array(
    [
        [0.0, 0.3, 0.2, 0.3, 0.2],
        [0.6, 0.0, 0.1, 0.15, 0.15],
        [0.6, 0.1, 0.0, 0.25, 0.05],
        [0.8, 0.07, 0.07, 0.0, 0.06],
        [0.7, 0.1, 0.1, 0.1, 0.0],
    ]
)
_HANDOVER = STATES.index("handover")
_IDLE = STATES.index("idle")
# AR(1) noise per level channel: coefficient and stationary standard deviation.
_NOISE_PHI = np.array([0.95, 0.9, 0.9, 0.95, 0.9])
_NOISE_SD = np.array([2.5, 1.0, 2.0, 5.0, 0.1])
_SMOOTH = 0.4  # level smoothing: y[t] = 0.4 y[t-1] + 0.6 x[t]
# Spectral efficiency (bit/s/Hz) of CQI 0..15, 3GPP TS 36.213 table 7.2.3-1.
_CQI_EFFICIENCY = np.array(
    [0, 0.1523, 0.2344, 0.377, 0.6016, 0.877, 1.1758, 1.4766, 1.9141, 2.4063, 2.7305, 3.3223,
     3.9023, 4.5234, 5.1152, 5.5547]
)  # fmt: skip
_BANDWIDTH_KHZ = 20_000 * 0.75  # 20 MHz, a quarter lost to overhead: kbit/s per bit/s/Hz


def simulate_sessions(n_sessions: int = 6, rows: int = 1800, seed: int = 0) -> list[pd.DataFrame]:
    """`n_sessions` clean sessions of `rows` seconds: columns Timestamp (text), `KPI_COLUMNS`
    (numbers) and ``state`` (one of `STATES`). Session i depends only on (seed, i)."""
    if n_sessions < 1 or rows < 1 or seed < 0:
        raise ValueError(
            f"need n_sessions >= 1, rows >= 1, seed >= 0; got {n_sessions, rows, seed}"
        )
    return [
        _simulate(np.random.default_rng([seed, i, 0]), rows, i % 2 == 1, i)
        for i in range(n_sessions)
    ]


def _simulate(rng: np.random.Generator, rows: int, driving: bool, index: int) -> pd.DataFrame:
    state = _states(rng, rows, driving)
    speed = _speed(rng, rows) if driving else np.zeros(rows)
    levels = _filter(_LEVELS[state] * (1 - _SMOOTH), np.full(5, _SMOOTH), _LEVELS[state[0]])
    noise = _ar1(rng, rows, _NOISE_PHI, _NOISE_SD)
    rsrp_off, rsrq, snr_off, load, demand = (levels + noise).T
    shadow_phi, shadow_sd = (0.995, 7.0) if driving else (0.999, 2.0)
    shadow = _ar1(rng, rows, np.array([shadow_phi]), np.array([shadow_sd]))[:, 0]
    rsrp = np.clip(rng.uniform(-100, -80) + shadow + rsrp_off, -140, -44).round()
    load = np.clip(load, 0, 100).round(1)
    rsrq = np.clip(rsrq - 3 * (load / 100 - 0.35), -20, -3).round()
    snr = np.clip(12 + 0.35 * (rsrp + 90) + snr_off, -20, 35).round(1)
    cqi = np.clip(np.round((snr + 8.5) / 2), 1, 15).astype(np.int64)
    rssi = np.clip(rsrp + 17 - rsrq + rng.normal(0, 1, rows), -120, -25).round()
    free = np.clip(1 - load / 100, 0.04, 1)
    wanted = np.clip(demand, 0, 1) * rng.lognormal(0, 0.15, rows)
    dl = _CQI_EFFICIENCY[cqi] * _BANDWIDTH_KHZ * free * wanted
    ul = 0.035 * dl * rng.lognormal(0, 0.2, rows) + 15
    idle = state == _IDLE
    dl[idle] = rng.poisson(1.0, idle.sum())
    ul[idle] = rng.poisson(0.5, idle.sum())
    start = datetime(2019, 11, 25, 7) + timedelta(days=index, seconds=int(rng.integers(0, 36000)))
    return pd.DataFrame(
        {
            "Timestamp": _timestamps(rng, rows, start),
            "RSRP": rsrp.astype(np.int64),
            "RSRQ": rsrq.astype(np.int64),
            "SNR": snr,
            "CQI": cqi,
            "RSSI": rssi.astype(np.int64),
            "DL_bitrate": dl.round().astype(np.int64),
            "UL_bitrate": ul.round().astype(np.int64),
            "Speed": speed.round().astype(np.int64),
            "Load": load,
            "state": np.asarray(STATES, dtype=object)[state],
        }
    )


def _states(rng: np.random.Generator, rows: int, driving: bool) -> np.ndarray:
    """Semi-Markov state indices (int [rows]); handovers rarer when static."""
    nxt = _NEXT.copy()
    if not driving:
        nxt[:, _HANDOVER] *= 0.2
    nxt /= nxt.sum(axis=1, keepdims=True)
    out = np.empty(rows, dtype=np.int64)
    t, s = 0, int(rng.choice(len(STATES), p=[0.6, 0.1, 0.1, 0.0, 0.2]))
    while t < rows:
        mean, low = _DWELL[s]
        dwell = int(low + rng.gamma(2.0, (mean - low) / 2.0)) if mean > low else int(low)
        dwell = dwell if s != _HANDOVER else int(rng.integers(2, 6))
        out[t : t + dwell] = s
        t, s = t + dwell, int(rng.choice(len(STATES), p=nxt[s]))
    return out


def _speed(rng: np.random.Generator, rows: int) -> np.ndarray:
    """km/h around 45 with slow AR(1) changes (typically 2 km/h per second), clipped."""
    drift = _ar1(rng, rows, np.array([0.995]), np.array([20.0]))[:, 0]
    speed: np.ndarray = np.clip(45 + drift, 0, 110)
    return speed


def _ar1(rng: np.random.Generator, rows: int, phi: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Stationary AR(1) paths (shape: [rows, C]) with coefficients `phi` and std `sd`."""
    innovations = rng.normal(size=(rows, len(phi))) * sd * np.sqrt(1 - phi**2)
    return _filter(innovations, phi, rng.normal(size=len(phi)) * sd)


def _filter(x: np.ndarray, a: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """y[t] = a * y[t-1] + x[t] with y[-1] chosen so that y[0] = y0 (shape: [T, C])."""
    y = np.empty_like(x)
    y[0] = y0
    for t in range(1, len(x)):
        y[t] = a * y[t - 1] + x[t]
    return y


def _timestamps(rng: np.random.Generator, rows: int, start: datetime) -> list[str]:
    """Logging every 0.99 s with jitter, printed at one-second resolution (some repeat)."""
    seconds = rng.uniform(0, 1) + 0.99 * np.arange(rows) + rng.uniform(-0.2, 0.2, rows)
    base = pd.Timestamp(start)
    times = base + pd.to_timedelta(np.floor(seconds), unit="s")
    return [str(text) for text in times.strftime(_TIME_FORMAT)]


def write_sessions(
    out_dir: str | Path,
    n_sessions: int = 6,
    rows: int = 1800,
    seed: int = 0,
    column_names: Mapping[str, str] | None = None,
    *,
    missing_share: float = 0.02,
    sentinel_share: float = 0.002,
) -> list[Path]:
    """Write ``session_000.csv`` ... into `out_dir` (created) with the real traces' warts: "-"
    in bursts in RSRQ, SNR+CQI (together) and RSSI (three times as often), `SENTINEL` in RSRQ
    and CQI. `column_names` renames columns (``{"RSRP": "rsrp dBm"}``); ValueError on a name
    that is not a column."""
    names = dict(column_names or {})
    frames = simulate_sessions(n_sessions, rows, seed)
    unknown = sorted(set(names) - set(frames[0].columns))
    if unknown:
        raise ValueError(
            f"column_names has unknown columns {unknown}; columns: {list(frames[0].columns)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        text = frame.astype(str)
        _add_warts(np.random.default_rng([seed, i, 1]), text, missing_share, sentinel_share)
        path = out / f"session_{i:03d}.csv"
        text.rename(columns=names).to_csv(path, index=False)
        paths.append(path)
    return paths


def _add_warts(
    rng: np.random.Generator, text: pd.DataFrame, missing: float, sentinel: float
) -> None:
    """Put "-" bursts (mean 5 rows) and sentinels into `text` in place."""
    for columns, share in ((["RSRQ"], missing), (["SNR", "CQI"], missing), (["RSSI"], 3 * missing)):
        rows = _bursts(rng, len(text), share)
        text.loc[rows, columns] = "-"
    for column in ("RSRQ", "CQI"):
        text.loc[rng.random(len(text)) < sentinel, column] = SENTINEL


def _bursts(rng: np.random.Generator, rows: int, share: float) -> np.ndarray:
    """A mask (bool [rows]) covering about `share` of the rows in runs of mean length 5."""
    starts = np.flatnonzero(rng.random(rows) < share / 5)
    mask = np.zeros(rows, dtype=bool)
    for start, length in zip(starts, rng.geometric(0.2, len(starts)), strict=True):
        mask[start : start + length] = True
    return mask
