"""Storage of decoded measurements: SQLite for one machine, PostgreSQL for a fleet.

`open_store` picks the backend from its argument: a path or ``sqlite:///path`` opens SQLite
(WAL journal, so readers in other processes never block the writer), ``postgresql://...``
opens PostgreSQL through psycopg 3. The schema is versioned: `MIGRATIONS` is an ordered list
and the table ``schema_version`` records what has been applied.

Duplicates are the database's business: ``frames`` has the key (edge, bd_seq, seq) and
`Store.store_frame` writes a frame and its measurements in one transaction that does nothing
when the key exists, so two decoders sharing one database still store each frame once.

Version 3 (temporal-codec) frames decode in order from the chain state kept in the store
(`cloud.store.chains`); `edge_transaction` holds an edge's lock for one decode.

A Store is one connection. Its methods are serialised by a lock, but the service gives the
connection to a single thread (its writer); other readers should open their own Store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any

from ...shared.errors import SparsetelError
from .chains import StoreChains
from .reads import StoreReads
from .rows import SUMS, AccuracyRow, FrameRow, MeasurementRow
from .schema import MEASUREMENT_COLUMNS, MIGRATIONS, TYPES, json_floats

__all__ = ["COPY_FROM", "MIGRATIONS", "FrameRow", "MeasurementRow", "Store", "open_store"]


# The first key of the PostgreSQL advisory lock a migration holds ("spt"); the second is the
# hash of the schema it migrates, so services on other schemas do not wait for it.
MIGRATION_LOCK = 0x737074
# The first key of the advisory lock on one edge's chains ("sptc"); the second: its name's hash.
CHAIN_LOCK = 0x73707463
_ACCURACY_COLUMNS = ("edge", "model_ref", "L", "bucket_ms", *SUMS)  # AccuracyRow's fields
_ADD_ACCURACY = (
    f"INSERT INTO accuracy ({', '.join(_ACCURACY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_ACCURACY_COLUMNS))}) "
    "ON CONFLICT (edge, model_ref, bucket_ms) DO UPDATE SET "
    + ", ".join(f"{c} = accuracy.{c} + excluded.{c}" for c in SUMS)
)
_FRAME_COLUMNS = "edge, bd_seq, seq, model_ref, n_records, n_bytes, historical, received_ms, digest"
# A frame of fewer measurements is stored by one INSERT on PostgreSQL, a larger one by COPY
COPY_FROM = 8
_KPI_SUMS = ("n", "se", "ss", "se_raw")  # KpiError's sums
_ADD_KPI_ACCURACY = (
    f"INSERT INTO accuracy_kpi (edge, model_ref, bucket_ms, kpi, {', '.join(_KPI_SUMS)}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (edge, model_ref, bucket_ms, kpi) DO UPDATE SET "
    + ", ".join(f"{c} = accuracy_kpi.{c} + excluded.{c}" for c in _KPI_SUMS)
)


class Store(StoreReads, StoreChains):
    """A connection to the measurement database; use `open_store` to get one."""

    def __init__(self, connection: Any, dialect: str, writers: Path | None = None) -> None:
        if dialect not in TYPES:
            raise ValueError(f"unknown store dialect {dialect!r}")
        self.dialect = dialect
        self._conn = connection
        # SQLite: the file whose lock the writers of this database take in turn (see
        # `_sqlite_transaction`), None for an in-memory database
        self._writers = None if writers is None else writers.open("a")
        self._lock = threading.RLock()
        self._closed = False
        self._depth = 0  # nesting of _transaction: > 1 inside a batch
        self._edge_depth = 0  # the depth of the innermost edge_transaction (0: none open)
        self._locked: set[str] = set()  # edges whose chain lock this transaction holds
        self._migrate()

    # -- plumbing -------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return int(self._conn.execute(self._sql(sql), tuple(params)).rowcount)

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.dialect == "postgresql":
            with self._conn.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        else:
            self._conn.executemany(sql, rows)

    def _insert_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Append rows to `table` (none of their keys is stored yet): on PostgreSQL one INSERT
        of them all up to COPY_FROM rows (one round trip), COPY above (the fastest bulk path it
        has, but two round trips); executemany on SQLite."""
        values = _placeholders(columns)
        if self.dialect == "postgresql" and len(rows) < COPY_FROM:
            many = ", ".join([values] * len(rows))
            self._execute(f"INSERT INTO {table} ({columns}) VALUES {many}",
                          [v for row in rows for v in row])  # fmt: skip
        elif self.dialect == "postgresql":
            with (
                self._conn.cursor() as cursor,
                cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        else:
            self._conn.executemany(f"INSERT INTO {table} ({columns}) VALUES {values}", rows)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(self._sql(sql), tuple(params)).fetchall())

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction under the lock: committed on success, rolled back on any error.

        Inside another (`batch`), it is a savepoint: its error undoes only its own writes,
        and the outer transaction commits the rest at once."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            self._depth += 1
            try:
                if self.dialect == "postgresql":
                    with self._conn.transaction():  # nested: psycopg makes it a savepoint
                        yield
                elif self._depth > 1:
                    with self._savepoint():
                        yield
                else:
                    with self._sqlite_transaction():
                        yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._locked.clear()  # the transaction's locks ended with it

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT, holding the writers' file lock (flock) throughout.

        SQLite lets one writer in at a time, and one that finds the database locked sleeps
        1, 2, 5, 10 ... ms before it looks again (its busy handler), so two decoder workers
        committing every few milliseconds spent most of their time asleep: two were slower
        than one. The kernel hands a file lock to the next waiter the moment it is free."""
        with self._writer_turn():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        if self._writers is None:
            yield
            return
        fcntl.flock(self._writers, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        name = f"sp{self._depth}"
        self._conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        self._conn.execute(f"RELEASE {name}")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group writes into one transaction (one commit, one disk flush): each write inside
        still succeeds or fails on its own, as a savepoint."""
        with self._transaction():
            yield

    @contextmanager
    def edge_transaction(self, edge: str) -> Iterator[None]:
        """A transaction (a savepoint inside `batch`) holding `edge`'s chain lock until the
        outermost transaction ends: on PostgreSQL an advisory transaction lock (taken once
        per transaction: `lock_edges` may hold it already), so another connection decoding
        the same edge waits; on SQLite the write transaction is exclusive already (BEGIN
        IMMEDIATE). What is written inside commits or rolls back as a whole, so the store's
        writes inside need no savepoints of their own (`store_frame`)."""
        with self._transaction():
            self._chain_lock(edge)
            outer, self._edge_depth = self._edge_depth, self._depth
            try:
                yield
            finally:
                self._edge_depth = outer

    def lock_edges(self, edges: Sequence[str]) -> None:
        """Take the chain locks of `edges` now, in one order (sorted), for the rest of the
        current transaction (a batch): two workers whose batches hold several edges each
        then never wait for each other in a cycle. SQLite: nothing to do."""
        with self._lock:
            for edge in sorted(set(edges)):
                self._chain_lock(edge)

    def _chain_lock(self, edge: str) -> None:
        """Take `edge`'s chain lock on PostgreSQL unless this transaction holds it already;
        remembered as held only when taken at the transaction's outer level (a savepoint
        rolled back releases what it took)."""
        if self.dialect != "postgresql" or edge in self._locked:
            return
        self._execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (CHAIN_LOCK, str(edge)))
        if self._depth == 1:
            self._locked.add(edge)

    def _migrate(self) -> None:
        """Apply the migrations this database has not seen yet, each in its own transaction."""
        with self._transaction():
            if self.dialect == "postgresql":
                # Two services starting at once on a fresh schema: CREATE TABLE IF NOT EXISTS
                # is not atomic there (the loser fails on pg_type's unique index), so the
                # first one in holds a lock on this schema's name until it commits.
                self._execute(
                    "SELECT pg_advisory_xact_lock(?, hashtext(current_schema()))",
                    (MIGRATION_LOCK,),
                )
            self._execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_ms {bigint} NOT NULL)".format(
                    **TYPES[self.dialect]
                )
            )
        for version, statements in enumerate(MIGRATIONS, start=1):
            with self._transaction():
                if self.dialect == "postgresql":  # two services starting at once: one migrates
                    self._execute("LOCK TABLE schema_version IN EXCLUSIVE MODE")
                if version <= self.schema_version():
                    continue
                for statement in statements:
                    self._execute(statement.format(**TYPES[self.dialect]))
                self._execute(
                    "INSERT INTO schema_version (version, applied_ms) VALUES (?, ?)",
                    (version, int(time.time() * 1000)),
                )
        if self.schema_version() > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {self.schema_version()} is newer than this "
                f"sparsetel knows ({len(MIGRATIONS)}); upgrade sparsetel"
            )

    # -- writing --------------------------------------------------------------------------

    def store_frame(
        self,
        frame: FrameRow,
        measurements: Sequence[MeasurementRow],
        accuracy: Sequence[AccuracyRow] = (),
    ) -> bool:
        """Write `frame` and its `measurements` in one transaction, and add its audit
        `accuracy` sums to their buckets in the same one.

        Returns False, writing nothing, when (edge, bd_seq, seq) is already stored: the
        database's unique constraint decides, so this holds across processes too. Inside an
        `edge_transaction`, that transaction is its own (no savepoint: a round trip each way
        on PostgreSQL).
        """
        whole = self._edge_depth > 0 and self._edge_depth == self._depth
        with contextlib.nullcontext() if whole else self._transaction():
            inserted = self._execute(
                f"INSERT INTO frames ({_FRAME_COLUMNS}) VALUES {_placeholders(_FRAME_COLUMNS)} "
                "ON CONFLICT (edge, bd_seq, seq) DO NOTHING",
                _frame_values(frame),
            )
            if inserted == 0:
                return False
            self._insert_rows("measurements", MEASUREMENT_COLUMNS,
                              _measurement_values(frame, measurements))  # fmt: skip
            if accuracy:
                self._execute_many(
                    _ADD_ACCURACY, [[getattr(a, c) for c in _ACCURACY_COLUMNS] for a in accuracy]
                )
                per_kpi = [(a.edge, a.model_ref, a.bucket_ms, *astuple(k)) for a in accuracy
                           for k in a.kpis]  # fmt: skip
                if per_kpi:
                    self._execute_many(_ADD_KPI_ACCURACY, per_kpi)
        return True

    def store_frames(self, frames: Sequence[tuple[FrameRow, Sequence[MeasurementRow]]]) -> None:
        """Write frames none of which is stored yet, with their measurements, in two
        statements (PostgreSQL: an INSERT or a COPY each): the chained frames of a batch,
        whose predecessors' tips say they are new. Inside a transaction only (`batch`): a
        frame stored already fails the call (the unique key), and that transaction with it."""
        with self._lock:
            if self._depth == 0:
                raise RuntimeError("store_frames runs inside a transaction")
            self._insert_rows("frames", _FRAME_COLUMNS, [_frame_values(f) for f, _ in frames])
            measurements = [v for f, rows in frames for v in _measurement_values(f, rows)]
            self._insert_rows("measurements", MEASUREMENT_COLUMNS, measurements)

    def set_edge_state(
        self,
        group: str,
        edge: str,
        online: bool,
        bd_seq: int,
        model_sha256: str | None = None,
        birth: Mapping[str, Any] | None = None,
        updated_ms: int | None = None,
    ) -> bool:
        """Record a birth (online) or a death; return False when the change was ignored.

        A birth always wins. A death only applies to the session it names: one whose bd_seq
        differs from the stored birth's is stale (an old will delivered late) and ignored.
        A death keeps the model and birth document of the session it ends.
        """
        updated = int(time.time() * 1000) if updated_ms is None else updated_ms
        with self._transaction():
            changed = self._execute(
                'INSERT INTO edges (edge, "group", online, bd_seq, model_sha256, birth, '
                "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (edge) DO UPDATE SET "
                '"group" = excluded."group", online = excluded.online, '
                "bd_seq = excluded.bd_seq, "
                "model_sha256 = COALESCE(excluded.model_sha256, edges.model_sha256), "
                "birth = COALESCE(excluded.birth, edges.birth), "
                "updated_ms = excluded.updated_ms "
                "WHERE excluded.online OR edges.bd_seq = excluded.bd_seq",
                (
                    edge,
                    group,
                    online,
                    bd_seq,
                    model_sha256,
                    None if birth is None else json.dumps(dict(birth)),
                    updated,
                ),
            )
        return changed > 0

    def set_health(self, group: str, edge: str, body: Mapping[str, Any], received_ms: int) -> None:
        """Keep `edge`'s latest heartbeat (a later one replaces it; an older one is ignored)."""
        with self._transaction():
            self._execute(
                'INSERT INTO health (edge, "group", received_ms, body) VALUES (?, ?, ?, ?) '
                'ON CONFLICT (edge) DO UPDATE SET "group" = excluded."group", '
                "received_ms = excluded.received_ms, body = excluded.body "
                "WHERE excluded.received_ms >= health.received_ms",
                (edge, group, received_ms, json.dumps(dict(body))),
            )

    def register_model(self, model_ref: bytes, kpis: Sequence[str], target: str) -> None:
        """Record the KPI names, in order, of the model that `model_ref` names (once)."""
        with self._transaction():
            self._execute(
                "INSERT INTO models (model_ref, kpis, target, registered_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (model_ref) DO NOTHING",
                (model_ref.hex(), json.dumps(list(kpis)), target, int(time.time() * 1000)),
            )

    def park_frame(
        self, edge: str, model_ref: bytes, topic: str, payload: bytes, received_ms: int
    ) -> None:
        """Keep a frame whose model is not known yet, exactly as it came."""
        with self._transaction():
            self._execute(
                "INSERT INTO parked_frames (edge, model_ref, topic, payload, received_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (edge, model_ref.hex(), topic, payload, received_ms),
            )

    def parked(self, model_ref: bytes, limit: int = 500) -> list[tuple[int, str, bytes, int]]:
        """The oldest parked frames of one model: (id, topic, payload, received_ms)."""
        with self._lock:
            rows = self._query(
                "SELECT id, topic, payload, received_ms FROM parked_frames "
                "WHERE model_ref = ? ORDER BY id LIMIT ?",
                (model_ref.hex(), int(limit)),
            )
        return [(int(i), str(t), bytes(p), int(ms)) for i, t, p, ms in rows]

    def drop_parked(self, ids: Sequence[int]) -> None:
        """Forget parked frames (they were handled)."""
        with self._transaction():
            self._execute_many("DELETE FROM parked_frames WHERE id = ?", [(i,) for i in ids])

    def hold_frame(
        self,
        key: tuple[str, int, int],
        reason: str,
        digest: str,
        message: tuple[str, bytes, int],
    ) -> bool:
        """Keep a frame the ingest refused but must not lose (`reason`: "clone", a key
        (edge, bd_seq, seq) stored with other content; "time_window", a time the store will
        not take) exactly as it came: `message` is (topic, payload, received_ms). False when
        this very frame is held already."""
        edge, bd_seq, seq = key
        topic, payload, received_ms = message
        with self._transaction():
            return (
                self._execute(
                    "INSERT INTO held_frames (edge, bd_seq, seq, reason, digest, topic, "
                    "payload, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (edge, bd_seq, seq, digest) DO NOTHING",
                    (edge, bd_seq, seq, reason, digest, topic, payload, received_ms),
                )
                > 0
            )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._writers is not None:
                    self._writers.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_sqlite(path: str) -> Store:
    if path != ":memory:":
        path = str(Path(path).expanduser())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in Store._transaction)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return Store(conn, "sqlite", None if path == ":memory:" else Path(f"{path}-writers"))


def _open_postgresql(url: str) -> Store:
    import psycopg  # only the PostgreSQL backend needs it

    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:  # one line: libpq's message spans several
        reason = " ".join(str(exc).split())
        raise SparsetelError(f"cannot connect to PostgreSQL: {reason}") from exc
    return Store(conn, "postgresql")


def _placeholders(columns: str) -> str:
    """ "(?, ?, ...)": one parameter per column of `columns` ("a, b, ...")."""
    return f"({', '.join('?' * len(columns.split(',')))})"


def _frame_values(frame: FrameRow) -> tuple[Any, ...]:
    """A ``frames`` row in _FRAME_COLUMNS' order."""
    return (frame.edge, frame.bd_seq, frame.seq, frame.model_ref.hex(), frame.n_records,
            frame.n_bytes, frame.historical, frame.received_ms, frame.digest)  # fmt: skip


def _measurement_values(
    frame: FrameRow, measurements: Sequence[MeasurementRow]
) -> list[tuple[Any, ...]]:
    """The ``measurements`` rows of `frame`, in MEASUREMENT_COLUMNS' order."""
    ref = frame.model_ref.hex()
    return [
        (
            frame.edge, frame.bd_seq, frame.seq, m.rec, m.t_ms, ref, m.nnz,
            ",".join(str(c) for c in m.codes), json_floats(m.kpis),
            m.prediction if m.prediction is not None and math.isfinite(m.prediction) else None,
            m.predicted_t_ms, None if m.audit is None else json_floats(m.audit),
        )
        for m in measurements
    ]  # fmt: skip


def open_store(url_or_path: str | Path) -> Store:
    """Open (creating and migrating when needed) the store named by `url_or_path`.

    ``postgresql://`` or ``postgres://`` URLs (libpq syntax; ``?options=-csearch_path%3DX``
    selects a schema) open PostgreSQL; ``sqlite:///relative.db``, ``sqlite:////abs.db`` or a
    plain path open SQLite (created with its folder when missing).
    """
    text = str(url_or_path)
    if not text:
        raise ValueError("store location is empty")
    if text.startswith(("postgresql://", "postgres://")):
        return _open_postgresql(text)
    if text.startswith("sqlite:///"):
        return _open_sqlite(text[len("sqlite:///") :])
    if "://" in text:
        raise ValueError(f"unsupported store URL {text!r}: use a path, sqlite:/// or postgresql://")
    return _open_sqlite(text)
