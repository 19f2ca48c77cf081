"""What serve holds between paho's network thread and its worker: the `Inbox` of messages,
bounded in count and in bytes, and the `Acknowledger` that acknowledges each on the
connection it came on.

The network thread puts; when the inbox is full it waits for room (`Inbox.put` with a
timeout, in a loop in the service), so paho stops reading the socket and TCP holds the
broker back: nothing is acknowledged that was not queued. A payload larger than any valid
one of its topic kind (`payload_limit`) never enters: the service rejects it first.

MQTT packet ids are per connection. A message taken on a connection that has since dropped
is not acknowledged on the next one, where its id may name another message: the broker
delivers it again to the persistent session, and the store drops the repeat.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, NamedTuple, Protocol

from ...shared.wire import MAX_FRAME_BYTES

__all__ = ["MAX_CONTROL_BYTES", "Acknowledger", "Inbox", "Message", "payload_limit"]

MAX_CONTROL_BYTES = 64 * 1024  # a birth, death or heartbeat is a few hundred bytes of JSON


class Message(NamedTuple):
    """One MQTT message as the worker takes it. `conn`: the connection it came on (see
    `Acknowledger`); `dead`: for a message rejected before it was queued, its dead letter
    (topic, body), and `payload` is empty."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ms: int
    conn: int = 0
    dead: tuple[str, bytes] | None = None

    @property
    def size(self) -> int:
        """Bytes it holds in the inbox (its payload, topic and dead letter)."""
        extra = len(self.dead[1]) if self.dead is not None else 0
        return len(self.payload) + len(self.topic) + extra


def payload_limit(topic: str) -> int:
    """The largest payload a valid message on `topic` can have: a frame on DATA, a small
    JSON document on every other kind."""
    parts = topic.split("/")
    return MAX_FRAME_BYTES if len(parts) == 5 and parts[3] == "DATA" else MAX_CONTROL_BYTES


class Inbox:
    """A FIFO of at most `max_messages` messages and `max_bytes` bytes (`Message.size`); one
    message is always let into an empty inbox, however large, so nothing can wedge it."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError(f"need max_messages, max_bytes >= 1, got {max_messages}, {max_bytes}")
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: deque[Message] = deque()
        self._bytes = 0
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._changed:
            return self._bytes

    def _room_for(self, size: int) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_messages and self._bytes + size <= self.max_bytes

    def put(self, msg: Message, timeout: float | None = None) -> bool:
        """Queue `msg`, waiting up to `timeout` seconds for room (0: not at all); False
        when there was none."""
        size = msg.size
        with self._changed:
            if not self._changed.wait_for(lambda: self._room_for(size), timeout):
                return False
            self._items.append(msg)
            self._bytes += size
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest message, waiting up to `timeout` seconds for one; None if none came."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), timeout):
                return None
            return self._pop()

    def take(self, n: int) -> list[Message]:
        """Up to `n` messages that are already waiting (never waits)."""
        with self._changed:
            return [self._pop() for _ in range(min(n, len(self._items)))]

    def _pop(self) -> Message:
        msg = self._items.popleft()
        self._bytes -= msg.size
        self._changed.notify_all()
        return msg


class _AckClient(Protocol):
    def ack(self, mid: int, qos: int) -> Any: ...


class Acknowledger:
    """Acknowledges QoS > 0 messages through `client`, only on the connection each came on.

    The service calls `connection_changed()` from paho's on_connect and on_disconnect;
    `current` is the number to stamp on each message received. The lock makes an ack and a
    change of connection exclusive, so a PUBACK is either queued before paho drops its
    outgoing packets for the reconnect, or not sent at all."""

    def __init__(self) -> None:
        self.client: _AckClient | None = None
        self._conn = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> int:
        with self._lock:
            return self._conn

    def connection_changed(self) -> None:
        with self._lock:
            self._conn += 1

    def ack(self, msg: Message) -> bool | None:
        """True when acknowledged, False when its connection is gone, None when it needs no
        acknowledgement (QoS 0, or no client: fed in-process)."""
        if msg.qos == 0 or self.client is None:
            return None
        with self._lock:
            if msg.conn != self._conn:
                return False
            self.client.ack(msg.mid, msg.qos)
            return True
