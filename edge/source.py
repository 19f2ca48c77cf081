"""Measurement sources: where the edge agent's KPI vectors come from; the base and the hook.

Every source yields `Measurement`s (a time in ms and D float32 KPI values, NaN = missing) for
a fixed tuple of KPI names, and follows one cell rule, `sparsetel.shared.kpi.parse_value`, as
training does (`sparsetel.cloud.data.datasets`): missing tokens, sentinel values and cells
that are not numbers become NaN and are counted (`stats.cells` by status,
`stats.invalid_cells` by KPI), and the measurement is kept with that KPI missing. Only a
measurement that cannot be read at all (the wrong number of KPIs, unreadable JSON, an
unusable time) is counted by reason in `stats.rejects` and skipped. A source never raises
for bad input once it has started.

- `MeasurementSource` is the base: limit, stop, clock and counters.
- `CallableSource` is the hook for a custom Python collector (a modem, an SNMP poller, ...).
- `sparsetel.edge.replay` holds the file and stream sources: `CsvReplaySource` replays a KPI
  CSV, `JsonLinesSource` reads one JSON measurement per line (stdin in the agent).

Timestamps: paced at a rate, the wall clock at emission (on a regular schedule, so frames stay
regular); as fast as possible, a synthetic clock ``start + i * period_ms``. Generated times
never go backwards, even when the wall clock does.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..shared.kpi import INVALID, OK, Sentinels, parse_value

__all__ = [
    "CallableSource",
    "Measurement",
    "MeasurementSource",
    "SourceStats",
]

log = logging.getLogger(__name__)

MAX_LAG_S = 1.0  # a paced source this far behind its schedule starts a new one
_U64 = 2**64 - 1


@dataclass(frozen=True)
class Measurement:
    """One KPI vector: `t_ms` (epoch ms) and `values` (shape: [D], float32, NaN = missing);
    `pos`, for a source that can resume (CSV replay), how many of its rows it has read."""

    t_ms: int
    values: np.ndarray
    pos: int | None = None


@dataclass
class SourceStats:
    """What a source read: measurements emitted, cells by status (missing, sentinel, invalid),
    invalid cells (not numbers, now NaN) by KPI, rejected measurements by reason."""

    measurements: int = 0
    cells: Counter[str] = field(default_factory=Counter)
    invalid_cells: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurements": self.measurements,
            "cells": dict(self.cells),
            "invalid_cells": dict(self.invalid_cells),
            "rejects": dict(self.rejects),
        }


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Clock:
    """Times for a source: paced wall clock when `rate_hz` is set, else synthetic.

    Paced: measurement i is due at ``t0 + i / rate_hz`` and stamped with the wall clock of
    that instant, so small scheduling jitter never makes a frame irregular. A source that falls
    more than `MAX_LAG_S` (or one period) behind, say a suspended box, re-anchors at the
    present instead of bursting to catch up.
    """

    def __init__(
        self, rate_hz: float | None, period_ms: int, start_ms: int | None, stop: threading.Event
    ) -> None:
        self.rate_hz = rate_hz
        self.period_ms = period_ms
        self.start_ms = start_ms
        self._stop = stop
        self._i = 0
        self._t0 = 0.0
        self._t0_ms = 0.0

    def tick(self) -> int | None:
        """The next measurement's time; None when the source was stopped while waiting."""
        if self._stop.is_set():
            return None
        if self.rate_hz is None:
            if self.start_ms is None:
                self.start_ms = _wall_ms()
            self._i += 1
            return self.start_ms + (self._i - 1) * self.period_ms
        period = 1.0 / self.rate_hz
        now = time.monotonic()
        if self._i == 0 or now - (self._t0 + self._i * period) > max(period, MAX_LAG_S):
            self._t0, self._t0_ms, self._i = now, time.time() * 1000.0, 0
        due = self._t0 + self._i * period
        if due > now and self._stop.wait(due - now):
            return None
        self._i += 1
        return round(self._t0_ms + (self._i - 1) * period * 1000.0)


class MeasurementSource:
    """Base of the sources: iterate it for `Measurement`s; `stop()` ends it early.

    Subclasses implement `_measurements()`; the base applies `limit`, keeps generated
    times monotonic and owns the counters in `stats`.
    """

    def __init__(
        self,
        kpis: Sequence[str],
        sentinels: Sentinels | None = None,
        *,
        rate_hz: float | None = None,
        limit: int | None = None,
        period_ms: int = 1000,
        start_ms: int | None = None,
    ) -> None:
        if not kpis:
            raise ValueError("a source needs at least one KPI")
        if rate_hz is not None and not (math.isfinite(rate_hz) and rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number or None, got {rate_hz}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if period_ms < 1:
            raise ValueError(f"period_ms must be >= 1, got {period_ms}")
        self.kpis = tuple(kpis)
        self.sentinels = sentinels
        self.rate_hz = rate_hz
        self.limit = limit
        self.stats = SourceStats()
        self.resume_key: str | None = None  # set by sources that can resume (`resume`)
        self._stop = threading.Event()
        self._last_ms = -1
        nominal = period_ms if rate_hz is None else max(1, round(1000.0 / rate_hz))
        self._clock = _Clock(rate_hz, nominal, start_ms, self._stop)

    @property
    def period_ms(self) -> int:
        """The nominal spacing of measurements in ms (from `rate_hz` when it is set)."""
        return self._clock.period_ms

    def stop(self) -> None:
        """End the iteration at the next measurement (interrupts a paced wait). Thread-safe."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called (the iteration ended early, not at the source's end)."""
        return self._stop.is_set()

    def resume(self, pos: int, t_ms: int) -> None:
        """Start after the first `pos` rows, the last of them stamped `t_ms`; only sources
        with a `resume_key` can."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume")

    def __iter__(self) -> Iterator[Measurement]:
        if self.limit == 0:
            return
        for measurement in self._measurements():
            if self._stop.is_set():
                return
            self.stats.measurements += 1
            yield measurement
            if self.limit is not None and self.stats.measurements >= self.limit:
                return

    def _measurements(self) -> Iterator[Measurement]:
        raise NotImplementedError

    def _next_time(self) -> int | None:
        """The clock's next time, never before the previous one; None when stopped."""
        t = self._clock.tick()
        if t is None:
            return None
        self._last_ms = max(t, self._last_ms)
        return self._last_ms

    def _wall_time(self) -> int:
        """The wall clock in ms, never before the previous time (for data without times)."""
        return max(_wall_ms(), self._last_ms)

    def _given_time(self, t: object) -> int | None:
        """Check a time that came with the data; None (counted) when it is unusable.

        The caller commits it (``self._last_ms = t``) once the whole measurement is accepted.
        """
        if isinstance(t, float) and t.is_integer():
            t = int(t)
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t <= _U64:
            self._reject("bad_time")
            return None
        if t < self._last_ms:
            self._reject("time_order")
            return None
        return t

    def _reject(self, reason: str) -> None:
        self.stats.rejects[reason] += 1
        log.debug("measurement rejected: %s", reason)

    def _parse_cell(self, cell: object, name: str) -> tuple[float, str]:
        if isinstance(cell, np.generic):  # a numpy scalar from a collector
            cell = cell.item()
        if not (cell is None or isinstance(cell, str | int | float)):
            return math.nan, INVALID
        return parse_value(cell, name, self.sentinels)

    def _parse_cells(self, cells: Sequence[object]) -> np.ndarray | None:
        """D raw cells -> values (shape: [D], float32, NaN = missing); None (counted) when
        there are not D cells. A cell that is not a number is NaN, counted by KPI."""
        if len(cells) != len(self.kpis):
            self._reject("width")
            return None
        values = np.empty(len(self.kpis), dtype=np.float32)
        for j, (cell, name) in enumerate(zip(cells, self.kpis, strict=True)):
            values[j], status = self._parse_cell(cell, name)
            if status != OK:
                self.stats.cells[status] += 1
            if status == INVALID:
                self._invalid(name, cell)
        return values

    def _invalid(self, name: str, cell: object) -> None:
        """Count a cell of KPI `name` that is not a number; the first one per KPI is logged."""
        self.stats.invalid_cells[name] += 1
        if self.stats.invalid_cells[name] == 1:
            log.warning(
                "KPI %r: %.40r is not a number, taken as missing (further ones are counted)",
                name,
                cell,
            )


Collected = Sequence[float] | np.ndarray | Measurement | None


class CallableSource(MeasurementSource):
    """The hook for a custom Python collector.

    `collect()` is called once per measurement and returns D values in the order of `kpis`
    (a sequence or a [D] array; NaN or None = missing), a `Measurement` carrying its own
    time, or None when there is nothing more (the source ends). With `rate_hz` the source
    calls it on that schedule and stamps the wall clock; without, `collect` sets the pace
    itself (block until the next measurement) and the time is the wall clock on return.
    An exception from `collect` is logged and counted ("collector_error"); after
    `max_errors` in a row the source ends.

    Example::

        source = CallableSource(lambda: modem.read_kpis(), ("RSRP", "RSRQ", "SNR"), rate_hz=1)
    """

    def __init__(
        self,
        collect: Callable[[], Collected],
        kpis: Sequence[str],
        sentinels: Sentinels | None = None,
        *,
        rate_hz: float | None = None,
        limit: int | None = None,
        period_ms: int = 1000,
        max_errors: int = 10,
    ) -> None:
        super().__init__(kpis, sentinels, rate_hz=rate_hz, limit=limit, period_ms=period_ms)
        self.collect = collect
        self.max_errors = max_errors

    def _measurements(self) -> Iterator[Measurement]:
        errors = 0
        while not self._stop.is_set():
            t = self._clock.tick() if self.rate_hz is not None else None
            if t is None and self.rate_hz is not None:
                return
            try:
                got = self.collect()
            except Exception:
                errors += 1
                self._reject("collector_error")
                log.warning("collector failed (%s in a row)", errors, exc_info=True)
                if errors >= self.max_errors:
                    log.error("collector failed %s times in a row: source ends", errors)
                    return
                continue
            errors = 0
            if got is None:
                return
            measurement = self._accept(got, t)
            if measurement is not None:
                yield measurement

    def _accept(
        self, got: Sequence[float] | np.ndarray | Measurement, t: int | None
    ) -> Measurement | None:
        if isinstance(got, Measurement):
            t_ms = self._given_time(got.t_ms)
            if t_ms is None:
                return None
            got = got.values
        else:
            t_ms = max(t, self._last_ms) if t is not None else self._wall_time()
        cells = _cells_of(got)
        if cells is None:
            self._reject("width")
            return None
        values = self._parse_cells(cells)
        if values is None:
            return None
        self._last_ms = t_ms
        return Measurement(t_ms, values)


def _cells_of(got: object) -> list[object] | None:
    """A collector's values as a flat list of cells (each parsed on its own, so one bad cell
    costs only itself); None when `got` is not one row of values."""
    try:
        row = got if isinstance(got, np.ndarray) else np.asarray(got, dtype=object)
    except (TypeError, ValueError):
        return None
    if row.ndim != 1:
        return None
    cells: list[object] = row.tolist()
    return cells
