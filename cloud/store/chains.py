"""The temporal codec's chains in the store: decoder state, waiting frames, given-up counts.

A version 3 chained frame (`shared.chainframe`) continues the decoder state its predecessor
(bd_seq, seq - 1) left, so the cloud decodes an edge's frames in order. The state lives in the
store, not in a worker, so whichever worker takes a frame (a shared subscription hands one
edge's frames to any) decodes it from the committed state, and a backlog of days decodes
after a restart:

- ``chains``: per edge and session, the tip of each chain: the `ChainTip` the last processed
  frame left (state NULL: that frame was given up, and with it its chain). Processing frame
  seq removes the tip of seq - 1, which nothing needs any more, so an edge keeps about one
  row per session.
- ``pending_frames``: chained frames whose predecessor is not decoded yet, as they came.
- ``undecodable``: per edge and reason, frames and measurements given up.

Every method here runs inside the transaction of `Store.edge_transaction(edge)`, which holds
the edge's lock (PostgreSQL: an advisory transaction lock; SQLite: the write transaction is
exclusive), so two workers never decode one chain at once. `StoreChains` is mixed into `Store`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from .rows import ChainTip, PendingFrame
from .schema import parse_json

__all__ = ["StoreChains"]

_SET_TIP = (
    "INSERT INTO chains (edge, bd_seq, seq, model_sha256, state, last_ms, period_ms, reason, "
    "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (edge, bd_seq, seq) DO UPDATE SET "
    "model_sha256 = excluded.model_sha256, state = excluded.state, last_ms = excluded.last_ms, "
    "period_ms = excluded.period_ms, reason = excluded.reason, updated_ms = excluded.updated_ms"
)
_FORGET_TIP = "DELETE FROM chains WHERE edge = ? AND bd_seq = ? AND seq = ?"


class StoreChains:
    """Chain tips, pending frames and given-up counts of a `Store` (mixed into it)."""

    dialect: str
    _lock: threading.RLock

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        raise NotImplementedError

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    # -- tips -----------------------------------------------------------------------------

    def chain_tip(self, edge: str, bd_seq: int, seq: int) -> ChainTip | None:
        """The tip frame `seq` of session `bd_seq` left, or None (not processed yet, or its
        successor was)."""
        with self._lock:
            rows = self._query(
                "SELECT model_sha256, state, last_ms, period_ms, reason FROM chains "
                "WHERE edge = ? AND bd_seq = ? AND seq = ?",
                (edge, bd_seq, seq),
            )
        if not rows:
            return None
        sha, state, last_ms, period_ms, reason = rows[0]
        return ChainTip(bd_seq, seq, sha, state, int(last_ms), int(period_ms), reason)

    def set_chain_tip(self, edge: str, tip: ChainTip) -> None:
        """Record what frame (tip.bd_seq, tip.seq) left and forget its predecessor's tip (on
        PostgreSQL in one statement: one round trip, not two)."""
        forget = (edge, tip.bd_seq, tip.seq - 1)
        row = (edge, tip.bd_seq, tip.seq, tip.model_sha256, tip.state, tip.last_ms,
               tip.period_ms, tip.reason, int(time.time() * 1000))  # fmt: skip
        with self._lock:
            if self.dialect == "postgresql":
                self._execute(f"WITH gone AS ({_FORGET_TIP}) {_SET_TIP}", forget + row)
            else:
                self._execute(_SET_TIP, row)
                self._execute(_FORGET_TIP, forget)

    def tips_of(self, edges: Sequence[str]) -> dict[tuple[str, int, int], ChainTip]:
        """Every chain tip of `edges`, by (edge, bd_seq, seq): what a batch of their frames
        decodes from, read in one query (an edge keeps about one tip per session)."""
        where, params = self._edges_in(edges)
        with self._lock:
            rows = self._query(
                "SELECT edge, bd_seq, seq, model_sha256, state, last_ms, period_ms, reason "
                f"FROM chains WHERE {where}",
                params,
            )
        return {
            (str(e), int(b), int(s)): ChainTip(int(b), int(s), sha, state, int(last), int(p), why)
            for e, b, s, sha, state, last, p, why in rows
        }

    def move_tips(
        self, tips: Sequence[tuple[str, ChainTip]], forget: Sequence[tuple[str, int, int]]
    ) -> None:
        """Record the tips a batch of frames left, (edge, tip) each, and forget the tips
        (edge, bd_seq, seq) they went on from: `set_chain_tip` for many chains at once."""
        now = int(time.time() * 1000)
        rows = [(edge, t.bd_seq, t.seq, t.model_sha256, t.state, t.last_ms, t.period_ms,
                 t.reason, now) for edge, t in tips]  # fmt: skip
        with self._lock:
            if rows:
                self._execute_many(_SET_TIP, rows)
            if forget:
                self._execute_many(_FORGET_TIP, forget)

    def pending_of(self, edges: Sequence[str]) -> set[tuple[str, int, int]]:
        """The keys (edge, bd_seq, seq) of the pending frames of `edges`."""
        where, params = self._edges_in(edges)
        with self._lock:
            rows = self._query(
                f"SELECT edge, bd_seq, seq FROM pending_frames WHERE {where}", params
            )
        return {(str(e), int(b), int(s)) for e, b, s in rows}

    def _edges_in(self, edges: Sequence[str]) -> tuple[str, list[Any]]:
        """A WHERE clause for rows of `edges` and its parameters."""
        names = sorted(set(edges))
        if self.dialect == "postgresql":
            return "edge = ANY(?)", [names]
        return f"edge IN ({', '.join('?' * len(names))})", list(names)

    def has_frame(self, edge: str, bd_seq: int, seq: int) -> bool:
        """Whether frame (edge, bd_seq, seq) is stored (decoded)."""
        with self._lock:
            return bool(
                self._query(
                    "SELECT 1 FROM frames WHERE edge = ? AND bd_seq = ? AND seq = ?",
                    (edge, bd_seq, seq),
                )
            )

    def frames_in(self, keys: Sequence[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
        """Which of `keys` (edge, bd_seq, seq) are stored frames, in one query."""
        if not keys:
            return set()
        where = " OR ".join(["(edge = ? AND bd_seq = ? AND seq = ?)"] * len(keys))
        with self._lock:
            rows = self._query(
                f"SELECT edge, bd_seq, seq FROM frames WHERE {where}",
                [v for key in keys for v in key],
            )
        return {(str(e), int(b), int(s)) for e, b, s in rows}

    def recent_kpis(
        self, edge: str, bd_seq: int, before_seq: int, limit: int
    ) -> list[tuple[int, str, list[float | None]]]:
        """(seq, model_ref hex, kpis in raw units, None where unknown) of the last `limit`
        measurements of one session of `edge` in frames before `before_seq`, newest first."""
        with self._lock:
            rows = self._query(
                "SELECT seq, model_ref, kpis FROM measurements WHERE edge = ? AND bd_seq = ? "
                "AND seq < ? ORDER BY seq DESC, rec DESC LIMIT ?",
                (edge, bd_seq, before_seq, int(limit)),
            )
        return [(int(s), str(m), list(parse_json(k))) for s, m, k in rows]

    # -- pending frames -------------------------------------------------------------------

    def add_pending(self, edge: str, frame: PendingFrame) -> bool:
        """Keep a chained frame until its predecessor is decoded; False when a frame with
        its key is pending already (see `pending_frame` for its digest)."""
        values = (
            edge, frame.bd_seq, frame.seq, frame.n_records, frame.digest, frame.topic,
            frame.payload, frame.received_ms,
        )  # fmt: skip
        with self._lock:
            added = self._execute(
                "INSERT INTO pending_frames (edge, bd_seq, seq, n_records, digest, topic, "
                "payload, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (edge, bd_seq, seq) DO NOTHING",
                values,
            )
        return added > 0

    def add_pendings(self, frames: Sequence[tuple[str, PendingFrame]]) -> None:
        """Keep (edge, frame) chained frames whose keys are not pending yet (a batch's, in
        one statement)."""
        rows = [(edge, f.bd_seq, f.seq, f.n_records, f.digest, f.topic, f.payload,
                 f.received_ms) for edge, f in frames]  # fmt: skip
        with self._lock:
            self._execute_many(
                "INSERT INTO pending_frames (edge, bd_seq, seq, n_records, digest, topic, "
                "payload, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def pending_frame(self, edge: str, bd_seq: int, seq: int) -> PendingFrame | None:
        with self._lock:
            rows = self._query(
                "SELECT n_records, digest, topic, payload, received_ms FROM pending_frames "
                "WHERE edge = ? AND bd_seq = ? AND seq = ?",
                (edge, bd_seq, seq),
            )
        if not rows:
            return None
        n, digest, topic, payload, received_ms = rows[0]
        return PendingFrame(bd_seq, seq, int(n), str(digest), str(topic), bytes(payload),
                            int(received_ms))  # fmt: skip

    def pending_run(self, edge: str, bd_seq: int, first: int, limit: int) -> list[PendingFrame]:
        """Up to `limit` pending frames of session `bd_seq` of `edge` from seq `first` on,
        in order (the caller keeps those whose seqs follow each other)."""
        with self._lock:
            rows = self._query(
                "SELECT seq, n_records, digest, topic, payload, received_ms FROM pending_frames "
                "WHERE edge = ? AND bd_seq = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (edge, bd_seq, first, int(limit)),
            )
        return [PendingFrame(bd_seq, int(s), int(n), str(d), str(t), bytes(p), int(ms))
                for s, n, d, t, p, ms in rows]  # fmt: skip

    def drop_pendings(self, keys: Sequence[tuple[str, int, int]]) -> None:
        """Forget the pending frames (edge, bd_seq, seq) a batch decoded."""
        with self._lock:
            self._execute_many(
                "DELETE FROM pending_frames WHERE edge = ? AND bd_seq = ? AND seq = ?", keys
            )

    def drop_pending(self, edge: str, bd_seq: int, seq: int) -> None:
        with self._lock:
            self._execute(
                "DELETE FROM pending_frames WHERE edge = ? AND bd_seq = ? AND seq = ?",
                (edge, bd_seq, seq),
            )

    def pending_seqs(self, edge: str, bd_seq: int, first: int, last: int) -> list[int]:
        """The seqs of `edge`'s pending frames of session `bd_seq` in first..last, ascending."""
        with self._lock:
            rows = self._query(
                "SELECT seq FROM pending_frames WHERE edge = ? AND bd_seq = ? AND seq >= ? "
                "AND seq <= ? ORDER BY seq",
                (edge, bd_seq, first, last),
            )
        return [int(s) for (s,) in rows]

    # -- given up -------------------------------------------------------------------------

    def count_undecodable(self, edge: str, reason: str, frames: int, measurements: int) -> None:
        """Add given-up frames and their measurements to `edge`'s count for `reason`."""
        with self._lock:
            self._execute(
                "INSERT INTO undecodable (edge, reason, frames, measurements, updated_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (edge, reason) DO UPDATE SET "
                "frames = undecodable.frames + excluded.frames, "
                "measurements = undecodable.measurements + excluded.measurements, "
                "updated_ms = excluded.updated_ms",
                (edge, reason, frames, measurements, int(time.time() * 1000)),
            )

    def undecodable(self) -> dict[str, dict[str, int]]:
        """Measurements given up per edge, by reason."""
        with self._lock:
            rows = self._query("SELECT edge, reason, measurements FROM undecodable")
        out: dict[str, dict[str, int]] = {}
        for edge, reason, n in rows:
            out.setdefault(str(edge), {})[str(reason)] = int(n)
        return out

    def pending_per_edge(self) -> dict[str, int]:
        """Frames waiting for their predecessor, per edge."""
        with self._lock:
            rows = self._query("SELECT edge, COUNT(*) FROM pending_frames GROUP BY edge")
        return {str(edge): int(n) for edge, n in rows}
