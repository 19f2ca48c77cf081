"""Birth and death payloads on ``sparsetel/v1/{group}/STATE/{edge}`` (retained JSON).

A birth says which model an edge runs, so a decoder can check every frame's model_ref and
shape against it; the matching death (the MQTT last will) carries the same `bd_seq`.

A state is at most `MAX_STATE_BYTES` of JSON (a birth is about 400 bytes), and every field is
typed and bounded (versions: 1-64 printable characters). What a decoder keeps of a birth is
the validated `EdgeState` (`state_record`), never the document as it came; a kept one is read
back through `read_birth`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import WireError
from .manifest import MAX_K, ModelManifest
from .topics import validate_id

__all__ = [
    "MAX_STATE_BYTES",
    "EdgeState",
    "birth_payload",
    "death_payload",
    "parse_state",
    "read_birth",
    "state_from_manifest",
    "state_record",
]

MAX_STATE_BYTES = 4 * 1024
MAX_VERSION = 64  # characters of agent_version and runtime_version

_DEATH_KEYS = ("online", "edge", "group", "bd_seq", "timestamp_ms")
_HEX = re.compile(r"[0-9a-f]+")
_U32 = 2**32 - 1
_U64 = 2**64 - 1


@dataclass(frozen=True)
class EdgeState:
    """What an edge announces about itself. A death sets only the first four fields and
    `timestamp_ms`; the others keep their defaults."""

    online: bool
    edge: str
    group: str
    bd_seq: int
    model_sha256: str = ""
    model_ref: str = ""  # hex of the 8 bytes frames carry
    L: int = 0
    K: int = 0
    D: int = 0
    kpi_schema_hash: str = ""
    agent_version: str = ""
    runtime_version: str = ""
    timestamp_ms: int = 0


def state_from_manifest(
    manifest: ModelManifest,
    *,
    edge: str,
    group: str,
    bd_seq: int,
    agent_version: str,
    runtime_version: str,
    timestamp_ms: int,
) -> EdgeState:
    """The birth state of an edge running the encoder that `manifest` describes."""
    return EdgeState(
        online=True, edge=edge, group=group, bd_seq=bd_seq,
        model_sha256=manifest.model_sha256, model_ref=manifest.model_ref.hex(),
        L=manifest.L, K=manifest.K, D=manifest.D, kpi_schema_hash=manifest.kpi_schema_hash,
        agent_version=agent_version, runtime_version=runtime_version, timestamp_ms=timestamp_ms,
    )  # fmt: skip


def _problems(data: dict[str, Any], birth: bool) -> str | None:
    """The first thing wrong with a state's fields, or None."""
    ints = {"bd_seq": (0, _U32), "timestamp_ms": (0, _U64)}
    if birth:
        ints.update(L=(1, 255), K=(2, MAX_K), D=(1, 65535))
    if type(data["online"]) is not bool:
        return "online must be true or false"
    for key in ("edge", "group"):
        try:
            validate_id(data[key])
        except ValueError as exc:
            return f"{key}: {exc}"
    for key, (lo, hi) in ints.items():
        if type(data[key]) is not int or not lo <= data[key] <= hi:
            return f"{key} must be an integer in {lo}..{hi}"
    if birth:
        for key, digits in (("model_sha256", 64), ("model_ref", 16), ("kpi_schema_hash", 64)):
            value = data[key]
            if not isinstance(value, str) or len(value) != digits or not _HEX.fullmatch(value):
                return f"{key} must be {digits} lowercase hex digits"
        for key in ("agent_version", "runtime_version"):
            value = data[key]
            if not isinstance(value, str) or len(value) > MAX_VERSION or not value.isprintable():
                return f"{key} must be at most {MAX_VERSION} printable characters"
    return None


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")


def birth_payload(state: EdgeState) -> bytes:
    """The JSON a live edge publishes (retained) on its STATE topic; ValueError if invalid."""
    if state.online is not True:
        raise ValueError("a birth needs online=True")
    data = asdict(state)
    problem = _problems(data, birth=True)
    if problem:
        raise ValueError(f"bad birth state: {problem}")
    return _dumps(data)


def death_payload(edge: str, group: str, bd_seq: int, timestamp_ms: int) -> bytes:
    """The JSON that marks `edge` offline: its last will, and what it sends on a clean stop."""
    data = dict(zip(_DEATH_KEYS, (False, edge, group, bd_seq, timestamp_ms), strict=True))
    problem = _problems(data, birth=False)
    if problem:
        raise ValueError(f"bad death state: {problem}")
    return _dumps(data)


def parse_state(payload: bytes | bytearray | memoryview) -> EdgeState:
    """A birth or death read back; WireError(reason="state") when it is over
    MAX_STATE_BYTES, not JSON, or its fields are missing or bad.

    Keys this version does not know are ignored, so newer edges can add some.
    """
    raw = bytes(payload)
    if len(raw) > MAX_STATE_BYTES:
        raise WireError(f"STATE payload of {len(raw)} bytes, over {MAX_STATE_BYTES}", "state")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or an endless number
        raise WireError(f"STATE payload is not UTF-8 JSON: {exc}", reason="state") from exc
    return _state(data)


def _state(data: Any) -> EdgeState:
    if not isinstance(data, dict):
        raise WireError("STATE payload is not a JSON object", reason="state")
    birth = data.get("online") is True
    keys = [f.name for f in fields(EdgeState)] if birth else list(_DEATH_KEYS)
    missing = [key for key in keys if key not in data]
    if missing:
        kind = "birth" if birth else "death"
        raise WireError(f"STATE {kind} lacks {', '.join(missing)}", reason="state")
    known = {key: data[key] for key in keys}
    problem = _problems(known, birth)
    if problem:
        raise WireError(f"bad STATE payload: {problem}", reason="state")
    return EdgeState(**known)


def state_record(state: EdgeState) -> dict[str, Any]:
    """What a decoder keeps of a birth: its validated fields, nothing else it carried."""
    return asdict(state)


def read_birth(record: Any) -> EdgeState | None:
    """A kept birth read back (`state_record`, or a document kept verbatim before); None
    when it is not a valid birth."""
    try:
        state = _state(record)
    except WireError:
        return None
    return state if state.online else None
