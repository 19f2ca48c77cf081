"""The decoder service's counters (`ServiceStats`) and its rate-limited warnings (`Throttle`)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["MAX_GAP_EDGES", "OTHER_EDGES", "ServiceStats", "Throttle"]

MAX_GAP_EDGES = 10_000  # edges whose sequence gaps are counted one by one
OTHER_EDGES = "(other edges)"  # where the gaps of the edges beyond are counted


class ServiceStats:
    """Thread-safe counters; `snapshot()` is JSON-able."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._rejects: Counter[str] = Counter()
        self._gaps: Counter[str] = Counter()
        self._undecodable: Counter[str] = Counter()  # measurements given up, by reason
        self._started = time.monotonic()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            if name == "records_stored":
                self._lock.notify_all()

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejects[reason] += 1

    def undecodable(self, reason: str, frames: int, measurements: int) -> None:
        """Count frames of a temporal-codec chain given up (`cloud.ingest.chains`)."""
        with self._lock:
            self._undecodable[reason] += measurements
            self._counts["undecodable_frames"] += frames
            self._counts["undecodable_measurements"] += measurements

    def gap(self, edge: str, missing: int) -> None:
        """Count a sequence gap of `edge`; past MAX_GAP_EDGES edges (one entry each, for as
        long as the service runs), the gaps of further edges are counted together."""
        with self._lock:
            if edge not in self._gaps and len(self._gaps) >= MAX_GAP_EDGES:
                edge = OTHER_EDGES
            self._gaps[edge] += 1
            self._counts["missing_frames"] += missing

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def rejects(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejects)

    def wait_for(self, name: str, n: int, timeout: float | None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._counts[name] >= n, timeout)

    def snapshot(self) -> dict[str, Any]:
        names = ("messages", "frames_ok", "records_stored", "duplicates", "predictions")
        more: tuple[str, ...] = ("births", "deaths", "stale_deaths", "missing_frames")
        more = (*more, "late_frames", "queue_full")
        more = (*more, "parked", "unparked", "dead_letters", "dead_letters_held")
        more = (*more, "acks", "acks_stale", "queue_waits", "connects", "takeovers")
        more = (*more, "frames_v3", "pending", "pending_decoded", "undecodable_measurements")
        with self._lock:
            out: dict[str, Any] = {n: self._counts[n] for n in (*names, *more)}
            out.update({k: v for k, v in self._counts.items() if k not in out})
            out["rejects"] = dict(sorted(self._rejects.items()))
            out["gaps"] = dict(sorted(self._gaps.items()))
            out["undecodable"] = dict(sorted(self._undecodable.items()))
            out["uptime_s"] = round(time.monotonic() - self._started, 3)
        return out


class Throttle:
    """At most one log line per key and interval on `logger`; says how many it held back."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] += 1
            return
        self._next[key] = now + self.interval_s
        held, self._held[key] = self._held[key], 0
        if held:
            self.logger.warning(msg + " (and %d more like it)", *args, held)
        else:
            self.logger.warning(msg, *args)
