"""The chain of version 3 frames an agent running a temporal codec sends, and when it keys.

The temporal codec codes each measurement against the previous decoded one, so the cloud
decodes a CHAINED frame (`shared.chainframe`) only from the state its predecessor left. The
agent keeps that state (`ChainState`, the encoder's own copy of what the cloud will hold)
from frame to frame, with the time of the last measurement sent (a chained frame's times are
coded against it), and decides for each frame whether it starts a new chain from a key
measurement:

- at the first frame of a bdSeq (a fresh `FrameChain`), and after `cut`: a model switch,
  a frame that could not be built or sent, a spool that dropped the chain's frames;
- when `key_interval` measurements, or `key_interval_ms` of measurement time, have passed
  since the last key.

Keys come ONLY at the start of a frame: a range coder cannot be entered mid-payload, and the
cloud must be able to decode a frame that starts a chain on its own. So when a key falls due
inside a batch, `split` ends the frame before it and the next frame starts the new chain;
every other frame continues its predecessor, and a 1 Hz edge sending a frame a second keeps
the temporal gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..shared.temporalcodec import ChainState

__all__ = ["ChainLink", "FrameChain"]


@dataclass(frozen=True)
class ChainLink:
    """Where the chain stands after its latest frame: the decoder state it left, the time of
    its last measurement, the measurements since the last key (that key included) and the
    time of that key."""

    state: ChainState
    last_ms: int
    since_key: int
    key_ms: int


class FrameChain:
    """The agent's chain: `split` plans the next frame, `advance` records a frame sent,
    `cut` makes the next frame start a new chain. `key_interval` >= 1 measurements;
    `key_interval_ms` None (off) or > 0."""

    def __init__(self, key_interval: int, key_interval_ms: int | None = None) -> None:
        if key_interval < 1 or (key_interval_ms is not None and key_interval_ms < 1):
            raise ValueError("key_interval and key_interval_ms must be positive")
        self.key_interval = key_interval
        self.key_interval_ms = key_interval_ms
        self.link: ChainLink | None = None
        self.keys = 0  # frames that started a chain

    @property
    def state(self) -> ChainState | None:
        """The state the next chained frame continues (None: the next frame keys)."""
        return None if self.link is None else self.link.state

    @property
    def last_ms(self) -> int | None:
        return None if self.link is None else self.link.last_ms

    def cut(self) -> None:
        """The chain cannot go on (switch, a frame lost, the spool dropped it): key next."""
        self.link = None

    def due(self, since_key: int, key_ms: int, t_ms: int) -> bool:
        """Whether a key falls due at a measurement at `t_ms`, `since_key` measurements after
        the last key (that key included), which was at `key_ms`."""
        if since_key >= self.key_interval:
            return True
        return self.key_interval_ms is not None and t_ms - key_ms >= self.key_interval_ms

    def opening(self, t_ms: int) -> tuple[bool, int, int]:
        """For a next frame whose first measurement is at `t_ms`: whether it starts a new
        chain, and the measurements since the last key and that key's time before it (what
        `due` asks about each measurement after it)."""
        link = self.link
        key = link is None or self.due(link.since_key, link.key_ms, t_ms)
        if key or link is None:
            return True, 0, t_ms
        return False, link.since_key, link.key_ms

    def split(self, times_ms: Sequence[int]) -> tuple[bool, int]:
        """For measurements at `times_ms` (non-empty, as they come): whether the next frame
        starts a new chain (its first measurement a key), and how many of them it holds at
        most -- up to, not including, the next measurement a key falls due at."""
        if not times_ms:
            raise ValueError("a frame needs at least one measurement")
        key, since, key_ms = self.opening(times_ms[0])
        n = 0
        for t in times_ms:
            if n and self.due(since, key_ms, t):
                break
            since, n = since + 1, n + 1
        return key, n

    def advance(self, key: bool, times_ms: Sequence[int], state: ChainState) -> None:
        """A frame of measurements at `times_ms` went out (spooled): `key` it started a new
        chain; `state` is what it left (`Decoded.state`)."""
        link = self.link
        if key or link is None:
            if not key:
                raise RuntimeError("a frame that continues no chain must start one")
            self.keys += 1
            since, key_ms = len(times_ms), times_ms[0]
        else:
            since, key_ms = link.since_key + len(times_ms), link.key_ms
        self.link = ChainLink(state, times_ms[-1], since, key_ms)
