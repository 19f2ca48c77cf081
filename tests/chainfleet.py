"""A fleet of edges whose version 3 frames do everything a batch can hold (`fleet`), and the
rows the ingest writes (`table_rows`): what the tests of `cloud.ingest.chainbatch` compare."""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsetel.shared.chainframe import decode_chain_frame, encode_chain_frame
from sparsetel.shared.topics import data_topic, health_topic
from tests.frames import temporal_frames

GROUP = "g1"
NOW_MS = 1_700_000_000_000
Message = tuple[str, bytes, int]
# Columns that say when a row was written, not what it holds
VOLATILE = {"updated_ms", "registered_ms", "id"}
TABLES = ("frames", "measurements", "chains", "pending_frames", "undecodable", "held_frames",
          "parked_frames", "models", "accuracy", "accuracy_kpi", "health")  # fmt: skip


def data(edge: str, payload: bytes) -> Message:
    return (data_topic(GROUP, edge), payload, NOW_MS)


def dropped(edge: str, ranges: list[list[int]]) -> Message:
    body = json.dumps({"edge": edge, "group": GROUP, "dropped": ranges}).encode()
    return (health_topic(GROUP, edge), body, NOW_MS)


def interleave(*streams: Sequence[Message], seed: int = 0) -> list[Message]:
    """The streams' messages mixed at random, each stream's in its own order: a fleet."""
    rng, queues, out = random.Random(seed), [list(s) for s in streams], []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
    return out


def fleet(run: Path, seed: int = 0) -> list[Message]:
    """Nine edges, each doing something else: in order, reordered, repeated, cloned, broken,
    dropped, audited, of an unknown model, a new session, and a run of frames that waits for
    the one before it, then repeats; `seed` picks how their messages interleave."""
    a, _ = temporal_frames(run, 14, per_frame=1, key_interval=5)
    b, _ = temporal_frames(run, 8, per_frame=2, key_interval=8, seed=1)
    c, _ = temporal_frames(run, 5, per_frame=1, key_interval=10, seed=2)
    c_clone, _ = temporal_frames(run, 5, per_frame=1, key_interval=10, seed=3)
    d, _ = temporal_frames(run, 6, per_frame=1, key_interval=10, seed=4)
    bad = decode_chain_frame(d[2])
    d[2] = encode_chain_frame(dataclasses.replace(bad, payload=bad.payload + b"\xff\xff\xff"))
    e, _ = temporal_frames(run, 6, per_frame=1, key_interval=10, seed=5)
    f, _ = temporal_frames(run, 6, per_frame=2, key_interval=6, audit_every=3, seed=6)
    g, _ = temporal_frames(run, 3, per_frame=1, key_interval=10, seed=7)
    g_head = decode_chain_frame(g[0])
    assert g_head.head is not None
    g[0] = encode_chain_frame(
        dataclasses.replace(g_head, head=g_head.head._replace(model_ref=b"\x01" * 8))
    )
    h0, _ = temporal_frames(run, 4, per_frame=1, key_interval=10, seed=8)
    h1, _ = temporal_frames(run, 4, per_frame=1, key_interval=10, bd_seq=1, seed=9)
    p, _ = temporal_frames(run, 6, per_frame=1, key_interval=10, seed=10)
    streams = [
        [data("a", x) for x in a],
        [data("b", b[i]) for i in (0, 2, 1, 3, 5, 4, 6, 7, 7)],
        [data("c", x) for x in (c[0], c[1], c[1], c[2], c[0], c_clone[3], c[3], c[4])],
        [data("d", x) for x in d],
        [data("e", e[0]), data("e", e[1]), dropped("e", [[0, 2, 2]]), *map(data, "ee", e[3:5])],
        [data("f", x) for x in f],
        [data("g", x) for x in g],
        [data("h", x) for x in (h0[0], h0[1], h1[0], h0[2], h1[1], h0[3], h1[2], h1[3])],
        [data("p", p[i]) for i in (1, 2, 3, 0, 4, 2, 0, 5, 5)],  # a run waits for its start
    ]
    return interleave(*streams, seed=seed)


def table_rows(path_or_url: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the ingest writes, without the columns that say when, in
    values both stores give alike (JSON parsed, booleans as 0 and 1, bytes): a SQLite file or
    a PostgreSQL URL."""
    if isinstance(path_or_url, Path):
        conn: Any = sqlite3.connect(path_or_url)
    else:
        import psycopg

        conn = psycopg.connect(path_or_url)
    out = {}
    with conn:
        for table in TABLES:
            cursor = conn.execute(f"SELECT * FROM {table}")
            keep = [i for i, d in enumerate(cursor.description) if d[0] not in VOLATILE]
            rows = (tuple(_plain(row[i]) for i in keep) for row in cursor.fetchall())
            out[table] = sorted(rows, key=repr)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value
