"""The agent's intake: a measurement source read by a thread of its own into a bounded queue,
and taken from it by the frame loop in batches.

A blocking source (stdin, a collector waiting on a modem) must never hold back a frame that
is due or a stop that was asked for, so the frame loop never reads the source itself: it waits
on the queue with a short timeout (`POLL_S`) and looks at its stop flag in between. The
queue holds four batches, so a slow broker slows the reader rather than filling memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from .source import Measurement, MeasurementSource

__all__ = ["POLL_S", "Intake"]

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting frame loop looks at its stop flag
_END = object()  # the reader's last item: the source is exhausted


class Intake:
    """`source` read into a queue by a thread; `gather` takes up to `batch` measurements.

    `error` says why the source failed, if it did; `done` is True when it ended by itself (not
    stopped, not failed), e.g. a CSV read to its end.
    """

    def __init__(
        self,
        source: MeasurementSource,
        batch: int,
        max_delay_s: float,
        stopping: threading.Event,
    ) -> None:
        self.source = source
        self.batch = batch
        self.max_delay_s = max_delay_s
        self.stopping = stopping
        self.queue: queue.Queue[object] = queue.Queue(maxsize=4 * batch)
        self.error: str | None = None
        self.done = False

    def start(self) -> None:
        threading.Thread(target=self._read, name="sparsetel-source", daemon=True).start()

    def _read(self) -> None:
        """Reader thread: the source's measurements into the queue, then _END."""
        try:
            for measurement in self.source:
                if not self._put(measurement):
                    break
            else:
                self.done = not self.source.stopped
        except Exception as exc:  # a source must not take the agent down without a word
            self.error = f"source failed: {exc}"
            log.exception("source failed")
        finally:
            self._put(_END)

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def gather(
        self,
        between: Callable[[], None],
        come_back: bool = False,
        arrived: Callable[[Measurement], None] | None = None,
    ) -> tuple[list[Measurement], bool]:
        """Up to `batch` measurements, or fewer once `max_delay_s` has passed since the first;
        (batch, True) when the source ended or a stop was asked.

        `between` runs every time the loop waits (no frame is being encoded then); with
        `come_back` the call returns within `max_delay_s` even when nothing arrives;
        `arrived` is given each measurement as it is taken (not those drained at a stop).
        """
        batch: list[Measurement] = []
        deadline = time.monotonic() + self.max_delay_s if come_back else float("inf")
        while len(batch) < self.batch:
            between()
            if self.stopping.is_set():
                return batch + self._drain(), True
            wait = min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                return batch, False
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is _END:
                return batch, True
            assert isinstance(item, Measurement)
            batch.append(item)
            if arrived is not None:
                arrived(item)
            if len(batch) == 1:
                deadline = time.monotonic() + self.max_delay_s
        return batch, False

    def _drain(self) -> list[Measurement]:
        """What the reader had already queued when the stop came."""
        items: list[Measurement] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, Measurement):
                items.append(item)
