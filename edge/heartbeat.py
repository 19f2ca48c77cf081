"""The agent's heartbeat on ``sparsetel/v1/{group}/HEALTH/{edge}``: what an operator needs to
see that an edge is alive and well, every `health_interval_s`, as compact JSON (QoS 0: the
next beat follows soon).

A beat carries the edge, group and bdSeq, a timestamp and the uptime, the model running, the
counters (measurements, next seq, frames sent and acknowledged, replayed, rejects by reason),
the spool (depth, bytes, frames dropped, and the most recent dropped bdSeq/seq ranges, so the
cloud stops waiting for them) and the encode latency since the previous beat: mean
milliseconds per measurement and the slowest batch (`EncodeClock`). Every beat is built
through the schema the cloud reads it with (`sparsetel.shared.health`), so it validates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..shared.health import beat_payload

__all__ = ["EncodeClock", "Heartbeat"]

log = logging.getLogger(__name__)


class EncodeClock:
    """Encode time since it was last read; thread-safe (the frame loop records, the
    heartbeat thread reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0
        self._count = 0
        self._worst_ms = 0.0

    def record(self, seconds: float, measurements: int) -> None:
        """One batch of `measurements` took `seconds` to encode."""
        with self._lock:
            self._seconds += seconds
            self._count += measurements
            self._worst_ms = max(self._worst_ms, seconds * 1000)

    def take(self) -> tuple[float | None, float]:
        """(mean ms per measurement or None if none, slowest batch in ms); then start over."""
        with self._lock:
            per = self._seconds * 1000 / self._count if self._count else None
            worst = self._worst_ms
            self._seconds, self._count, self._worst_ms = 0.0, 0, 0.0
        return per, worst


class Heartbeat:
    """Builds and publishes beats. `counters()` returns the agent's current figures (see the
    module docstring); `publish(payload)` sends one."""

    def __init__(
        self,
        counters: Callable[[], dict[str, Any]],
        publish: Callable[[bytes], object],
        interval_s: float,
    ) -> None:
        self.clock = EncodeClock()
        self.started = time.monotonic()
        self._counters = counters
        self._publish = publish
        self.interval_s = interval_s

    def payload(self) -> bytes:
        """The next beat's JSON; reads (and resets) the encode latency. ValueError when the
        counters do not fit the schema (the beat is skipped and logged, see `run`)."""
        per, worst = self.clock.take()
        body = {
            "timestamp_ms": time.time_ns() // 1_000_000,
            "uptime_s": round(time.monotonic() - self.started, 3),
            **self._counters(),
            "encode_ms_per_measurement": per,
            "encode_batch_ms_max": worst,
        }
        return beat_payload(body)

    def run(self, stopping: threading.Event) -> None:
        """Thread body: one beat now, then one every `interval_s` until `stopping`."""
        while True:
            try:
                self._publish(self.payload())
            except Exception:  # a heartbeat must never take the agent down
                log.exception("heartbeat failed")
            if stopping.wait(self.interval_s):
                return

    def start(self, stopping: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(stopping,), name="sparsetel-health", daemon=True
        )
        thread.start()
        return thread
