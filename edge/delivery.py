"""Store-and-forward delivery: every frame goes to the on-disk spool, then to the broker, and
leaves the spool only when the broker has acknowledged it -- or, with ``confirm = "store"``
(`confirm_wait_s` set), only when the cloud's receipt says the store has it.

- `deliver` spools a frame (with the source position it reaches, in the same transaction, so a
  restarted replay resumes right after it) and hands it to the publisher. When the publisher's
  in-memory queue is full (a long outage) the frame waits in the spool: it is *deferred*, not
  dropped, and counted as such (`DeliveryStats.deferred`; logged once per backlog).
- `resend` publishes deferred frames again, oldest first, flagged historical, whenever the
  memory queue has drained to half.
- `replay` publishes what earlier runs left in the spool (broker away, agent killed) before
  anything new, oldest first, flagged historical, under their own bdSeq and seq, so the
  cloud's (edge, bdSeq, seq) key drops a frame that was in fact delivered before a kill.
- `resend_overdue` (confirming by the store) publishes again, flagged historical, frames the
  broker took but no receipt named within `confirm_wait_s` (doubling per try, see
  `Spool.overdue`): a broker that restarted, or a decoder that was away, lost them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..shared.errors import WireError
from ..shared.receipt import decode_receipt
from .publisher import Publisher
from .spool import Spool, SpoolError, as_historical

__all__ = ["Delivery", "DeliveryStats"]

log = logging.getLogger(__name__)


@dataclass
class DeliveryStats:
    """Frames replayed from earlier runs, deferred for want of memory, and resent; receipts
    taken and frames published again for want of one."""

    replayed: int = 0
    deferred: int = 0
    resent: int = 0
    receipts: int = 0
    bad_receipts: int = 0
    unconfirmed_resent: int = 0
    damaged: int = 0


class Delivery:
    """Frames through `spool` to `publisher`. Wire the publisher's ``on_frame_acked`` to
    `on_broker_ack` and its ``on_receipt`` to `on_receipt`. `confirm_wait_s`: None = the
    broker's PUBACK is enough; else how long a frame waits for the store's receipt before it
    is published again."""

    def __init__(
        self,
        spool: Spool,
        publisher: Publisher,
        chunk: int = 50,
        confirm_wait_s: float | None = None,
    ) -> None:
        if confirm_wait_s is not None and not confirm_wait_s > 0:
            raise ValueError(f"confirm_wait_s must be > 0, got {confirm_wait_s}")
        self.spool = spool
        self.publisher = publisher
        self.chunk = chunk
        self.confirm_wait_s = confirm_wait_s
        self._next_overdue_check = 0.0  # monotonic: look for late receipts at most this often
        self.stats = DeliveryStats()
        self.deferred: deque[int] = deque()  # spool ids the memory queue had no room for

    def deliver(
        self,
        bd_seq: int,
        seq: int,
        payload: bytes,
        cursor: tuple[str, int, int] | None,
        starts: bool = True,
    ) -> str | None:
        """Spool and publish one frame; None once it is safe (published, or deferred in the
        spool), else the reason it was dropped ("spool"). `starts`: it starts a chain (see
        `edge.spool`; a version 3 frame that continues its predecessor does not)."""
        try:
            tag = self.spool.put(bd_seq, seq, payload, cursor, starts)
        except SpoolError as exc:
            log.error("frame bdSeq %s seq %s dropped: %s", bd_seq, seq, exc)
            return "spool"
        if not self.publisher.publish_frame(payload, tag=tag):
            self._defer(tag)
        return None

    def _defer(self, tag: int) -> None:
        """The memory queue had no room for the frame spooled under `tag`: it waits in the
        spool, resent once the queue drains (or by the next run)."""
        if not self.deferred:
            log.warning(
                "the broker is behind: new frames wait in the spool (%s frames there) and are "
                "sent as it catches up",
                self.spool.depth,
            )
        self.deferred.append(tag)
        self.stats.deferred += 1

    def on_broker_ack(self, tag: int) -> None:
        """The broker has the frame spooled under `tag` (paho's thread)."""
        if self.confirm_wait_s is None:
            self.spool.ack([tag])
        else:
            self.spool.sent([tag])

    def on_receipt(self, payload: bytes) -> None:
        """A receipt from the cloud: forget the frames it names (paho's thread)."""
        try:
            bd_seq, ranges = decode_receipt(payload)
        except WireError as exc:
            self.stats.bad_receipts += 1
            log.warning("ignored a receipt: %s", exc)
            return
        self.stats.receipts += 1
        self.spool.confirm(bd_seq, ranges)

    def resend_overdue(self) -> None:
        """Publish again, flagged historical, frames whose receipt is late (room permitting)."""
        now = time.monotonic()
        if self.confirm_wait_s is None or now < self._next_overdue_check:
            return
        self._next_overdue_check = now + min(1.0, self.confirm_wait_s / 4)
        while self.publisher.connected and self.publisher.has_room():
            late = self.spool.overdue(self.confirm_wait_s, self.chunk)
            for frame in late:
                payload = self._historical(frame.id, frame.payload)
                if payload is not None:
                    self.publisher.publish_frame(payload, tag=frame.id)
            self.stats.unconfirmed_resent += len(late)
            if len(late) < self.chunk:
                break

    def wait_for_receipts(self, timeout: float) -> bool:
        """Confirming by the store: wait up to `timeout` s until the spool is empty, resending
        what is overdue meanwhile; True once empty (or when the broker's PUBACK suffices)."""
        if self.confirm_wait_s is None:
            return True
        deadline = time.monotonic() + timeout
        while self.spool.depth and time.monotonic() < deadline:
            self.resend_overdue()
            time.sleep(0.1)
        return not self.spool.depth

    def resend(self) -> None:
        """Publish deferred frames from the spool, oldest first, flagged historical, while
        the memory queue has room (a frame the spool has since dropped is skipped)."""
        while self.deferred and self.publisher.has_room():
            tag = self.deferred.popleft()
            frame = self.spool.get(tag)
            payload = None if frame is None else self._historical(tag, frame.payload)
            if payload is None:
                continue
            if not self.publisher.publish_frame(payload, tag=tag):
                self.deferred.appendleft(tag)  # paho refused it: try again next time
                return
            self.stats.resent += 1

    def _historical(self, spool_id: int, payload: bytes) -> bytes | None:
        """The spooled frame flagged historical; None for a frame damaged on disk, which no
        decoder would take and no resend can mend: dropped from the spool, counted, logged."""
        try:
            return as_historical(payload)
        except WireError as exc:
            self.spool.discard(spool_id, "damaged on disk")
            self.stats.damaged += 1
            log.error("spooled frame %s is damaged on disk (%s): dropped", spool_id, exc)
            return None

    def replay(self, stopping: threading.Event) -> None:
        """Publish what earlier runs left in the spool, oldest first, flagged historical."""
        after = 0
        while not stopping.is_set():
            chunk = self.spool.pending(after=after, limit=self.chunk)
            if not chunk:
                break
            for old in chunk:
                payload = self._historical(old.id, old.payload)
                if payload is None:
                    continue
                if self.publisher.publish_frame(payload, tag=old.id):
                    self.stats.replayed += 1
                else:  # the memory queue is full (a long outage): resent once it drains
                    self._defer(old.id)
            after = chunk[-1].id
        if self.stats.replayed:
            log.info("replayed %s spooled frames, flagged historical", self.stats.replayed)
