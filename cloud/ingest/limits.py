"""Bounds on what senders outside the decoder service can make it keep (`IngestLimits`).

Anyone who may publish on a DATA topic can name a model nobody has (its frame is parked), an
(edge, bdSeq, seq) that is stored already with other content (a clone), a time millions of
years away, or an edge id never seen before (per-edge state in memory). Each of these is
bounded here:

- parked frames, held frames (refused but kept for an operator: clones, and frames
  outside the time window) and pending frames (version 3 chained frames waiting for their
  predecessor, `cloud.ingest.chains`), per edge and in all (`HeldCounts`, counted in
  memory and seeded from the store at start, so no COUNT runs per frame). Beyond a bound
  the frame is refused without a receipt: a confirming edge keeps it in its spool and sends
  it again later.
- per-edge state in memory is released once an edge is quiet for `idle_s`.
- a frame whose records lie outside a window around its arrival is held and refused for
  good, with a receipt (`time_window_error`), so no edge resends it forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...shared.errors import ConfigError
from ...shared.wire import Frame

__all__ = ["HeldCounts", "IngestLimits"]

DAY_S = 86_400.0
_YEAR_S = 365.25 * DAY_S


@dataclass(frozen=True)
class IngestLimits:
    """What the ingest keeps for senders, at most (``[limits]`` in the serve config).

    - `parked_per_edge`, `parked_total`: frames of models not registered yet, parked per
      edge and in all (10,000 per edge: about three hours of an edge sending a frame a
      second, as it does at 1 Hz; 1,000,000 in all: a hundred edges' worth, a few hundred
      MB at a few hundred bytes a frame). Beyond: refused "park_full", no receipt.
    - `held_per_edge`, `held_total`: frames refused but kept in ``held_frames`` (clones,
      frames outside the time window), bounded the same way (refused "held_full" beyond,
      no receipt). Every frame of an edge whose clock is years off is held: 10,000 is
      about six days of it at 50 measurements a frame and 1 Hz.
    - `pending_per_edge`, `pending_total`: chained frames kept until their predecessor is
      decoded (the same sizes; refused "pending_full" beyond, no receipt: the edge sends
      it again later, by which time its predecessor may be there).
    - `frame_max_age_s`: a record older than this at arrival refuses its frame for good
      ("time_window", held, with a receipt). The edge's spool keeps frames 7 days
      (`spool_max_age_s`); 8 days leaves a day for clock skew. Raise it (up to 100 years) to
      store a replay of old data (``sparsetel edge --time-column``).
    - `frame_max_ahead_s`: the same for a record this far ahead of arrival (1 day).
      Both are at most 100 years, so a time the store cannot hold (past an int64 of
      milliseconds, as 2**64-1 is) never passes.
    - `idle_s`: an edge quiet this long has its prediction history released from memory;
      its next frame reads it back from the store. (The flood and dead-letter buckets
      forget a key by themselves, once its bucket is full again: `TokenBucket`.)
    """

    parked_per_edge: int = 10_000
    parked_total: int = 1_000_000
    held_per_edge: int = 10_000
    held_total: int = 1_000_000
    pending_per_edge: int = 10_000
    pending_total: int = 1_000_000
    frame_max_age_s: float = 8 * DAY_S
    frame_max_ahead_s: float = DAY_S
    idle_s: float = 600.0

    def __post_init__(self) -> None:
        """ConfigError naming the key (``limits.X``, as in the serve config) when a value is
        out of bounds."""
        checks = [
            ("parked_per_edge", 0 <= self.parked_per_edge <= 10**7, "0..10000000"),
            ("parked_total", self.parked_per_edge <= self.parked_total <= 10**9,
             "parked_per_edge..1000000000"),
            ("held_per_edge", 0 <= self.held_per_edge <= 10**7, "0..10000000"),
            ("held_total", self.held_per_edge <= self.held_total <= 10**9,
             "held_per_edge..1000000000"),
            ("pending_per_edge", 0 <= self.pending_per_edge <= 10**7, "0..10000000"),
            ("pending_total", self.pending_per_edge <= self.pending_total <= 10**9,
             "pending_per_edge..1000000000"),
            ("frame_max_age_s", 0 < self.frame_max_age_s <= 100 * _YEAR_S, "(0, 100 years]"),
            ("frame_max_ahead_s", 0 < self.frame_max_ahead_s <= 100 * _YEAR_S, "(0, 100 years]"),
            ("idle_s", 1 <= self.idle_s <= 7 * DAY_S, "[1 s, 7 days]"),
        ]  # fmt: skip
        for key, ok, bounds in checks:
            if not ok:
                raise ConfigError(f"must be in {bounds}", key=f"limits.{key}")

    def time_window_error(self, frame: Frame, received_ms: int) -> str | None:
        """Why `frame`'s record times lie outside the window around `received_ms`, or None."""
        return self.times_error([r.t_ms for r in frame.records], received_ms)

    def times_error(self, times: Sequence[int], received_ms: int) -> str | None:
        """Why record `times` lie outside the window around `received_ms`, or None."""
        first, last = min(times), max(times)
        if first < received_ms - self.frame_max_age_s * 1000:
            return f"a record is {(received_ms - first) / 1000:.0f} s older than its arrival"
        if last > received_ms + self.frame_max_ahead_s * 1000:
            return f"a record is {(last - received_ms) / 1000:.0f} s ahead of its arrival"
        return None


class HeldCounts:
    """How many frames one table holds per edge and in all, against the bounds: kept in
    memory (seeded from the store), so checking a bound costs no query.

    With several services on one database each counts what it adds on top of the seed, so
    the table can hold up to that many times a bound; a restart re-reads the truth."""

    def __init__(self, per_edge: int, total: int, seed: Mapping[str, int]) -> None:
        self.per_edge, self.max_total = per_edge, total
        self._by_edge = {str(e): int(n) for e, n in seed.items() if n > 0}
        self.total = sum(self._by_edge.values())

    def full(self, edge: str) -> bool:
        """Whether one more frame of `edge` would pass a bound."""
        return self.total >= self.max_total or self._by_edge.get(edge, 0) >= self.per_edge

    def add(self, edge: str, n: int = 1) -> None:
        self._by_edge[edge] = self._by_edge.get(edge, 0) + n
        self.total += n

    def remove(self, edge: str, n: int = 1) -> None:
        """Forget `n` frames of `edge` (never below zero: another service may have added them)."""
        held = self._by_edge.pop(edge, 0)
        gone = min(held, n)
        if held > gone:
            self._by_edge[edge] = held - gone
        self.total -= gone

    def of(self, edge: str) -> int:
        return self._by_edge.get(edge, 0)
