"""serve's MQTT session: a stable client id, a persistent session, a bounded send-ahead
window, and a watch for another client taking the session over.

By default serve's session outlives the service: the broker keeps the subscriptions and
queues what is published while serve restarts (3.1.1: clean_session False; 5: clean_start
False and a session expiry). The broker finds that session by client id, so the id is
derived from what the service serves, not drawn at random: ``sparsetel-serve-<group>``
(``all`` for every group), ``-w<i>`` per worker of ``--workers``, and the host name for a
``shared`` service started on its own (one per host). A configured `broker.client_id`
wins. A clean session (``--clean-session``) is a throwaway for tools and gets a random id.

Two services with one id take the session from each other, again and again, each time the
other reconnects. `TakeoverWatch` notices that and the service logs one clear error line.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = [
    "MAX_RECEIVE_MAXIMUM",
    "SESSION_EXPIRY_S",
    "TakeoverWatch",
    "connect_properties",
    "serve_client_id",
]

SESSION_EXPIRY_S = 86_400  # MQTT 5: how long the broker keeps the session of a serve away
MAX_RECEIVE_MAXIMUM = 65_535  # the largest Receive Maximum MQTT 5 can say
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason: another client connected with this id
_NOT_ID = re.compile(r"[^A-Za-z0-9_.\-]")


def serve_client_id(
    configured: str | None,
    group: str,
    *,
    clean_session: bool = False,
    shared: bool = False,
    host: str | None = None,
) -> str:
    """The client id of one serve: `configured` if set; a random one for a clean session;
    else derived from `group` ("+": all), with this host's name for a `shared` service."""
    if configured is not None:
        return configured
    if clean_session:
        return f"sparsetel-serve-{uuid.uuid4().hex[:12]}"
    name = f"sparsetel-serve-{'all' if group == '+' else group}"
    if shared:
        host = host if host is not None else socket.gethostname()
        name += "-" + (_NOT_ID.sub("-", host)[:64] or "host")
    return name


def connect_properties(persistent: bool, receive_maximum: int) -> Properties:
    """MQTT 5 CONNECT properties: a session expiry when `persistent`, and Receive Maximum,
    the QoS 1 messages the broker may send ahead of our acks (1..65535)."""
    if not 1 <= receive_maximum <= MAX_RECEIVE_MAXIMUM:
        raise ValueError(f"receive_maximum must be in 1..65535, got {receive_maximum}")
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = receive_maximum
    if persistent:
        props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props


class TakeoverWatch:
    """Counts connections taken over by another client with our id: a DISCONNECT saying so
    (MQTT 5), or a connection lost within `short_s` of being made (3.1.1 just closes it).
    `lost()` is True once `times` of them fall within `window_s`, then again only after
    another `window_s` (one log line, not one per reconnect)."""

    def __init__(
        self,
        times: int = 3,
        window_s: float = 60.0,
        short_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.times, self.window_s, self.short_s = times, window_s, short_s
        self._clock = clock
        self._since: float | None = None
        self._events: deque[float] = deque()
        self._quiet_until = float("-inf")
        self.total = 0  # suspected takeovers in all

    def connected(self) -> None:
        self._since = self._clock()

    def lost(self, reason_code: int | None) -> bool:
        """A connection ended unexpectedly (`reason_code`: the MQTT 5 reason, if any); True
        when this makes a repeated takeover that was not reported in the last `window_s`."""
        now = self._clock()
        short = self._since is not None and now - self._since < self.short_s
        self._since = None
        if reason_code != SESSION_TAKEN_OVER and not short:
            return False
        self.total += 1
        self._events.append(now)
        while self._events and now - self._events[0] > self.window_s:
            self._events.popleft()
        if len(self._events) < self.times or now < self._quiet_until:
            return False
        self._quiet_until = now + self.window_s
        return True
