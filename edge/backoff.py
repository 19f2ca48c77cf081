"""Reconnect waits of the edge's MQTT client: exponential, with jitter, so a fleet cut off
together does not come back in lockstep."""

from __future__ import annotations

import random

__all__ = ["RECONNECT_MAX_S", "RECONNECT_MIN_S", "Backoff"]

RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 60.0


class Backoff:
    """Reconnect waits: the n-th is drawn uniformly from [c/2, c], c = min(cap_s, base_s * 2**n)
    ("equal jitter"): it grows like plain exponential backoff, and thousands of edges that
    lost the broker together spread their reconnects over half of each window."""

    def __init__(
        self,
        base_s: float = RECONNECT_MIN_S,
        cap_s: float = RECONNECT_MAX_S,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        self.base_s, self.cap_s = base_s, cap_s
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The wait before the next attempt, in seconds."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        """Connected: the next loss starts again from `base_s`."""
        self._attempt = 0
