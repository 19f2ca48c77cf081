"""The heartbeat on ``sparsetel/v1/{group}/HEALTH/{edge}``: its schema, one for both sides.

The edge builds every beat through `beat_payload` (so what it sends always validates) and
the cloud reads every beat through `parse_beat`, then keeps only what that returns: the
known fields, each typed and bounded, and a few short scalar fields this version does not
know (a newer edge's counters). Whatever else a beat carries is dropped; a beat that is too
large, is not a JSON object naming its own edge and group, or has a known field of the wrong
type or out of range is refused whole.

Rows kept before this schema existed are read back through `read_beat`, which keeps the
fields that validate and leaves the others unknown, so an old bad beat never reaches a page.

Fields (all optional but ``edge`` and ``group``): ``timestamp_ms``, ``bd_seq``,
``model_sha256``, the counts in `COUNTS` (integers in 0..2**53-1), the latencies in
`LATENCIES` (finite numbers >= 0; the mean may be null before the first measurement), and
``rejects``: at most `MAX_REASONS` reasons (1-64 printable characters) -> count, and
``dropped``: the most recent ranges of frames the edge's spool dropped unsent, at most
`MAX_DROPPED` ``[bd_seq, first_seq, last_seq]`` integer triples (each in 0..2**32-1,
first_seq <= last_seq), so the cloud stops waiting for frames that will never come.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import WireError
from .topics import validate_id

__all__ = [
    "COUNTS",
    "LATENCIES",
    "MAX_BEAT_BYTES",
    "MAX_DROPPED",
    "MAX_REASONS",
    "beat_payload",
    "normalise_beat",
    "parse_beat",
    "read_beat",
]

MAX_BEAT_BYTES = 8 * 1024  # a beat is about 600 bytes
MAX_REASONS = 32  # reject reasons per beat; the edge folds the smallest into "other"
MAX_DROPPED = 32  # dropped seq ranges per beat (the most recent; about 1 KiB at most)
MAX_EXTRA = 16  # unknown scalar fields kept per beat
MAX_TEXT = 64  # characters of a reason, an unknown key or an unknown string value
MAX_COUNT = 2**53 - 1  # integers above this lose precision in JSON numbers
_U32 = 2**32 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")

COUNTS = (
    "timestamp_ms", "measurements", "next_seq", "frames_sent", "frames_acked", "replayed",
    "confirmed", "audits", "spool_depth", "spool_bytes", "spool_dropped",
)  # fmt: skip
LATENCIES = ("uptime_s", "encode_batch_ms_max", "encode_ms_per_measurement")
_NULLABLE = frozenset({"encode_ms_per_measurement"})


def _count(value: Any, hi: int = MAX_COUNT) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise ValueError(f"must be an integer in 0..{hi}")
    return value


def _latency(value: Any) -> float:
    if type(value) not in (int, float) or not (math.isfinite(value) and 0 <= value <= MAX_COUNT):
        raise ValueError("must be a finite number >= 0")
    return float(value)


def _sha(value: Any) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError("must be 64 lowercase hex digits")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or not value.isprintable():
        raise ValueError(f"must be 1-{MAX_TEXT} printable characters")
    return value


def _rejects(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_REASONS:
        raise ValueError(f"must be an object of at most {MAX_REASONS} reason -> count")
    try:
        return {_text(k): _count(n) for k, n in value.items()}
    except ValueError:
        raise ValueError(
            f"must map reasons (1-{MAX_TEXT} printable characters) to integers in 0..{MAX_COUNT}"
        ) from None


def _dropped(value: Any) -> list[list[int]]:
    if not isinstance(value, list) or len(value) > MAX_DROPPED:
        raise ValueError(f"must be a list of at most {MAX_DROPPED} [bd_seq, first_seq, last_seq]")
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 3):
            raise ValueError("must hold [bd_seq, first_seq, last_seq] triples")
        bd_seq, first, last = (_count(v, _U32) for v in item)
        if first > last:
            raise ValueError(f"has a range whose first_seq {first} > last_seq {last}")
        out.append([bd_seq, first, last])
    return out


def _id(value: Any) -> str:
    return validate_id(value)


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "edge": _id,
    "group": _id,
    "bd_seq": lambda v: _count(v, _U32),
    "model_sha256": _sha,
    "rejects": _rejects,
    "dropped": _dropped,
    **dict.fromkeys(COUNTS, _count),
    **dict.fromkeys(LATENCIES, _latency),
}


def _extra(key: str, value: Any) -> bool:
    """Whether an unknown field is kept: a short key and a short scalar value."""
    if not _KEY.fullmatch(key):
        return False
    if value is None or type(value) is bool:
        return True
    if type(value) is int:
        return abs(value) <= MAX_COUNT
    if type(value) is float:
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_TEXT and value.isprintable()


def normalise_beat(data: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """The beat's fields that this schema keeps (see the module docstring), ``edge`` and
    ``group`` first. `strict`: ValueError naming the first bad known field or a missing
    ``edge`` or ``group``; otherwise bad fields are left out (for rows kept before)."""
    out: dict[str, Any] = {}
    for key in ("edge", "group"):
        if key not in data and strict:
            raise ValueError(f"a heartbeat needs '{key}'")
    for key, check in _FIELDS.items():
        if key not in data:
            continue
        value = data[key]
        if value is None and key in _NULLABLE:
            out[key] = None
            continue
        try:
            out[key] = check(value)
        except ValueError as exc:
            if strict:
                raise ValueError(f"{key} {exc}") from None
    extra = [k for k in data if k not in _FIELDS and _extra(k, data[k])]
    out.update((k, data[k]) for k in extra[:MAX_EXTRA])
    return out


def _fold(rejects: Mapping[str, int]) -> dict[str, int]:
    """At most MAX_REASONS reasons: the largest, and the rest summed as "other"."""
    ranked = sorted(rejects.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= MAX_REASONS:
        return {k[:MAX_TEXT]: n for k, n in ranked}
    kept = dict((k[:MAX_TEXT], n) for k, n in ranked[: MAX_REASONS - 1])
    kept["other"] = kept.get("other", 0) + sum(n for _, n in ranked[MAX_REASONS - 1 :])
    return kept


def beat_payload(body: Mapping[str, Any]) -> bytes:
    """The compact JSON of the beat `body` (its rejects folded to `MAX_REASONS`), checked
    against the schema; ValueError when it does not validate or exceeds MAX_BEAT_BYTES."""
    data = dict(body)
    if isinstance(data.get("rejects"), Mapping):
        data["rejects"] = _fold(data["rejects"])
    beat = normalise_beat(data)
    payload = json.dumps(beat, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > MAX_BEAT_BYTES:
        raise ValueError(f"heartbeat of {len(payload)} bytes, over {MAX_BEAT_BYTES}")
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_beat(payload: bytes | bytearray | memoryview, group: str, edge: str) -> dict[str, Any]:
    """The normalised beat of `edge` in `group` (from its topic);
    WireError(reason="health_invalid") when it is not one (see the module docstring)."""
    raw = bytes(payload)
    if len(raw) > MAX_BEAT_BYTES:
        raise WireError(f"heartbeat of {len(raw)} bytes, over {MAX_BEAT_BYTES}", "health_invalid")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if (data.get("edge"), data.get("group")) != (edge, group):
            raise ValueError(f"not a heartbeat of {group}/{edge}")
        return normalise_beat(data)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise WireError(f"bad heartbeat: {exc}", reason="health_invalid") from exc


def read_beat(body: Any) -> dict[str, Any]:
    """A kept beat read back: its fields that validate (none when it is not an object)."""
    return normalise_beat(body, strict=False) if isinstance(body, dict) else {}
