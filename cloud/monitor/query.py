"""``sparsetel query``: one KPI of one edge over a time range, from the decoder's store.

The rows come from `Store.kpi_series` (the (edge, t_ms) index serves the range), in raw units,
empty where the KPI was not measured. Times are epoch milliseconds or ISO 8601 (UTC unless
the text says otherwise), within what the store holds (a signed 64-bit count of ms). Output:
CSV (``t_ms,<kpi>``) or, with ``--json``, one JSON object.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import UTC, datetime
from typing import TextIO

from .status import open_existing_store

__all__ = ["MAX_MS", "MIN_MS", "parse_time", "run_query"]

MIN_MS, MAX_MS = -(2**63), 2**63 - 1  # what a BIGINT / SQLite INTEGER time column holds


def parse_time(text: str, flag: str = "time") -> int:
    """Epoch ms from "1700000000000" or "2023-11-14T22:13:20Z"; ValueError, naming `flag`,
    for anything else or a time outside MIN_MS..MAX_MS."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        if len(text) > 20:  # int() of thousands of digits is slow, and out of range anyway
            raise ValueError(f"{flag}: {text[:24]}... is outside {MIN_MS}..{MAX_MS} epoch ms")
        ms = int(text)
    else:
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{flag}: not a time (epoch ms or ISO 8601): {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        ms = round(stamp.timestamp() * 1000)
    if not MIN_MS <= ms <= MAX_MS:
        raise ValueError(f"{flag}: {ms} is outside {MIN_MS}..{MAX_MS} epoch ms")
    return ms


def run_query(
    db: str,
    edge: str,
    kpi: str,
    start: str | None = None,
    end: str | None = None,
    limit: int | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print the series; 0 ok, 2 for a KPI no registered model has (the message names those
    there are), a bad time or limit, or a database that is not there."""
    out = out if out is not None else sys.stdout
    start_ms = None if start is None else parse_time(start, "--from")
    end_ms = None if end is None else parse_time(end, "--to")
    if limit is not None and not 1 <= limit <= MAX_MS:
        raise ValueError(f"--limit must be in 1..{MAX_MS}, got {limit}")
    with open_existing_store(db) as store:
        try:
            rows = store.kpi_series(edge, kpi, start_ms, end_ms, limit)
        except KeyError as exc:
            print(f"sparsetel query: {exc.args[0]}", file=sys.stderr)
            return 2
    if as_json:
        body = {
            "edge": edge, "kpi": kpi, "start_ms": start_ms, "end_ms": end_ms, "rows": len(rows),
            "t_ms": [t for t, _ in rows], "values": [v for _, v in rows],
        }  # fmt: skip
        print(json.dumps(body), file=out)
        return 0
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["t_ms", kpi])
    writer.writerows((t, "" if v is None else repr(v)) for t, v in rows)
    return 0
