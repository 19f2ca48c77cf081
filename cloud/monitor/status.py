"""The fleet at a glance, from the decoder's store: ``sparsetel status`` (and the monitor).

Per edge: online or not (its retained birth and death), the model it runs, frames per second
and measurements per second over the last `window_s` (by arrival), bytes per measurement on
the wire (frame payloads, without MQTT framing) and the compression ratio against raw float32
(4 bytes per KPI), sequence gaps, its own rejects and spool depth from its latest heartbeat,
and that heartbeat's age; for temporal-codec (version 3) frames, the chained frames pending
(waiting for their predecessor) and the measurements given up as undecodable, by reason
(`cloud.ingest.chains`).

Births and heartbeats are read back through the same schemas that admitted them
(`shared.birth.read_birth`, `shared.health.read_beat`): a row kept before those schemas, or
written by anything else, shows its edge with the fields it cannot vouch for unknown.

The commands that only read (`status`, `query`, `monitor`) open the store with
`open_existing_store`, which refuses a SQLite path that does not exist instead of creating an
empty database there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ...shared.birth import read_birth
from ...shared.health import read_beat
from ..store.database import Store, open_store

__all__ = [
    "MAX_WINDOW_S",
    "check_window",
    "fleet_status",
    "format_status",
    "open_existing_store",
    "run_status",
]

RAW_BYTES_PER_KPI = 4  # float32
MAX_WINDOW_S = 100 * 365 * 86_400.0  # a century: any window a store can be asked about


def fleet_status(store: Store, now_ms: int | None = None, window_s: float = 60.0) -> dict[str, Any]:
    """{"edges": [one dict per edge, sorted], "totals": {...}, "window_s", "now_ms"}."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - int(window_s * 1000)
    frames = store.frame_totals(since)
    gaps = store.sequence_gaps()
    health = store.health()
    births = {e["edge"]: e for e in store.edges()}
    pending, undecodable = store.pending_per_edge(), store.undecodable()
    edges: list[dict[str, Any]] = []
    for edge in sorted(set(frames) | set(births) | set(health) | set(pending) | set(undecodable)):
        f, known, heard = frames.get(edge, {}), births.get(edge, {}), health.get(edge, {})
        birth = read_birth(known.get("birth"))
        beat = read_beat(heard.get("body"))
        n, size = f.get("measurements", 0), f.get("bytes", 0)
        per = size / n if n else None
        d = birth.D if birth else None
        edges.append({
            "edge": edge,
            "group": _text((known or heard).get("group")),
            "online": bool(known.get("online", False)),
            "model_sha256": _text(known.get("model_sha256")),
            "L": birth.L if birth else None,
            "frames": f.get("frames", 0),
            "measurements": n,
            "frames_per_s": f.get("recent_frames", 0) / window_s,
            "measurements_per_s": f.get("recent_measurements", 0) / window_s,
            "bytes_per_measurement": per,
            "compression_ratio": RAW_BYTES_PER_KPI * d / per if per and d else None,
            "gaps": gaps.get(edge, 0),
            "edge_rejects": sum(beat["rejects"].values()) if "rejects" in beat else None,
            "spool_depth": beat.get("spool_depth"),
            "heartbeat_age_s": (now_ms - heard["received_ms"]) / 1000 if heard else None,
            "pending_frames": pending.get(edge, 0),
            "undecodable": dict(sorted(undecodable.get(edge, {}).items())),
            "undecodable_measurements": sum(undecodable.get(edge, {}).values()),
        })  # fmt: skip
    totals = {
        "edges": len(edges),
        "online": sum(e["online"] for e in edges),
        "measurements": sum(e["measurements"] for e in edges),
        "measurements_per_s": sum(e["measurements_per_s"] for e in edges),
        "gaps": sum(e["gaps"] for e in edges),
        "pending_frames": sum(e["pending_frames"] for e in edges),
        "undecodable_measurements": sum(e["undecodable_measurements"] for e in edges),
    }
    return {"now_ms": now_ms, "window_s": window_s, "edges": edges, "totals": totals}


def format_status(status: dict[str, Any]) -> str:
    """The fleet as a text table, one edge per line, then a totals line."""
    head = ("edge", "online", "model", "L", "meas/s", "frames/s", "B/meas", "ratio", "gaps",
            "rejects", "spool", "beat age", "pending", "undecodable")  # fmt: skip
    lines = [head]
    for e in status["edges"]:
        lines.append((
            e["edge"], "yes" if e["online"] else "no", (e["model_sha256"] or "-")[:12],
            _cell(e["L"]), _cell(e["measurements_per_s"], ".1f"), _cell(e["frames_per_s"], ".2f"),
            _cell(e["bytes_per_measurement"], ".2f"), _cell(e["compression_ratio"], ".1f", "x"),
            _cell(e["gaps"]), _cell(e["edge_rejects"]), _cell(e["spool_depth"]),
            _cell(e["heartbeat_age_s"], ".0f", " s"), _cell(e["pending_frames"]),
            _cell(e["undecodable_measurements"]),
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    out = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    ]
    t = status["totals"]
    out.append(
        f"{t['online']} of {t['edges']} edges online; {t['measurements']:,} measurements stored, "
        f"{t['measurements_per_s']:.1f}/s over the last {status['window_s']:g} s; "
        f"{t['gaps']} frames missing"
        + (
            f"; {t['pending_frames']} frames pending, {t['undecodable_measurements']:,} "
            "measurements undecodable"
            if t["pending_frames"] or t["undecodable_measurements"]
            else ""
        )
    )
    return "\n".join(out)


def check_window(window_s: float, flag: str = "--window") -> float:
    """`window_s` when it is a usable window of seconds; ValueError (exit 2 on the command
    line) naming `flag` otherwise."""
    if not (math.isfinite(window_s) and 0 < window_s <= MAX_WINDOW_S):
        raise ValueError(f"{flag} must be > 0 and at most {MAX_WINDOW_S:.0f} s, got {window_s}")
    return window_s


def open_existing_store(db: str) -> Store:
    """`open_store` for a command that only reads: ValueError (exit 2) when `db` names a
    SQLite file that does not exist, which is then not created (only `serve` creates one)."""
    path = str(db).removeprefix("sqlite:///")
    if "://" not in path and path != ":memory:" and not Path(path).expanduser().is_file():
        raise ValueError(f"no database at {path} (`sparsetel serve --db` creates one)")
    return open_store(db)


def run_status(db: str, as_json: bool = False, window_s: float = 60.0) -> int:
    """``sparsetel status``: print the fleet summary; 0, or 2 for a bad window or a
    database that is not there."""
    check_window(window_s)
    with open_existing_store(db) as store:
        status = fleet_status(store, window_s=window_s)
    print(json.dumps(status) if as_json else format_status(status))
    return 0


def _cell(value: Any, spec: str = "", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _text(value: Any) -> str | None:
    """A column read back as text, or None: a stored row may hold anything."""
    return value if isinstance(value, str) else None
