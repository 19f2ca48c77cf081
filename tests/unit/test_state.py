"""STATE payloads: births and deaths round-trip as JSON, and bad ones are rejected."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from sparsetel.shared.birth import (
    EdgeState,
    birth_payload,
    death_payload,
    parse_state,
    state_from_manifest,
)
from sparsetel.shared.errors import WireError
from sparsetel.shared.manifest import KpiNorm, ModelManifest

SHA = "0123456789abcdef" + "ab" * 24
BIRTH = EdgeState(
    online=True, edge="e1", group="g1", bd_seq=7, model_sha256=SHA, model_ref=SHA[:16],
    L=4, K=128, D=9, kpi_schema_hash="cd" * 32, agent_version="0.1.0",
    runtime_version="onnxruntime 1.32.0", timestamp_ms=1700000000000,
)  # fmt: skip


def test_birth_round_trips() -> None:
    assert parse_state(birth_payload(BIRTH)) == BIRTH


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_parse_state_accepts_any_byte_buffer_like_a_paho_payload(buffer: type) -> None:
    assert parse_state(buffer(birth_payload(BIRTH))) == BIRTH


def test_birth_payload_is_compact_json_with_every_field() -> None:
    data = json.loads(birth_payload(BIRTH))
    assert list(data) == [f.name for f in dataclasses.fields(EdgeState)]
    assert data["online"] is True and data["model_ref"] == "0123456789abcdef"
    assert b" " not in birth_payload(BIRTH).replace(b"onnxruntime 1", b"")


def test_death_carries_only_the_death_keys() -> None:
    payload = death_payload("e1", "g1", 7, 1700000001000)
    assert json.loads(payload) == {
        "online": False, "edge": "e1", "group": "g1", "bd_seq": 7, "timestamp_ms": 1700000001000,
    }  # fmt: skip
    state = parse_state(payload)
    assert state == EdgeState(False, "e1", "g1", 7, timestamp_ms=1700000001000)
    assert state.model_sha256 == "" and state.L == 0


def test_state_from_manifest_takes_model_fields_from_the_manifest() -> None:
    manifest = ModelManifest(
        model_sha256=SHA, L=4, K=128, kpis=("RSRP", "SNR"),
        norms=(KpiNorm("RSRP", -90.0, 10.0), KpiNorm("SNR", 10.0, 5.0)),
        target="SNR", horizon=0, window=8, opset=17,
    )  # fmt: skip
    state = state_from_manifest(
        manifest, edge="e1", group="g1", bd_seq=3, agent_version="0.1.0",
        runtime_version="ort", timestamp_ms=5,
    )  # fmt: skip
    assert state.model_ref == manifest.model_ref.hex() == SHA[:16]
    assert (state.L, state.K, state.D) == (4, 128, 2)
    assert state.kpi_schema_hash == manifest.kpi_schema_hash
    assert parse_state(birth_payload(state)) == state


def test_parse_state_ignores_unknown_keys() -> None:
    data = {**json.loads(birth_payload(BIRTH)), "future_field": [1, 2]}
    assert parse_state(json.dumps(data).encode()) == BIRTH


def birth_with(**changes: Any) -> bytes:
    data = {**dataclasses.asdict(BIRTH), **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


BAD_PAYLOADS = [
    ("not_utf8", b"\xff\xfe"),
    ("not_json", b"{online: true"),
    ("json_list", b"[1, 2]"),
    ("deeply_nested", b"[" * 100000 + b"]" * 100000),
    ("empty", b""),
    ("no_online", json.dumps({"edge": "e1", "group": "g1", "bd_seq": 1}).encode()),
    ("death_without_bd_seq", b'{"online": false, "edge": "e1", "group": "g1", "timestamp_ms": 1}'),
    ("birth_without_L", birth_with(L=...)),
    ("online_string", birth_with(online="true")),
    ("bd_seq_negative", birth_with(bd_seq=-1)),
    ("bd_seq_over_u32", birth_with(bd_seq=2**32)),
    ("bd_seq_bool", birth_with(bd_seq=True)),
    ("bd_seq_float", birth_with(bd_seq=7.0)),
    ("edge_with_slash", birth_with(edge="a/b")),
    ("group_empty", birth_with(group="")),
    ("L_zero", birth_with(L=0)),
    ("K_one", birth_with(K=1)),
    ("sha_short", birth_with(model_sha256="abc")),
    ("sha_uppercase", birth_with(model_sha256=SHA.upper())),
    ("model_ref_17", birth_with(model_ref=SHA[:17])),
    ("schema_hash_not_hex", birth_with(kpi_schema_hash="z" * 64)),
    ("agent_version_number", birth_with(agent_version=1)),
    ("timestamp_string", birth_with(timestamp_ms="now")),
]


@pytest.mark.parametrize("payload", [b[1] for b in BAD_PAYLOADS], ids=[b[0] for b in BAD_PAYLOADS])
def test_parse_state_rejects_bad_payload(payload: bytes) -> None:
    with pytest.raises(WireError) as info:
        parse_state(payload)
    assert info.value.reason == "state"


def test_birth_payload_rejects_offline_or_incomplete_state() -> None:
    with pytest.raises(ValueError):
        birth_payload(dataclasses.replace(BIRTH, online=False))
    with pytest.raises(ValueError):
        birth_payload(EdgeState(True, "e1", "g1", 7))
    with pytest.raises(ValueError):
        birth_payload(dataclasses.replace(BIRTH, edge="bad id"))


@pytest.mark.parametrize(
    ("edge", "group", "bd_seq", "ts"), [("e/1", "g", 1, 1), ("e", "", 1, 1), ("e", "g", -1, 1),
                                       ("e", "g", 1, -5)]
)  # fmt: skip
def test_death_payload_rejects_bad_arguments(edge: str, group: str, bd_seq: int, ts: int) -> None:
    with pytest.raises(ValueError):
        death_payload(edge, group, bd_seq, ts)
