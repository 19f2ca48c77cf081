"""KPI data sets: CSV files (one file = one session) read into arrays, and split by session.

Cells follow the shared rule of `sparsetel.shared.kpi` (missing, sentinel and invalid cells become
NaN and are counted per column in the `LoadReport`), applied here to whole columns with pandas.
Normalisation is not done here: the model computes it from its training split.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...shared.errors import DataError
from ...shared.kpi import (
    INVALID,
    LARGEST_VALUE,
    MISSING,
    MISSING_TOKENS,
    NUMBER_PATTERN,
    SENTINEL,
    STATUSES,
    Sentinels,
    column_key,
    match_columns,
)

__all__ = [
    "TIME_COLUMNS",
    "ColumnCounts",
    "Dataset",
    "LoadReport",
    "Session",
    "load_dataset",
    "parse_cells",
    "parse_times",
    "split_sessions",
]

log = logging.getLogger(__name__)

# Time columns looked for, in this order, when none is named (matched with `column_key`).
TIME_COLUMNS = ("Timestamp", "time", "ts", "datetime", "date time", "time ms", "t ms", "epoch")
_DOTTED_TIME = r"\d{4}\.\d{2}\.\d{2}_\d{2}\.\d{2}\.\d{2}"  # G-NetTrack: 2019.11.25_15.34.34
_EPOCH_MS_FROM = 1e11  # epoch numbers at least this large are milliseconds (1e11 s is year 5138)
_MISSING_LOWER = frozenset(token.lower() for token in MISSING_TOKENS)
_CODE = {status: np.uint8(i) for i, status in enumerate(STATUSES)}  # status -> code in [0, 4)


@dataclass(frozen=True, eq=False)
class Session:
    """One recording: `t_ms` int64 [T], `kpis` float32 [T, D] and `target` float32 [T], NaN =
    missing. Arrays are converted to these dtypes on construction; ValueError on bad shapes.
    Sessions compare by identity (their fields are arrays)."""

    name: str
    t_ms: np.ndarray
    kpis: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype in (("t_ms", np.int64), ("kpis", np.float32), ("target", np.float32)):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=dtype))
        rows = self.t_ms.shape[0] if self.t_ms.ndim == 1 else -1
        if self.kpis.ndim != 2 or self.kpis.shape[0] != rows or self.target.shape != (rows,):
            raise ValueError(
                f"session {self.name!r}: shapes t_ms {self.t_ms.shape}, kpis {self.kpis.shape}, "
                f"target {self.target.shape} do not agree ([T], [T, D], [T])"
            )

    def __len__(self) -> int:
        return int(self.t_ms.shape[0])


@dataclass(frozen=True)
class ColumnCounts:
    """Cells of one column that became NaN, by cause."""

    missing: int = 0
    sentinel: int = 0
    invalid: int = 0


@dataclass(frozen=True)
class LoadReport:
    """What a load found: sessions (`files`), `rows`, per-column `counts` (keyed by the names
    asked for, kpis then the target), the empty files it `skipped`, and per session the cell
    statuses `row_status` (uint8 [T, C], codes index `STATUSES`, columns in `counts` order)."""

    files: int
    rows: int
    counts: Mapping[str, ColumnCounts]
    skipped: tuple[str, ...] = ()
    row_status: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without `row_status`)."""
        return {
            "files": self.files,
            "rows": self.rows,
            "skipped_files": list(self.skipped),
            "columns": {
                name: {"missing": c.missing, "sentinel": c.sentinel, "invalid": c.invalid}
                for name, c in self.counts.items()
            },
        }


@dataclass(frozen=True)
class Dataset:
    """Sessions with the same columns: `kpis` (the D names as asked for) and `target`."""

    kpis: tuple[str, ...]
    target: str
    sessions: tuple[Session, ...]
    report: LoadReport

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.sessions)


def parse_cells(
    cells: Sequence[str] | pd.Series, column: str = "", sentinels: Sentinels | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`parse_value` for a whole column: (values float64 [N], NaN unless ok; status uint8 [N],
    an index into `STATUSES`). Each distinct cell text is parsed once, with vectorised rules."""
    series = pd.Series(cells, dtype=object).fillna("")
    codes, uniques = pd.factorize(series)
    text = pd.Series(np.asarray(uniques, dtype=object), dtype=object).str.strip()
    missing = text.str.lower().isin(_MISSING_LOWER).to_numpy(bool)
    number = text.str.fullmatch(NUMBER_PATTERN).to_numpy(bool) & ~missing
    values = np.full(len(text), np.nan)
    values[number] = text[number].to_numpy(object).astype(np.float64)  # Python's float()
    finite = np.abs(values) <= LARGEST_VALUE  # False for NaN and inf
    sentinel = finite & np.isin(values, list((sentinels or Sentinels()).for_column(column)))
    status = np.full(len(text), _CODE[INVALID], np.uint8)
    status[missing] = _CODE[MISSING]
    status[finite] = _CODE["ok"]
    status[sentinel] = _CODE[SENTINEL]
    values[status != _CODE["ok"]] = np.nan
    return values[codes], status[codes]


def parse_times(cells: Sequence[str] | pd.Series) -> np.ndarray:
    """Timestamps -> epoch ms (int64 [N]). One format per column: ``YYYY.MM.DD_HH.MM.SS``,
    ISO 8601, or epoch numbers (seconds, or ms from 1e11). Naive times are taken as UTC.
    ValueError naming the first row that cannot be read."""
    text = pd.Series(cells, dtype=object).fillna("").str.strip()
    first = text.iloc[0] if len(text) else ""
    if re.fullmatch(NUMBER_PATTERN, first):
        numbers, status = parse_cells(text, sentinels=Sentinels(global_values=()))
        _raise_at_first(status != _CODE["ok"], text)
        scale = 1.0 if np.abs(numbers).max() >= _EPOCH_MS_FROM else 1000.0
        return np.round(numbers * scale).astype(np.int64)
    iso = not re.fullmatch(_DOTTED_TIME, first)
    style = "ISO8601" if iso else "%Y.%m.%d_%H.%M.%S"
    times = pd.to_datetime(text, format=style, utc=True, errors="coerce")
    _raise_at_first(times.isna().to_numpy(), text)
    epoch = pd.Timestamp(0, tz="UTC")
    millis: np.ndarray = ((times - epoch) // pd.Timedelta(1, "ms")).to_numpy(np.int64)
    return millis


def _raise_at_first(bad: np.ndarray, text: pd.Series) -> None:
    where = np.flatnonzero(bad)
    if where.size:
        row = int(where[0])
        raise ValueError(f"data row {row + 1}: timestamp {text.iloc[row]!r} cannot be read")


def load_dataset(
    path: str | Path,
    kpis: Sequence[str],
    target: str,
    sentinels: Sentinels | None = None,
    time_column: str | None = None,
) -> Dataset:
    """Load a CSV file, or every ``*.csv`` under a folder (sorted, hidden ones skipped), as one
    session per file. Columns are found with `match_columns`; DataError names the file when one
    is absent. Without a time column, row i is at i * 1000 ms."""
    kpis = tuple(kpis)
    if not kpis or not target:
        raise ValueError("load_dataset needs at least one KPI and a target")
    columns = kpis if target in kpis else (*kpis, target)
    root = Path(path)
    files = _find_csvs(root)
    sessions: list[Session] = []
    status: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    for file in files:
        name = file.relative_to(root).as_posix() if root.is_dir() else file.name
        loaded = _load_file(file, name, kpis, columns, target, sentinels, time_column)
        if loaded is None:
            log.warning("%s: no data rows, skipped", file)
            skipped.append(name)
            continue
        sessions.append(loaded[0])
        status[name] = loaded[1]
    if not sessions:
        raise DataError(f"{root}: no CSV file with data rows ({len(skipped)} empty)")
    report = _report(columns, sessions, status, tuple(skipped))
    _warn_counts(report)
    log.info("loaded %d sessions, %d rows from %s", report.files, report.rows, root)
    return Dataset(kpis, target, tuple(sessions), report)


def _find_csvs(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or folder")
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() == ".csv"
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        raise DataError(f"{root}: no *.csv file in this folder")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _load_file(
    file: Path,
    name: str,
    kpis: tuple[str, ...],
    columns: tuple[str, ...],
    target: str,
    sentinels: Sentinels | None,
    time_column: str | None,
) -> tuple[Session, np.ndarray] | None:
    """One CSV -> (session, cell statuses uint8 [T, C]); None when it has no data rows."""
    header = _read_header(file)
    if header is None:
        return None
    try:
        where = match_columns(header, columns)
        time_at = _time_index(header, time_column)
    except DataError as exc:
        raise DataError(f"{file}: {exc}") from exc
    if len(set(where[: len(kpis)])) < len(kpis):
        raise DataError(f"{file}: two of the KPIs {kpis} are the same column")
    frame = _read_frame(file, len(header))
    if frame.empty:
        return None
    parsed = [
        parse_cells(frame.iloc[:, i], c, sentinels) for i, c in zip(where, columns, strict=True)
    ]
    values = np.column_stack([v for v, _ in parsed])
    if time_at is None:
        t_ms = np.arange(len(frame), dtype=np.int64) * 1000
    else:
        try:
            t_ms = parse_times(frame.iloc[:, time_at])
        except ValueError as exc:
            raise DataError(f"{file}: column {header[time_at]!r}, {exc}") from exc
        if np.any(np.diff(t_ms) < 0):
            log.warning("%s: timestamps go back in time; rows kept in file order", file)
    target_values = values[:, columns.index(target)]
    session = Session(name, t_ms, values[:, : len(kpis)], target_values)
    return session, np.column_stack([s for _, s in parsed])


def _read_header(file: Path) -> list[str] | None:
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            return next((row for row in csv.reader(handle) if row), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{file}: cannot read the header: {exc}") from exc


def _read_frame(file: Path, width: int) -> pd.DataFrame:
    """All cells as text; a row with more fields than the header is an error (a stray comma
    would shift values into the wrong columns), a shorter one ends in empty cells."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                file,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                index_col=False,
                encoding="utf-8-sig",
            )
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserWarning) as exc:
        raise DataError(f"{file}: cannot read CSV: {exc}") from exc
    if frame.shape[1] != width:
        raise DataError(f"{file}: {frame.shape[1]} columns read, the header has {width}")
    return frame


def _time_index(header: list[str], time_column: str | None) -> int | None:
    if time_column is not None:
        return int(match_columns(header, [time_column])[0])
    keys = [column_key(h) for h in header]
    for candidate in TIME_COLUMNS:
        if column_key(candidate) in keys:
            return keys.index(column_key(candidate))
    return None


def _report(
    columns: Sequence[str],
    sessions: Sequence[Session],
    status: Mapping[str, np.ndarray],
    skipped: tuple[str, ...] = (),
) -> LoadReport:
    """Counts summed from the cell statuses of `sessions` (keyed by session name)."""
    totals = np.zeros((len(columns), len(STATUSES)), np.int64)
    for session in sessions:
        cells = status.get(session.name)
        if cells is not None:
            for j in range(len(columns)):
                totals[j] += np.bincount(cells[:, j], minlength=len(STATUSES))
    counts = {
        c: ColumnCounts(*(int(totals[j, _CODE[s]]) for s in (MISSING, SENTINEL, INVALID)))
        for j, c in enumerate(columns)
    }
    rows = sum(len(s) for s in sessions)
    return LoadReport(len(sessions), rows, counts, skipped, dict(status))


def _warn_counts(report: LoadReport) -> None:
    for name, counts in report.counts.items():
        if counts.invalid:
            log.warning("column %r: %d cells are not numbers (now NaN)", name, counts.invalid)
        if report.rows and counts.missing + counts.sentinel + counts.invalid == report.rows:
            log.warning("column %r has no value in any row", name)


def split_sessions(
    ds: Dataset, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> tuple[Dataset, Dataset, Dataset]:
    """(train, validation, test) by session file, in shares `fractions`, deterministic in
    `seed`; each part non-empty. With fewer than 3 files each session is cut in time order into
    contiguous blocks instead (train first, test last; `seed` is then unused)."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 positive shares summing to 1, got {fractions}")
    if not ds.sessions:
        raise ValueError("the dataset has no sessions")
    if len(ds.sessions) >= 3:
        parts = _split_files(ds.sessions, seed, fractions)
    else:
        log.warning("only %d session file(s): splitting each into time blocks", len(ds.sessions))
        parts = _split_blocks(ds.sessions, fractions)
    if not all(parts):
        raise DataError(f"too few rows to split {ds.rows} rows into 3 non-empty parts")
    return tuple(_subset(ds, part) for part in parts)  # type: ignore[return-value]


_Piece = tuple[Session, int, int]  # a session and the rows [start, stop) taken from it


def _split_files(
    sessions: Sequence[Session], seed: int, fractions: Sequence[float]
) -> list[list[_Piece]]:
    n = len(sessions)
    n_val, n_test = (max(1, round(n * f)) for f in fractions[1:])
    while n - n_val - n_test < 1:
        n_val, n_test = (n_val - 1, n_test) if n_val >= n_test else (n_val, n_test - 1)
    order = np.random.default_rng(seed).permutation(n)
    bounds = (0, n - n_val - n_test, n - n_test, n)
    return [
        [(sessions[i], 0, len(sessions[i])) for i in sorted(order[a:b])]
        for a, b in itertools.pairwise(bounds)
    ]


def _split_blocks(sessions: Sequence[Session], fractions: Sequence[float]) -> list[list[_Piece]]:
    parts: list[list[_Piece]] = [[], [], []]
    for s in sessions:
        T = len(s)
        if T < 3:
            parts[0].append((s, 0, T))
            continue
        a = min(max(round(T * fractions[0]), 1), T - 2)
        b = min(max(round(T * (fractions[0] + fractions[1])), a + 1), T - 1)
        for part, (start, stop) in zip(parts, ((0, a), (a, b), (b, T)), strict=True):
            part.append((s, start, stop))
    return parts


def _subset(ds: Dataset, pieces: Sequence[_Piece]) -> Dataset:
    sessions, status = [], {}
    for s, a, b in pieces:
        whole = a == 0 and b == len(s)
        name = s.name if whole else f"{s.name}[{a}:{b}]"
        sessions.append(s if whole else Session(name, s.t_ms[a:b], s.kpis[a:b], s.target[a:b]))
        if s.name in ds.report.row_status:
            status[name] = ds.report.row_status[s.name][a:b]
    report = _report(list(ds.report.counts), sessions, status)
    return Dataset(ds.kpis, ds.target, tuple(sessions), report)
