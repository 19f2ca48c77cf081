"""The measurement database's schema: column types per dialect and the ordered migrations.

`Store` applies `MIGRATIONS` in order and records each in ``schema_version``; a migration is
never edited once released, only followed by a new one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MEASUREMENT_COLUMNS", "MIGRATIONS", "TYPES", "json_floats", "parse_json"]

# Column types that differ between the two dialects; the migrations name them in braces.
TYPES = {
    "sqlite": {
        "bigint": "INTEGER",
        "real": "REAL",
        "bool": "INTEGER",
        "json": "TEXT",
        "serial": "INTEGER",
        "blob": "BLOB",
    },
    "postgresql": {
        "bigint": "BIGINT",
        "real": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "json": "JSONB",
        "serial": "BIGSERIAL",
        "blob": "BYTEA",
    },
}

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: edges, frames, measurements
        """CREATE TABLE edges (
            edge TEXT PRIMARY KEY, "group" TEXT NOT NULL, online {bool} NOT NULL,
            bd_seq {bigint}, model_sha256 TEXT, birth {json}, updated_ms {bigint} NOT NULL)""",
        """CREATE TABLE frames (
            edge TEXT NOT NULL, bd_seq {bigint} NOT NULL, seq {bigint} NOT NULL,
            model_ref TEXT NOT NULL, n_records INTEGER NOT NULL, n_bytes INTEGER NOT NULL,
            historical {bool} NOT NULL, received_ms {bigint} NOT NULL,
            CONSTRAINT frames_key UNIQUE (edge, bd_seq, seq))""",
        """CREATE TABLE measurements (
            edge TEXT NOT NULL, bd_seq {bigint} NOT NULL, seq {bigint} NOT NULL,
            rec INTEGER NOT NULL, t_ms {bigint} NOT NULL, model_ref TEXT NOT NULL,
            nnz INTEGER NOT NULL, codes TEXT NOT NULL, kpis {json} NOT NULL,
            prediction {real}, predicted_t_ms {bigint}, audit {json},
            PRIMARY KEY (edge, bd_seq, seq, rec))""",
        "CREATE INDEX measurements_edge_t ON measurements (edge, t_ms)",
    ),
    (  # 2: frames of models the service does not know yet, kept until it does
        """CREATE TABLE parked_frames (
            id {serial} PRIMARY KEY, edge TEXT NOT NULL, model_ref TEXT NOT NULL,
            topic TEXT NOT NULL, payload {blob} NOT NULL, received_ms {bigint} NOT NULL)""",
        "CREATE INDEX parked_frames_model ON parked_frames (model_ref, id)",
    ),
    (  # 3: what each model's kpis columns are, so a KPI is found by name over time
        """CREATE TABLE models (
            model_ref TEXT PRIMARY KEY, kpis {json} NOT NULL, target TEXT NOT NULL,
            registered_ms {bigint} NOT NULL)""",
    ),
    (  # 4: live accuracy from audit samples, summed per minute (see cloud.accuracy)
        """CREATE TABLE accuracy (
            edge TEXT NOT NULL, model_ref TEXT NOT NULL, L INTEGER NOT NULL,
            bucket_ms {bigint} NOT NULL, audits INTEGER NOT NULL, values_n INTEGER NOT NULL,
            recon_se {real} NOT NULL, recon_ss {real} NOT NULL, target_n INTEGER NOT NULL,
            target_ae {real} NOT NULL, target_se {real} NOT NULL,
            PRIMARY KEY (edge, model_ref, bucket_ms))""",
    ),
    (  # 5: each edge's latest heartbeat (its spool, rejects, encode latency)
        """CREATE TABLE health (
            edge TEXT PRIMARY KEY, "group" TEXT NOT NULL, received_ms {bigint} NOT NULL,
            body {json} NOT NULL)""",
    ),
    (  # 6: live accuracy per KPI, summed per minute (cloud.accuracy.KpiError)
        """CREATE TABLE accuracy_kpi (
            edge TEXT NOT NULL, model_ref TEXT NOT NULL, bucket_ms {bigint} NOT NULL,
            kpi TEXT NOT NULL, n INTEGER NOT NULL, se {real} NOT NULL, ss {real} NOT NULL,
            se_raw {real} NOT NULL, PRIMARY KEY (edge, model_ref, bucket_ms, kpi))""",
    ),
    (  # 7: each frame's content digest (NULL before), to tell a clone from a repeat
        # (cloud.digest); frames refused but kept for an operator (a clone, a time outside
        # the window), exactly as they came; parked frames counted per edge
        "ALTER TABLE frames ADD COLUMN digest TEXT",
        """CREATE TABLE held_frames (
            id {serial} PRIMARY KEY, edge TEXT NOT NULL, bd_seq {bigint} NOT NULL,
            seq {bigint} NOT NULL, reason TEXT NOT NULL, digest TEXT NOT NULL,
            topic TEXT NOT NULL, payload {blob} NOT NULL, received_ms {bigint} NOT NULL,
            CONSTRAINT held_frames_key UNIQUE (edge, bd_seq, seq, digest))""",
        "CREATE INDEX parked_frames_edge ON parked_frames (edge)",
    ),
    (  # 8: temporal-codec chains (cloud.store.chains): the decoder state each chain's last
        # processed frame left (state NULL: that frame was given up, so is its chain), chained
        # frames waiting for their predecessor, and the measurements given up, by reason
        """CREATE TABLE chains (
            edge TEXT NOT NULL, bd_seq {bigint} NOT NULL, seq {bigint} NOT NULL,
            model_sha256 TEXT, state TEXT, last_ms {bigint} NOT NULL,
            period_ms {bigint} NOT NULL, reason TEXT, updated_ms {bigint} NOT NULL,
            PRIMARY KEY (edge, bd_seq, seq))""",
        """CREATE TABLE pending_frames (
            edge TEXT NOT NULL, bd_seq {bigint} NOT NULL, seq {bigint} NOT NULL,
            n_records INTEGER NOT NULL, digest TEXT NOT NULL, topic TEXT NOT NULL,
            payload {blob} NOT NULL, received_ms {bigint} NOT NULL,
            PRIMARY KEY (edge, bd_seq, seq))""",
        """CREATE TABLE undecodable (
            edge TEXT NOT NULL, reason TEXT NOT NULL, frames {bigint} NOT NULL,
            measurements {bigint} NOT NULL, updated_ms {bigint} NOT NULL,
            PRIMARY KEY (edge, reason))""",
    ),
)

MEASUREMENT_COLUMNS = (
    "edge, bd_seq, seq, rec, t_ms, model_ref, nnz, codes, kpis, prediction, predicted_t_ms, audit"
)


def json_floats(values: Sequence[float]) -> str:
    """A JSON array of floats with null for NaN or infinity (JSON has neither). Nine
    significant digits: every float32 (the decoder's output, the wire's audit values) comes
    back exactly; formatting them is less than half the cost of `json.dumps` on a worker."""
    return "[" + ", ".join([f"{v:.9g}" if math.isfinite(v) else "null" for v in values]) + "]"


def parse_json(value: Any) -> Any:
    """SQLite hands JSON back as text, PostgreSQL (jsonb) already parsed."""
    return json.loads(value) if isinstance(value, str) else value
