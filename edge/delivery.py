"""Store-and-forward delivery: every frame goes to the on-disk spool, then to the broker, and
leaves the spool only when the broker has acknowledged it.

- `deliver` spools a frame (with the source position it reaches, in the same transaction, so a
  restarted replay resumes right after it) and hands it to the publisher. When the publisher's
  in-memory queue is full (a long outage) the frame waits in the spool: it is *deferred*.
- `resend` publishes deferred frames again, oldest first, flagged historical, whenever the
  memory queue has drained to half.
- `replay` publishes what earlier runs left in the spool (broker away, agent killed) before
  anything new, oldest first, flagged historical, under their own bdSeq and seq, so the
  cloud's (edge, bdSeq, seq) key drops a frame that was in fact delivered before a kill.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

from .publisher import Publisher
from .spool import Spool, SpoolError, as_historical

__all__ = ["Delivery", "DeliveryStats"]

log = logging.getLogger(__name__)


@dataclass
class DeliveryStats:
    """Frames replayed from earlier runs, deferred for want of memory, and resent."""

    replayed: int = 0
    deferred: int = 0
    resent: int = 0


class Delivery:
    """Frames through `spool` to `publisher`; acknowledgements remove them from the spool
    (wire the publisher's ``on_frame_acked`` to `Spool.ack`)."""

    def __init__(self, spool: Spool, publisher: Publisher, chunk: int = 50) -> None:
        self.spool = spool
        self.publisher = publisher
        self.chunk = chunk
        self.stats = DeliveryStats()
        self.deferred: deque[int] = deque()  # spool ids the memory queue had no room for

    def deliver(
        self, bd_seq: int, seq: int, payload: bytes, cursor: tuple[str, int, int] | None
    ) -> str | None:
        """Spool and publish one frame; None once it is safe (published, or deferred in the
        spool), else the reason it was dropped ("spool")."""
        try:
            tag = self.spool.put(bd_seq, seq, payload, cursor)
        except SpoolError as exc:
            log.error("frame bdSeq %s seq %s dropped: %s", bd_seq, seq, exc)
            return "spool"
        if not self.publisher.publish_frame(payload, tag=tag):
            self.deferred.append(tag)  # resent once the queue drains, or by the next run
            self.stats.deferred += 1
        return None

    def resend(self) -> None:
        """Publish deferred frames from the spool, oldest first, flagged historical, while
        the memory queue has room (a frame the spool has since dropped is skipped)."""
        while self.deferred and self.publisher.has_room():
            tag = self.deferred.popleft()
            frame = self.spool.get(tag)
            if frame is not None:
                self.publisher.publish_frame(as_historical(frame.payload), tag=tag)
                self.stats.resent += 1

    def replay(self, stopping: threading.Event) -> None:
        """Publish what earlier runs left in the spool, oldest first, flagged historical."""
        after = 0
        while not stopping.is_set():
            chunk = self.spool.pending(after=after, limit=self.chunk)
            if not chunk:
                break
            for old in chunk:
                if self.publisher.publish_frame(as_historical(old.payload), tag=old.id):
                    self.stats.replayed += 1
                else:  # the memory queue is full (a long outage): resent once it drains
                    self.deferred.append(old.id)
                    self.stats.deferred += 1
            after = chunk[-1].id
        if self.stats.replayed:
            log.info("replayed %s spooled frames, flagged historical", self.stats.replayed)
