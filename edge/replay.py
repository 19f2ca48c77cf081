"""File and stream sources for the edge agent: CSV replay and JSON lines (stdin).

Both follow the base's rules in `sparsetel.edge.source` (one cell rule: a cell that is not a
number is missing and counted, its measurement kept; a row or line that cannot be read is
counted in `stats.rejects` and skipped; times never go backwards). `open_source` turns the
agent's ``source`` setting into one of them: ``"-"`` reads JSON lines from stdin,
``"py:MODULE:FUNCTION"`` calls a custom collector (`sparsetel.edge.source.CallableSource`),
anything else is a CSV file to replay.

- `CsvReplaySource` replays a KPI CSV (stdlib csv), paced at `rate_hz` or as fast as possible.
- `JsonLinesSource` reads one JSON measurement per line (stdin in the agent).
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO, cast

import numpy as np

from ..shared.errors import ConfigError, DataError
from ..shared.kpi import Sentinels, column_key, match_columns
from .source import CallableSource, Measurement, MeasurementSource

__all__ = ["MAX_LINE_BYTES", "CsvReplaySource", "JsonLinesSource", "open_source"]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 65536  # a longer JSON line is dropped ("too_long")


def open_source(
    spec: str,
    kpis: Sequence[str],
    sentinels: Sentinels | None = None,
    *,
    rate_hz: float | None = None,
    limit: int | None = None,
    loop: bool = False,
    period_ms: int = 1000,
    stdin: IO[bytes] | None = None,
    time_column: str | None = None,
) -> MeasurementSource:
    """The source `spec` names: "-" for JSON lines on `stdin` (default: fd 0),
    "py:MODULE:FUNCTION" for a custom collector (`collector`), else a CSV path.

    `rate_hz` applies to CSV replay and collectors (stdin sets its own pace); `loop` and
    `time_column` to CSV.
    """
    if spec.startswith("py:"):
        return CallableSource(
            collector(spec), kpis, sentinels, rate_hz=rate_hz, limit=limit, period_ms=period_ms
        )
    if spec == "-":
        if rate_hz is not None:
            log.warning("rate_hz is ignored for JSON lines: stdin sets the pace")
        stream = stdin if stdin is not None else _private_stdin()
        return JsonLinesSource(stream, kpis, sentinels, limit=limit, period_ms=period_ms)
    return CsvReplaySource(
        Path(spec),
        kpis,
        sentinels,
        rate_hz=rate_hz,
        limit=limit,
        loop=loop,
        period_ms=period_ms,
        time_column=time_column,
    )


def collector(spec: str) -> Callable[[], Any]:
    """The collect function "py:MODULE:FUNCTION" names: MODULE imported (from the installed
    packages or the working directory), FUNCTION a callable taking no argument that returns
    one measurement per call (see `CallableSource`). ConfigError when it cannot be had."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ConfigError(f"a collector is py:MODULE:FUNCTION, got {spec!r}", key="source")
    _, module_name, attr = parts
    if "" not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failed while importing
        message = f"cannot import collector module {module_name!r}: {exc}"
        raise ConfigError(message, key="source") from exc
    fn: object = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{module_name}.{attr} is not a callable collector", key="source")
    return cast(Callable[[], Any], fn)


def _private_stdin() -> IO[bytes]:
    """A reader of our own on fd 0. The reader thread may still block in it at exit; were it
    sys.stdin, the interpreter would abort at shutdown trying to take its lock."""
    try:
        fd = os.dup(sys.stdin.fileno())
    except (OSError, ValueError):  # a stdin without a descriptor (embedded, under pytest)
        stream: IO[bytes] = sys.stdin.buffer
        return stream
    return open(fd, "rb")


class CsvReplaySource(MeasurementSource):
    """Replay a KPI CSV, one row per measurement; the columns are found by `match_columns`.

    `rate_hz` None replays as fast as possible with a synthetic clock; `limit` caps the
    measurements; `loop` starts over at the end of the file. The header is checked when
    the source is built, so a missing column fails fast (DataError listing the columns).
    `time_column` stamps each measurement with that column's time (epoch milliseconds, or
    ISO 8601, UTC when no zone is given) instead of the clock; a row whose time is unusable or
    goes backwards is counted ("bad_time", "time_order") and skipped. `rate_hz` still paces.

    It can resume (`resume`): every measurement carries `pos`, the data rows read so far
    (across loops), which the agent stores with each spooled frame.
    """

    def __init__(
        self,
        path: str | Path,
        kpis: Sequence[str],
        sentinels: Sentinels | None = None,
        rate_hz: float | None = None,
        limit: int | None = None,
        loop: bool = False,
        *,
        period_ms: int = 1000,
        start_ms: int | None = None,
        time_column: str | None = None,
    ) -> None:
        super().__init__(
            kpis, sentinels, rate_hz=rate_hz, limit=limit, period_ms=period_ms, start_ms=start_ms
        )
        self.path = Path(path)
        self.loop = loop
        self.time_column = time_column
        self.resume_key = f"csv:{self.path.resolve()}"
        self._skip = 0
        with self._open() as handle:
            self._columns(next(csv.reader(handle), None))

    def resume(self, pos: int, t_ms: int) -> None:
        self._skip = max(0, pos)
        self._last_ms = t_ms
        if self.rate_hz is None and self.time_column is None:  # the synthetic clock goes on
            self._clock.start_ms = t_ms + self._clock.period_ms

    def _open(self) -> TextIO:
        try:
            return open(self.path, newline="", encoding="utf-8-sig", errors="replace")
        except OSError as exc:
            raise DataError(f"cannot read {self.path}: {exc}") from exc

    def _columns(self, header: list[str] | None) -> list[int]:
        """The KPIs' column indices, then the time column's when there is one."""
        if not header:
            raise DataError(f"{self.path} is empty: no header row")
        wanted = (*self.kpis, self.time_column) if self.time_column else self.kpis
        return match_columns(header, wanted)

    def _row_time(self, cell: str) -> int | None:
        """The time in a time-column cell, in epoch ms; None (counted) when unusable."""
        text = cell.strip()
        try:
            value: object = float(text)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(text)
            except ValueError:
                self._reject("bad_time")
                return None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            value = round(stamp.timestamp() * 1000)
        return self._given_time(value)

    def _rows(self, reader: Iterator[list[str]], width: int) -> Iterator[list[str]]:
        """The data rows that have the header's width; others are counted and skipped."""
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                self._reject("csv")
                continue
            if not row:
                continue
            if len(row) != width:
                self._reject("width")
                continue
            yield row

    def _measurements(self) -> Iterator[Measurement]:
        pos = 0
        while True:
            emitted = 0
            with self._open() as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                columns = self._columns(header)
                kpi_columns, time_at = columns[: len(self.kpis)], columns[len(self.kpis) :]
                for row in self._rows(reader, len(header or ())):
                    pos += 1
                    if pos <= self._skip:  # resuming: already framed by an earlier run
                        emitted += 1
                        continue
                    values = self._parse_cells([row[c] for c in kpi_columns])
                    if values is None:
                        continue
                    given = self._row_time(row[time_at[0]]) if time_at else None
                    if time_at and given is None:
                        continue
                    t = self._next_time()
                    if t is None:
                        return
                    if given is not None:
                        t = self._last_ms = given
                    emitted += 1
                    yield Measurement(t, values, pos)
            if not self.loop or emitted == 0:
                return


class JsonLinesSource(MeasurementSource):
    """One JSON measurement per line, e.g. from stdin.

    A line is an object ``{"kpis": {"RSRP": -90.0, ...}, "t_ms": 1700000000000}`` (t_ms
    optional; KPI names matched exactly or by `column_key`; an absent KPI or null is missing;
    an unknown name rejects the line) or a list of D values in the order of `kpis`. Values
    may be numbers, numeric strings or null (anything else is missing, counted as invalid).
    Without a t_ms the time is the wall clock when the line is read. `stream` yields str or
    bytes lines (bytes must be UTF-8).
    """

    def __init__(
        self,
        stream: Iterable[str] | Iterable[bytes],
        kpis: Sequence[str],
        sentinels: Sentinels | None = None,
        *,
        limit: int | None = None,
        period_ms: int = 1000,
    ) -> None:
        super().__init__(kpis, sentinels, limit=limit, period_ms=period_ms)
        self.stream = stream
        self._index = {column_key(k): i for i, k in enumerate(self.kpis)}

    def _lines(self) -> Iterator[str | bytes | None]:
        """The stream's lines, bounded: None stands for an over-long line (dropped)."""
        readline = getattr(self.stream, "readline", None)
        if readline is None:
            yield from self.stream
            return
        skipping = False
        while chunk := readline(MAX_LINE_BYTES + 1):
            complete = chunk[-1:] in ("\n", b"\n")
            if not skipping and (complete or len(chunk) <= MAX_LINE_BYTES):
                yield chunk
            elif not skipping:
                yield None
            skipping = not complete

    def _measurements(self) -> Iterator[Measurement]:
        for line in self._lines():
            if line is None:
                self._reject("too_long")
                continue
            measurement = self._parse_line(line)
            if measurement is not None:
                yield measurement

    def _parse_line(self, line: str | bytes) -> Measurement | None:
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                self._reject("encoding")
                return None
        if not line.strip():
            return None
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            self._reject("json")
            return None
        if isinstance(data, dict) and isinstance(data.get("kpis"), dict):
            given = data.get("t_ms")
            t_ms = None if given is None else self._given_time(given)
            if given is not None and t_ms is None:
                return None
            values = self._parse_object(data["kpis"])
        elif isinstance(data, list):
            t_ms, values = None, self._parse_cells(data)
        else:
            self._reject("shape")
            return None
        if values is None:
            return None
        self._last_ms = self._wall_time() if t_ms is None else t_ms
        return Measurement(self._last_ms, values)

    def _parse_object(self, kpis: dict[str, object]) -> np.ndarray | None:
        cells: list[object] = [None] * len(self.kpis)
        for name, value in kpis.items():
            i = self._index.get(column_key(name))
            if i is None:
                self._reject("unknown_kpi")
                return None
            cells[i] = value
        return self._parse_cells(cells)
