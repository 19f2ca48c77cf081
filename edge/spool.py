"""The edge's store-and-forward spool: encoded frames on disk until they are safe.

Every frame is written to the spool (SQLite in WAL mode, one row per frame) before it is
published, and leaves it only when it is safe: when the broker's PUBACK for it arrives
(`ack`), or, with ``confirm = "store"``, only when the cloud's receipt names it (`confirm`,
see `sparsetel.shared.receipt`); the PUBACK then just starts its wait for the receipt
(`sent`), and a frame whose receipt is late is handed out again (`overdue`). Whatever
is still there when the agent starts again -- the broker was away, the network cut, the
process killed with SIGKILL -- is what `pending` returns, oldest first, to be published
again flagged historical (`as_historical`).

A committed `put` survives the process dying at any point: in WAL mode with
``synchronous=NORMAL`` SQLite loses nothing to a crash of the process (a power cut may lose
the last few frames, never corrupt the file). The spool is bounded by bytes and by age
(`SpoolLimits`); when either is exceeded it drops the oldest frames first, counts them and
logs what it dropped (bdSeq/seq range), so an operator sees the gap the cloud will report.

A temporal codec's frames (version 3) form chains: a frame that starts one (from a key
measurement) and frames that each continue their predecessor. A chained frame whose
predecessor is gone can never be decoded, so the spool keeps per frame whether it starts a
chain (`starts`; every version 1 or 2 frame stands alone, so starts one) and drops whole
chains: from the oldest frame up to, not including, the next frame that starts a chain. When
no such frame follows, the chain the agent is still continuing went too, and `take_cut` tells
it to start a new one. The most recent dropped (bdSeq, first seq, last seq) ranges are kept
in the spool's file (`dropped_ranges`, at most `MAX_DROPPED_RANGES`) for the heartbeat, so the
cloud stops waiting for frames that will never come.

The spool is safe to use from several threads (paho's network thread acknowledges while
the agent's thread stores): one connection, guarded by a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from ..shared.chainframe import (
    CHAIN_VERSION,
    decode_chain_frame,
    encode_chain_frame,
    frame_version,
)
from ..shared.errors import SparsetelError
from ..shared.wire import decode_frame, encode_frame

__all__ = [
    "MAX_DROPPED_RANGES",
    "Spool",
    "SpoolError",
    "SpoolLimits",
    "SpoolStats",
    "Spooled",
    "as_historical",
]

log = logging.getLogger(__name__)

MAX_DROPPED_RANGES = 32  # dropped (bd_seq, first_seq, last_seq) ranges kept, the most recent
_Row = tuple[int, int, int, int]  # id, bd_seq, seq, payload bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bd_seq INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    sent_ms INTEGER,
    tries INTEGER NOT NULL DEFAULT 0,
    starts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS frames_key ON frames (bd_seq, seq);
CREATE INDEX IF NOT EXISTS frames_sent ON frames (sent_ms);
CREATE TABLE IF NOT EXISTS dropped (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bd_seq INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    t_ms INTEGER NOT NULL
);
"""


class SpoolError(SparsetelError):
    """The spool cannot take a frame or cannot be opened."""


@dataclass(frozen=True)
class SpoolLimits:
    """`max_bytes`: payload bytes kept at most; `max_age_s`: a frame older than this goes."""

    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or not self.max_age_s > 0:
            raise ValueError(f"spool limits must be positive, got {self}")


@dataclass
class SpoolStats:
    """Frames stored and acknowledged; frames (and payload bytes) dropped, by reason."""

    stored: int = 0
    acked: int = 0
    confirmed: int = 0
    dropped_full: int = 0
    dropped_age: int = 0
    dropped_bytes: int = 0


@dataclass(frozen=True)
class Spooled:
    """One spooled frame: its row id (the order frames were stored in) and what it holds."""

    id: int
    bd_seq: int
    seq: int
    created_ms: int
    payload: bytes


class Spool:
    """Frames on disk at `path` until acknowledged; see the module docstring."""

    def __init__(
        self,
        path: Path,
        limits: SpoolLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits or SpoolLimits()
        self.stats = SpoolStats()
        self._clock = clock
        self._lock = threading.Lock()
        self._cut = False  # a drop reached the newest frame: its chain is gone
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=NORMAL")
            _migrate(self._db)
            row = self._db.execute("SELECT COUNT(*), TOTAL(LENGTH(payload)) FROM frames")
            self._count, total = row.fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot open the spool {path}: {exc}") from exc
        if mode.lower() != "wal":
            raise SpoolError(f"{path}: SQLite refused WAL mode ({mode})")
        self._bytes = int(total)
        if self._count:
            log.info("spool %s holds %s unacknowledged frames from before", path, self._count)

    @property
    def depth(self) -> int:
        """Frames waiting for their acknowledgement."""
        return int(self._count)

    @property
    def size_bytes(self) -> int:
        """Their payload bytes."""
        return self._bytes

    def put(
        self,
        bd_seq: int,
        seq: int,
        payload: bytes,
        cursor: tuple[str, int, int] | None = None,
        starts: bool = True,
    ) -> int:
        """Store one frame (committed when this returns) and return its id; then drop the
        oldest frames beyond the limits, whole chains at a time. SpoolError for a frame larger
        than the whole spool. `starts`: the frame starts a chain (every frame but a version 3
        frame that continues its predecessor).

        `cursor` (source, position, t_ms): how far into `source` this frame reaches, stored in
        the same transaction, so a restarted agent resumes exactly after the last frame that
        is safe on disk: no measurement lost, none sent twice."""
        if len(payload) > self.limits.max_bytes:
            raise SpoolError(
                f"frame bdSeq {bd_seq} seq {seq} is {len(payload)} bytes, more than the "
                f"spool's max_bytes {self.limits.max_bytes}"
            )
        now_ms = int(self._clock() * 1000)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute(
                    "INSERT INTO frames (bd_seq, seq, created_ms, payload, starts) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (bd_seq, seq, now_ms, payload, int(starts)),
                )
                if cursor is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO cursors (source, pos, t_ms) VALUES (?, ?, ?)",
                        cursor,
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise SpoolError(f"cannot store frame bdSeq {bd_seq} seq {seq}: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            self.stats.stored += 1
            self._expire(now_ms)
            self._trim()
            return int(cur.lastrowid or 0)

    def take_cut(self) -> bool:
        """True (once) when a drop since the last call reached the newest frame: the chain the
        agent continues is gone, so its next frame must start a new one."""
        with self._lock:
            cut, self._cut = self._cut, False
            return cut

    def dropped_ranges(self) -> list[tuple[int, int, int]]:
        """The most recent ranges of frames dropped unacknowledged (beyond the limits, or
        damaged on disk), oldest first: (bd_seq, first_seq, last_seq), at most
        `MAX_DROPPED_RANGES`, kept across restarts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bd_seq, first_seq, last_seq FROM dropped ORDER BY id DESC LIMIT ?",
                (MAX_DROPPED_RANGES,),
            ).fetchall()
        return [(int(b), int(f), int(last)) for b, f, last in reversed(rows)]

    def discard(self, frame_id: int, why: str) -> bool:
        """Drop one frame that can never be delivered (damaged on disk), recording its range;
        False when it was gone already. The frames after it may continue it, so the agent's
        next frame starts a new chain (`take_cut`)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, bd_seq, seq, LENGTH(payload) FROM frames WHERE id = ?", (frame_id,)
            ).fetchone()
            if row is None:
                return False
            self._drop([row], why)
            self._cut = True
            return True

    def ack(self, ids: Iterable[int]) -> int:
        """Forget acknowledged frames; returns how many were still here (an id already gone,
        acknowledged twice or dropped, is ignored)."""
        wanted = [(int(i),) for i in ids]
        if not wanted:
            return 0
        with self._lock:
            gone = 0
            self._db.execute("BEGIN")
            for (i,) in wanted:
                row = self._db.execute(
                    "DELETE FROM frames WHERE id = ? RETURNING LENGTH(payload)", (i,)
                ).fetchone()
                if row is not None:
                    gone += 1
                    self._bytes -= int(row[0])
            self._db.execute("COMMIT")
            self._count -= gone
            self.stats.acked += gone
            return gone

    def sent(self, ids: Iterable[int]) -> None:
        """The broker has these frames: their wait for the store's receipt starts now."""
        now_ms = int(self._clock() * 1000)
        with self._lock:
            self._db.executemany(
                "UPDATE frames SET sent_ms = ? WHERE id = ?", [(now_ms, int(i)) for i in ids]
            )

    def confirm(self, bd_seq: int, ranges: Iterable[tuple[int, int]]) -> int:
        """Forget the frames of `bd_seq` whose seq lies in one of the inclusive `ranges` (the
        store has them); returns how many were still here."""
        with self._lock:
            gone, size = 0, 0
            self._db.execute("BEGIN")
            for lo, hi in ranges:
                for (n,) in self._db.execute(
                    "DELETE FROM frames WHERE bd_seq = ? AND seq BETWEEN ? AND ? "
                    "RETURNING LENGTH(payload)",
                    (bd_seq, lo, hi),
                ).fetchall():
                    gone, size = gone + 1, size + int(n)
            self._db.execute("COMMIT")
            self._count -= gone
            self._bytes -= size
            self.stats.confirmed += gone
            return gone

    def overdue(self, wait_s: float, limit: int) -> list[Spooled]:
        """At most `limit` frames, oldest first, whose receipt is late: the broker took them
        more than `wait_s` * 2**tries seconds ago (tries: how often they were handed out again,
        up to 6, so a frame the cloud never confirms goes out less and less often). They
        count as handed out again from now."""
        now_ms = int(self._clock() * 1000)
        wait_ms = int(wait_s * 1000)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, bd_seq, seq, created_ms, payload FROM frames WHERE sent_ms <= ? "
                "AND sent_ms + ? * (1 << MIN(tries, 6)) <= ? ORDER BY id LIMIT ?",
                (now_ms - wait_ms, wait_ms, now_ms, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE frames SET sent_ms = ?, tries = tries + 1 WHERE id = ?",
                [(now_ms, r[0]) for r in rows],
            )
        return [Spooled(int(a), int(b), int(c), int(d), bytes(e)) for a, b, c, d, e in rows]

    def pending(self, after: int = 0, limit: int | None = None) -> list[Spooled]:
        """Unacknowledged frames with id > `after`, oldest first (at most `limit`)."""
        sql = "SELECT id, bd_seq, seq, created_ms, payload FROM frames WHERE id > ? ORDER BY id"
        args: tuple[int, ...] = (after,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (after, limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Spooled(int(a), int(b), int(c), int(d), bytes(e)) for a, b, c, d, e in rows]

    def get(self, frame_id: int) -> Spooled | None:
        """The frame stored under `frame_id`, or None once it is acknowledged or dropped."""
        found = self.pending(after=frame_id - 1, limit=1)
        return found[0] if found and found[0].id == frame_id else None

    def cursor(self, source: str) -> tuple[int, int] | None:
        """(position, t_ms) of the last frame stored from `source`; None if none is."""
        with self._lock:
            row = self._db.execute(
                "SELECT pos, t_ms FROM cursors WHERE source = ?", (source,)
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def clear_cursor(self, source: str) -> None:
        """Forget `source`'s position (it was read to its end)."""
        with self._lock:
            self._db.execute("DELETE FROM cursors WHERE source = ?", (source,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _expire(self, now_ms: int) -> None:
        cutoff = now_ms - int(self.limits.max_age_s * 1000)
        row = self._db.execute(
            "SELECT MAX(id) FROM frames WHERE created_ms < ?", (cutoff,)
        ).fetchone()
        if row[0] is not None:
            rows = self._whole_chains(int(row[0]))
            self._drop(rows, f"older than {self.limits.max_age_s:g} s")
            self.stats.dropped_age += len(rows)

    def _trim(self) -> None:
        excess = self._bytes - self.limits.max_bytes
        if excess <= 0:
            return
        last, freed = 0, 0
        for frame_id, size in self._db.execute(
            "SELECT id, LENGTH(payload) FROM frames ORDER BY id"
        ):
            last, freed = int(frame_id), freed + int(size)
            if freed >= excess:
                break
        rows = self._whole_chains(last)
        self._drop(rows, f"spool full (max_bytes {self.limits.max_bytes})")
        self.stats.dropped_full += len(rows)

    def _whole_chains(self, last_id: int) -> list[_Row]:
        """The oldest frames through `last_id` and on up to, not including, the next frame
        that starts a chain (all of them when none follows: then the open chain is cut)."""
        after = self._db.execute(
            "SELECT MIN(id) FROM frames WHERE id > ? AND starts != 0", (last_id,)
        ).fetchone()[0]
        columns = "SELECT id, bd_seq, seq, LENGTH(payload) FROM frames"
        if after is None:
            self._cut = True
            return list(self._db.execute(f"{columns} ORDER BY id"))
        return list(self._db.execute(f"{columns} WHERE id < ? ORDER BY id", (int(after),)))

    def _drop(self, rows: list[_Row], why: str) -> None:
        """Delete `rows` (id, bd_seq, seq, bytes), oldest first, record their seq ranges and
        say so loudly."""
        if not rows:
            return
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM frames WHERE id = ?", [(r[0],) for r in rows])
        self._record_dropped(rows)
        self._db.execute("COMMIT")
        size = sum(int(r[3]) for r in rows)
        self._count -= len(rows)
        self._bytes -= size
        self.stats.dropped_bytes += size
        first, last = rows[0], rows[-1]
        log.warning(
            "spool %s: dropped %d unacknowledged frames (%d bytes), %s: bdSeq %d seq %d to "
            "bdSeq %d seq %d",
            self.path,
            len(rows),
            size,
            why,
            first[1],
            first[2],
            last[1],
            last[2],
        )

    def _record_dropped(self, rows: list[_Row]) -> None:
        """Add the (bd_seq, first_seq, last_seq) runs of `rows` to the dropped ranges, joining
        a run that continues the latest range, and keep the most recent ones only."""
        latest = self._db.execute(
            "SELECT id, bd_seq, first_seq, last_seq FROM dropped ORDER BY id DESC LIMIT 1"
        ).fetchone()
        runs: list[list[int]] = [] if latest is None else [list(latest)]
        fresh = len(runs)
        for _, bd_seq, seq, _ in rows:
            if runs and runs[-1][1] == bd_seq and runs[-1][3] + 1 == seq:
                runs[-1][3] = seq
            else:
                runs.append([0, bd_seq, seq, seq])
        if fresh and runs[0][3] != latest[3]:
            self._db.execute(
                "UPDATE dropped SET last_seq = ? WHERE id = ?", (runs[0][3], runs[0][0])
            )
        self._db.executemany(
            "INSERT INTO dropped (bd_seq, first_seq, last_seq) VALUES (?, ?, ?)",
            [tuple(r[1:]) for r in runs[fresh:]],
        )
        self._db.execute(
            "DELETE FROM dropped WHERE id <= (SELECT MAX(id) FROM dropped) - ?",
            (MAX_DROPPED_RANGES,),
        )


def _migrate(db: sqlite3.Connection) -> None:
    """Create the tables, or add what a spool written by an older agent lacks."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(frames)")}
    if columns and "sent_ms" not in columns:
        db.execute("ALTER TABLE frames ADD COLUMN sent_ms INTEGER")
        db.execute("ALTER TABLE frames ADD COLUMN tries INTEGER NOT NULL DEFAULT 0")
    if columns and "starts" not in columns:  # frames of older agents (v1, v2) stand alone
        db.execute("ALTER TABLE frames ADD COLUMN starts INTEGER NOT NULL DEFAULT 1")
    db.executescript(SCHEMA)


def as_historical(payload: bytes) -> bytes:
    """The same frame flagged historical: replayed from the spool, not live. A version 1
    frame stays version 1 (no CRC to vouch for bytes never checked); a version 3 frame stays
    the same chain link, its CRC recomputed (each frame has one encoding, so only the flag
    and the CRC change). WireError when the frame is damaged (on disk: its CRC no longer
    matches)."""
    if frame_version(payload) == CHAIN_VERSION:
        chained = decode_chain_frame(payload)
        if chained.historical:
            return payload
        return encode_chain_frame(replace(chained, historical=True))
    frame = decode_frame(payload)
    return payload if frame.historical else encode_frame(replace(frame, historical=True))
