"""What the decoder service does with messages it rejects: a copy on a dead-letter topic, and
limits so that one edge flooding the broker cannot drown the rest.

Every message the ingest rejects (malformed, truncated, oversized, a wrong version, nnz > L,
an index >= K, a flood, ...) is counted by reason and published, QoS 1, to
``sparsetel/v1/{group}/DEAD/{edge}`` (``_unknown`` for the parts of a topic that is not
ours) as JSON::

    {"reason": "...", "topic": "...", "received_ms": ..., "size": bytes,
     "payload_b64": "...", "truncated": false}

with at most `MAX_COPY` bytes of the payload, so an operator can see exactly what came. The
copies are rate-limited per edge (`TokenBucket`): a flood is counted in full but copied only
at `COPY_RATE`. The same kind of bucket, much wider, limits DATA frames per edge (`flood`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable

from ...shared.errors import WireError
from ...shared.topics import dead_letter_topic, parse_topic

__all__ = ["COPY_BURST", "COPY_RATE", "MAX_COPY", "TokenBucket", "dead_letter"]

MAX_COPY = 64 * 1024  # payload bytes a dead letter carries at most
COPY_RATE = 10.0  # dead letters per second and edge, at most ...
COPY_BURST = 50.0  # ... after a burst of this many
UNKNOWN = "_unknown"


class TokenBucket:
    """Per key: `rate` events per second on average, `burst` at once; `allow(key)` says
    whether one more may pass now (and takes its token).

    A key left alone for burst/rate seconds has a full bucket again, the same as a key never
    seen, so it is forgotten: a sweep, at most once per that time (and per second), drops
    them. Keys that come once and never again (an edge id made up per message) hold no
    memory for long."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (rate > 0 and burst >= 1):
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._full_s = burst / rate  # untouched this long, a key's bucket is full again
        self._sweep_at = clock() + max(self._full_s, 1.0)

    def __len__(self) -> int:
        return len(self._state)

    def allow(self, key: str) -> bool:
        now = self._clock()
        if now >= self._sweep_at:
            self._sweep(now)
        tokens, then = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            return False
        self._state[key] = (tokens - 1.0, now)
        return True

    def _sweep(self, now: float) -> None:
        """Forget the keys whose bucket is full again (into a new dict: a dict keeps its
        size after deletes)."""
        recent = now - self._full_s
        self._state = {k: v for k, v in self._state.items() if v[1] > recent}
        self._sweep_at = now + max(self._full_s, 1.0)


def dead_letter(topic: str, payload: bytes, reason: str, received_ms: int) -> tuple[str, bytes]:
    """The dead-letter topic and JSON payload for a rejected message."""
    try:
        parts = parse_topic(topic)
        group, edge = parts.group, parts.edge
    except WireError:
        group, edge = UNKNOWN, UNKNOWN
    body = {
        "reason": reason,
        "topic": topic[:1024],
        "received_ms": received_ms,
        "size": len(payload),
        "payload_b64": base64.b64encode(payload[:MAX_COPY]).decode("ascii"),
        "truncated": len(payload) > MAX_COPY,
    }
    return dead_letter_topic(group, edge), json.dumps(body, separators=(",", ":")).encode()
