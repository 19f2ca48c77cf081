"""Reading the measurement database: counts, gaps, measurements, edges, time series.

`StoreReads` is the query half of `Store` (its write half, plumbing and transactions are in
`cloud.store.database`); every method takes the store's lock and runs in one statement or a few.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

from .schema import MEASUREMENT_COLUMNS, parse_json

__all__ = ["StoreReads"]


class StoreReads:
    """Queries of a `Store` (mixed into it)."""

    dialect: str
    _lock: threading.RLock

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def sequence_gaps(self) -> dict[str, int]:
        """Frames missing per edge: in each of its sessions (bd_seq), the seqs from 0 to the
        highest stored that are not stored. Edges with none are left out."""
        with self._lock:
            rows = self._query(
                "SELECT edge, SUM(max_seq + 1 - n) FROM (SELECT edge, bd_seq, "
                "MAX(seq) AS max_seq, COUNT(*) AS n FROM frames GROUP BY edge, bd_seq) AS s "
                "GROUP BY edge"
            )
        return {str(edge): int(missing) for edge, missing in rows if missing}

    def count_parked(self) -> dict[str, int]:
        """Parked frames per model ref (hex)."""
        with self._lock:
            rows = self._query("SELECT model_ref, COUNT(*) FROM parked_frames GROUP BY model_ref")
        return {str(ref): int(n) for ref, n in rows}

    def held_per_edge(self, table: str) -> dict[str, int]:
        """Frames per edge in ``parked_frames`` or ``held_frames`` (an index on edge serves
        it); what the ingest's bounds start from."""
        if table not in ("parked_frames", "held_frames"):
            raise ValueError(f"not a table of held frames: {table!r}")
        with self._lock:
            rows = self._query(f"SELECT edge, COUNT(*) FROM {table} GROUP BY edge")
        return {str(edge): int(n) for edge, n in rows}

    def stored_digest(self, edge: str, bd_seq: int, seq: int) -> str | None:
        """The content digest stored with a frame (None: not stored, or stored before
        digests were)."""
        with self._lock:
            rows = self._query(
                "SELECT digest FROM frames WHERE edge = ? AND bd_seq = ? AND seq = ?",
                (edge, bd_seq, seq),
            )
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def held(
        self, edge: str | None = None, reason: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Frames refused but kept (oldest first; of one edge, for one reason, or all): id,
        edge, bd_seq, seq, reason, digest, topic, payload (the frame's bytes as they came)
        and received_ms, for an operator to recover."""
        tests = [(name, value) for name, value in (("edge", edge), ("reason", reason)) if value]
        where = "".join(f"{'AND' if i else 'WHERE'} {n} = ? " for i, (n, _) in enumerate(tests))
        names = ("id", "edge", "bd_seq", "seq", "reason", "digest", "topic", "payload",
                 "received_ms")  # fmt: skip
        with self._lock:
            rows = self._query(
                f"SELECT {', '.join(names)} FROM held_frames {where}ORDER BY id LIMIT ?",
                [*(v for _, v in tests), int(limit)],
            )
        return [{**dict(zip(names, row, strict=True)), "payload": bytes(row[7])} for row in rows]

    # -- measurements --------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            rows = self._query("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    def _count(self, table: str, edge: str | None) -> int:
        where, params = ("WHERE edge = ?", (edge,)) if edge is not None else ("", ())
        with self._lock:
            return int(self._query(f"SELECT COUNT(*) FROM {table} {where}", params)[0][0])

    def count_measurements(self, edge: str | None = None) -> int:
        """Number of stored measurements, of one edge or of all."""
        return self._count("measurements", edge)

    def count_records(self) -> int:
        """Measurements stored, summed over the frames table (cheap to poll: one row per frame,
        not one per measurement)."""
        with self._lock:
            return int(self._query("SELECT COALESCE(SUM(n_records), 0) FROM frames")[0][0])

    def count_frames(self, edge: str | None = None) -> int:
        """Number of stored frames, of one edge or of all."""
        return self._count("frames", edge)

    def fetch_measurements(
        self, edge: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored measurements in the order their edge sent them (edge, bd_seq, seq, rec).

        Each row is a dict of the table's columns: `codes` a list of ints, `kpis` (and
        `audit`) a list of D floats in raw units with None where unknown, `model_ref` hex,
        `prediction` the target predicted for `predicted_t_ms` or None.
        """
        params: list[Any] = [edge] if edge is not None else []
        where = "WHERE edge = ?" if edge is not None else ""
        tail = ""
        if limit is not None:
            tail, params = " LIMIT ?", [*params, int(limit)]
        sql = (
            f"SELECT {MEASUREMENT_COLUMNS} FROM measurements {where} "
            f"ORDER BY edge, bd_seq, seq, rec{tail}"
        )
        with self._lock:
            rows = self._query(sql, params)
        names = [c.strip() for c in MEASUREMENT_COLUMNS.split(",")]
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["codes"] = _codes(item["codes"])
            item["kpis"] = parse_json(item["kpis"])
            item["audit"] = None if item["audit"] is None else parse_json(item["audit"])
            out.append(item)
        return out

    def recent_codes(
        self, edge: str, bd_seq: int, before_seq: int, limit: int
    ) -> list[tuple[int, str, list[int]]]:
        """(seq, model_ref hex, codes) of the last `limit` measurements of one session of
        `edge` in frames before `before_seq`, newest first (the primary key serves it)."""
        with self._lock:
            rows = self._query(
                "SELECT seq, model_ref, codes FROM measurements WHERE edge = ? AND bd_seq = ? "
                "AND seq < ? ORDER BY seq DESC, rec DESC LIMIT ?",
                (edge, bd_seq, before_seq, int(limit)),
            )
        return [(int(s), str(m), _codes(codes)) for s, m, codes in rows]

    def edges(self) -> list[dict[str, Any]]:
        """Every edge seen: group, edge, online, bd_seq, model_sha256, birth, updated_ms."""
        with self._lock:
            rows = self._query(
                'SELECT "group", edge, online, bd_seq, model_sha256, birth, updated_ms '
                "FROM edges ORDER BY edge"
            )
        return [
            {
                "group": g,
                "edge": e,
                "online": bool(online),
                "bd_seq": bd_seq,
                "model_sha256": sha,
                "birth": None if birth is None else parse_json(birth),
                "updated_ms": updated,
            }
            for g, e, online, bd_seq, sha, birth, updated in rows
        ]

    # -- time series ----------------------------------------------------------------------

    def models(self) -> dict[str, list[str]]:
        """KPI names, in column order, of every registered model (by model ref in hex)."""
        with self._lock:
            rows = self._query("SELECT model_ref, kpis FROM models ORDER BY model_ref")
        return {str(ref): list(parse_json(kpis)) for ref, kpis in rows}

    def kpi_series(
        self,
        edge: str,
        kpi: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[tuple[int, float | None]]:
        """(t_ms, value in raw units, None where unknown) of one KPI of one edge, by time,
        with start_ms <= t_ms < end_ms. Measurements of every model that has the KPI count,
        wherever its column is; the (edge, t_ms) index serves the range. KeyError (naming
        the KPIs there are) when no registered model has `kpi`."""
        models = self.models()
        columns = {ref: names.index(kpi) for ref, names in models.items() if kpi in names}
        if not columns:
            known = sorted({k for names in models.values() for k in names})
            raise KeyError(f"no registered model has the KPI {kpi!r}; known: {known}")
        value = " ".join(f"WHEN ? THEN {self._element(i)}" for i in columns.values())
        sql = (
            f"SELECT t_ms, CASE model_ref {value} END FROM measurements WHERE edge = ? "
            f"AND model_ref IN ({', '.join('?' * len(columns))}) AND t_ms >= ? AND t_ms < ? "
            "ORDER BY t_ms, bd_seq, seq, rec"
        )
        params: list[Any] = [*columns, edge, *columns]
        params += [
            -(2**63) if start_ms is None else start_ms,
            2**63 - 1 if end_ms is None else end_ms,
        ]
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, int(limit)]
        with self._lock:
            rows = self._query(sql, params)
        return [(int(t), None if v is None else float(v)) for t, v in rows]

    def _element(self, i: int) -> str:
        """SQL for element `i` of the kpis JSON array, as a number (NULL for null)."""
        if self.dialect == "postgresql":
            return f"(kpis->>{int(i)})::double precision"
        return f"json_extract(kpis, '$[{int(i)}]')"

    # -- live accuracy (cloud.accuracy) ---------------------------------------------------

    def prediction_for(self, edge: str, t_made: int, t_for: int) -> float | None:
        """The prediction stored with the measurement of `edge` at `t_made` for `t_for`."""
        with self._lock:
            rows = self._query(
                "SELECT prediction FROM measurements WHERE edge = ? AND t_ms = ? "
                "AND predicted_t_ms = ? AND prediction IS NOT NULL LIMIT 1",
                (edge, t_made, t_for),
            )
        return float(rows[0][0]) if rows else None

    def accuracy(
        self,
        since_ms: int | None = None,
        until_ms: int | None = None,
        edge: str | None = None,
        by_edge: bool = True,
    ) -> list[dict[str, Any]]:
        """Live accuracy per edge, model and L over the buckets in [since_ms, until_ms): the
        audits, `nmse` (None without a measured value), and the target's `mae` and `rmse` in
        raw units (None without a prediction to check). Not `by_edge`: per model and L over
        the fleet (``"edge"`` None, ``"edges"`` how many sent audits)."""
        where = ["bucket_ms >= ?", "bucket_ms < ?"]
        params: list[Any] = [-(2**63) if since_ms is None else since_ms]
        params.append(2**63 - 1 if until_ms is None else until_ms)
        if edge is not None:
            where.append("edge = ?")
            params.append(edge)
        keys = "edge, model_ref, L" if by_edge else "COUNT(DISTINCT edge), model_ref, L"
        group = "edge, model_ref, L" if by_edge else "model_ref, L"
        with self._lock:
            rows = self._query(
                f"SELECT {keys}, SUM(audits), SUM(values_n), SUM(recon_se), "
                "SUM(recon_ss), SUM(target_n), SUM(target_ae), SUM(target_se), "
                f"MIN(bucket_ms), MAX(bucket_ms) FROM accuracy WHERE {' AND '.join(where)} "
                f"GROUP BY {group} ORDER BY {group}",
                params,
            )
        out = []
        for edge_id, ref, L, audits, values_n, se, ss, n, ae, tse, first, last in rows:
            who = {"edge": edge_id} if by_edge else {"edge": None, "edges": int(edge_id)}
            out.append({
                **who, "model_ref": ref, "L": int(L), "audits": int(audits),
                "nmse": float(se) / float(ss) if values_n and ss else None,
                "target_n": int(n),
                "target_mae": float(ae) / n if n else None,
                "target_rmse": math.sqrt(float(tse) / n) if n else None,
                "first_bucket_ms": int(first), "last_bucket_ms": int(last),
            })  # fmt: skip
        return out

    def kpi_accuracy(
        self, since_ms: int, until_ms: int | None = None, by_bucket: bool = False
    ) -> list[dict[str, Any]]:
        """Live accuracy per edge, model and KPI over the buckets in [since_ms, until_ms),
        one row per bucket too when `by_bucket`: `n` measured values, `nmse` and `mse` (the
        normalised space, as ``sparsetel evaluate``'s ``nmse_per_kpi`` and ``mse_per_kpi``)
        and `rmse` in the KPI's unit."""
        keys = "edge, model_ref, kpi" + (", bucket_ms" if by_bucket else "")
        with self._lock:
            rows = self._query(
                f"SELECT {keys}, SUM(n), SUM(se), SUM(ss), SUM(se_raw) FROM accuracy_kpi "
                f"WHERE bucket_ms >= ? AND bucket_ms < ? GROUP BY {keys} ORDER BY {keys}",
                (since_ms, 2**63 - 1 if until_ms is None else until_ms),
            )
        out = []
        for row in rows:
            *head, n, se, ss, se_raw = row
            item = dict(zip(keys.split(", "), head, strict=True))
            item.update(
                n=int(n),
                nmse=float(se) / float(ss) if ss else None,
                mse=float(se) / n if n else None,
                rmse=math.sqrt(float(se_raw) / n) if n else None,
            )
            out.append(item)
        return out

    def code_usage(self, since_ms: int, per_edge: int = 5000) -> dict[str, dict[str, Any]]:
        """How often each code was sent, per model ref: over each edge's latest `per_edge`
        measurements since `since_ms` (by measurement time; the (edge, t_ms) index keeps this
        cheap on a large store). {ref: {"measurements": n, "codes": {code: count}}}."""
        with self._lock:
            edges = [str(e) for (e,) in self._query("SELECT DISTINCT edge FROM frames")]
            rows = [
                row
                for edge in edges
                for row in self._query(
                    "SELECT model_ref, codes FROM measurements WHERE edge = ? AND t_ms >= ? "
                    "ORDER BY t_ms DESC LIMIT ?",
                    (edge, since_ms, per_edge),
                )
            ]
        out: dict[str, dict[str, Any]] = {}
        for ref, text in rows:
            usage = out.setdefault(str(ref), {"measurements": 0, "codes": {}})
            usage["measurements"] += 1
            for code in _codes(text):
                usage["codes"][code] = usage["codes"].get(code, 0) + 1
        return out

    # -- fleet (cloud.status) -------------------------------------------------------------

    def health(self) -> dict[str, dict[str, Any]]:
        """Each edge's latest heartbeat: {"group", "received_ms", "body"}."""
        with self._lock:
            rows = self._query('SELECT edge, "group", received_ms, body FROM health')
        return {
            str(e): {"group": g, "received_ms": int(ms), "body": parse_json(body)}
            for e, g, ms, body in rows
        }

    def frame_totals(self, since_ms: int) -> dict[str, dict[str, int]]:
        """Per edge: frames, measurements and payload bytes stored, in all and since
        `since_ms` (by arrival), and when its last frame arrived."""
        with self._lock:
            rows = self._query(
                "SELECT edge, COUNT(*), SUM(n_records), SUM(n_bytes), MAX(received_ms), "
                "SUM(CASE WHEN received_ms >= ? THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN received_ms >= ? THEN n_records ELSE 0 END) "
                "FROM frames GROUP BY edge",
                (since_ms, since_ms),
            )
        return {
            str(e): {
                "frames": int(f), "measurements": int(m), "bytes": int(b),
                "last_frame_ms": int(last), "recent_frames": int(rf),
                "recent_measurements": int(rm),
            }
            for e, f, m, b, last, rf, rm in rows
        }  # fmt: skip


def _codes(text: str) -> list[int]:
    """A measurement's codes as the store keeps them ("3,17,42"; "" for none)."""
    return [int(c) for c in text.split(",")] if text else []
