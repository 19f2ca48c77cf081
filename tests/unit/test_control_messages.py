"""Births and heartbeats against their schemas (`shared.birth`, `shared.health`): bounded,
typed, kept as validated fields only; a bad one is rejected by reason and never stored."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sparsetel.cloud.ingest.handler import ACCEPTED, FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import open_store
from sparsetel.edge.framer import AgentStats, Framer
from sparsetel.edge.heartbeat import Heartbeat
from sparsetel.edge.publisher import PublisherStats
from sparsetel.edge.settings import EdgeConfig
from sparsetel.shared.birth import (
    MAX_STATE_BYTES,
    birth_payload,
    parse_state,
    read_birth,
    state_from_manifest,
)
from sparsetel.shared.errors import WireError
from sparsetel.shared.health import (
    MAX_BEAT_BYTES,
    MAX_REASONS,
    beat_payload,
    parse_beat,
    read_beat,
)
from sparsetel.shared.topics import health_topic, state_topic
from tests.frames import FakeCodec
from tests.tinymodel import KPIS, write_tiny_model

GROUP, EDGE = "g1", "e1"
SHA = "ab" * 32
BEAT: dict[str, Any] = {
    "edge": EDGE, "group": GROUP, "bd_seq": 7, "model_sha256": SHA,
    "timestamp_ms": 1_700_000_000_000, "uptime_s": 12.5, "measurements": 500, "next_seq": 10,
    "frames_sent": 10, "frames_acked": 9, "replayed": 0, "confirmed": 9, "audits": 3,
    "rejects": {"out_of_range": 2, "bad_time": 1},
    "spool_depth": 1, "spool_bytes": 2048, "spool_dropped": 0,
    "encode_ms_per_measurement": 0.05, "encode_batch_ms_max": 3.0,
}  # fmt: skip


def _beat(**change: Any) -> bytes:
    return json.dumps({**BEAT, **change}).encode()


# -- heartbeats ----------------------------------------------------------------------------

MALFORMED_BEATS = {
    "empty object": b"{}",
    "no edge": b'{"a":"x"}',
    "only the edge": b'{"edge":"e1","rejects":[1,2,3]}',
    "rejects a list": _beat(rejects=[1, 2, 3]),
    "rejects nested": _beat(rejects={"x": {"y": 1}}),
    "rejects a negative count": _beat(rejects={"x": -1}),
    "rejects too many reasons": _beat(rejects={f"r{i}": 1 for i in range(MAX_REASONS + 1)}),
    "reject reason too long": _beat(rejects={"r" * 65: 1}),
    "reject reason a control char": _beat(rejects={"a\nb": 1}),
    "spool depth a string": _beat(spool_depth="abc"),
    "spool depth a bool": _beat(spool_depth=True),
    "spool depth a float": _beat(spool_depth=1.5),
    "spool depth negative": _beat(spool_depth=-1),
    "count of 2**53": _beat(measurements=2**53),
    "1e400": _beat(spool_depth=1).replace(b'"spool_depth": 1', b'"spool_depth": 1e400'),
    "NaN latency": _beat(uptime_s=1).replace(b'"uptime_s": 1', b'"uptime_s": NaN'),
    "Infinity latency": _beat(uptime_s=1).replace(b'"uptime_s": 1', b'"uptime_s": Infinity'),
    "negative latency": _beat(encode_batch_ms_max=-0.5),
    "latency a string": _beat(encode_ms_per_measurement="fast"),
    "bd_seq over 32 bits": _beat(bd_seq=2**32),
    "model sha not hex": _beat(model_sha256="zz" * 32),
    "another edge": _beat(edge="e2"),
    "another group": _beat(group="g2"),
    "not an object": b"[1, 2, 3]",
    "not JSON": b"{not json",
    "not UTF-8": b'{"edge": "\xff"}',
    "too large": _beat(pad="x" * MAX_BEAT_BYTES),
    "deeply nested": b'{"edge":"e1","group":"g1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "endless number": b'{"edge":"e1","group":"g1","spool_depth":' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("payload", MALFORMED_BEATS.values(), ids=MALFORMED_BEATS.keys())
def test_a_malformed_heartbeat_is_rejected_and_never_stored(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(WireError) as exc:
        parse_beat(payload, GROUP, EDGE)
    assert exc.value.reason == "health_invalid"
    with open_store(tmp_path / "s.db") as store:
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats())
        outcome = ingest.handle(health_topic(GROUP, EDGE), payload)
        assert outcome == "health_invalid" and outcome not in ACCEPTED  # dead-lettered
        assert ingest.stats.rejects() == {"health_invalid": 1}
        assert store.health() == {}


def test_a_heartbeat_is_kept_as_its_validated_fields_and_a_few_short_unknown_ones() -> None:
    extra = {f"new_{i}": i for i in range(20)}
    got = parse_beat(_beat(notes={"a": 1}, blob="x" * 65, **extra), GROUP, EDGE)
    assert {k: got[k] for k in BEAT} == BEAT
    assert got["uptime_s"] == 12.5 and isinstance(got["encode_batch_ms_max"], float)
    assert [k for k in got if k not in BEAT] == [f"new_{i}" for i in range(16)]  # at most 16
    assert parse_beat(b'{"edge":"e1","group":"g1"}', GROUP, EDGE) == {"edge": EDGE, "group": GROUP}
    assert (
        parse_beat(_beat(encode_ms_per_measurement=None), GROUP, EDGE)["encode_ms_per_measurement"]
        is None
    )


def test_a_kept_heartbeat_read_back_keeps_only_the_fields_that_validate() -> None:
    old = {**BEAT, "rejects": [1, 2, 3], "spool_depth": "abc", "uptime_s": float("inf")}
    got = read_beat(old)
    assert "rejects" not in got and "spool_depth" not in got and "uptime_s" not in got
    assert got["measurements"] == 500 and got["edge"] == EDGE
    assert read_beat([1, 2, 3]) == {} and read_beat(None) == {}


def test_the_edge_folds_rejects_beyond_the_bound_and_refuses_a_beat_that_does_not_validate() -> (
    None
):
    many = {f"reason_{i:02}": 100 - i for i in range(40)}
    body = json.loads(beat_payload({**BEAT, "rejects": many}))
    assert len(body["rejects"]) == MAX_REASONS
    assert body["rejects"]["other"] == sum(100 - i for i in range(MAX_REASONS - 1, 40))
    assert sum(body["rejects"].values()) == sum(many.values())
    with pytest.raises(ValueError, match="spool_depth must be an integer"):
        beat_payload({**BEAT, "spool_depth": -1})


def _framer(tmp_path: Path) -> Framer:
    source = tmp_path / "kpis.csv"
    source.write_text(",".join(KPIS) + "\n1,2,3\n")
    cfg = EdgeConfig(
        group=GROUP, edge_id=EDGE, model=write_tiny_model(tmp_path / "run"), source=str(source),
        state_dir=tmp_path / "state",
    )  # fmt: skip
    return Framer(cfg, AgentStats(), None)


def test_a_real_beat_of_the_agents_counters_validates_on_the_cloud(tmp_path: Path) -> None:
    framer = _framer(tmp_path)
    framer.stats.measurements = 1234
    framer.stats.rejects.update(Counter({"out_of_range": 3, "wire_too_large": 1}))
    publisher: Any = SimpleNamespace(stats=PublisherStats(published=30, acked=29))
    beat = Heartbeat(lambda: framer.counters(publisher), lambda _: None, 30.0)
    beat.clock.record(0.002, 50)
    got = parse_beat(beat.payload(), GROUP, EDGE)
    assert got["measurements"] == 1234 and got["frames_sent"] == 30 and got["frames_acked"] == 29
    assert got["rejects"] == {"out_of_range": 3, "wire_too_large": 1}
    assert got["model_sha256"] == framer.encoder.model_sha256
    assert got["encode_ms_per_measurement"] == pytest.approx(0.04)
    sent = json.loads(beat.payload())  # every field the agent sends is one the schema knows
    assert set(sent) <= set(got) | {"encode_ms_per_measurement"}


# -- births ---------------------------------------------------------------------------------


def _birth(**change: Any) -> dict[str, Any]:
    state = state_from_manifest(
        FakeCodec().manifest, edge=EDGE, group=GROUP, bd_seq=3, agent_version="0.4.0",
        runtime_version="onnxruntime 1.20.1", timestamp_ms=1_700_000_000_000,
    )  # fmt: skip
    return {**json.loads(birth_payload(state)), **change}


MALFORMED_BIRTHS = {
    "empty object": b"{}",
    "5 MB": json.dumps(_birth(pad="x" * 5_000_000)).encode(),
    "just over the limit": json.dumps(_birth(pad="x" * MAX_STATE_BYTES)).encode(),
    "agent version too long": json.dumps(_birth(agent_version="v" * 65)).encode(),
    "runtime version a control char": json.dumps(_birth(runtime_version="ort\x1b[31m")).encode(),
    "version not a string": json.dumps(_birth(agent_version=4)).encode(),
    "endless number": json.dumps(_birth())
    .replace('"bd_seq": 3', '"bd_seq": ' + "9" * 4000)
    .encode(),
    "L a float": json.dumps(_birth(L=3.0)).encode(),
}


@pytest.mark.parametrize("payload", MALFORMED_BIRTHS.values(), ids=MALFORMED_BIRTHS.keys())
def test_a_malformed_birth_is_rejected_and_never_stored(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(WireError) as exc:
        parse_state(payload)
    assert exc.value.reason == "state"
    with open_store(tmp_path / "s.db") as store:
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats())
        outcome = ingest.handle(state_topic(GROUP, EDGE), payload)
        assert outcome == "state" and outcome not in ACCEPTED  # dead-lettered
        assert ingest.stats.rejects() == {"state": 1} and store.edges() == []


def test_a_birth_is_stored_as_its_validated_fields_only(tmp_path: Path) -> None:
    birth = _birth(note="n" * 3000, nested={"deep": [1, 2, 3]})
    with open_store(tmp_path / "s.db") as store:
        ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats())
        assert ingest.handle(state_topic(GROUP, EDGE), json.dumps(birth).encode()) == "birth"
        (edge,) = store.edges()
    kept = {k: v for k, v in birth.items() if k not in ("note", "nested")}
    assert edge["birth"] == kept and read_birth(edge["birth"]) == parse_state(
        json.dumps(kept).encode()
    )


def test_a_kept_birth_that_does_not_validate_reads_back_as_none() -> None:
    assert read_birth(_birth()) is not None
    for bad in (None, {}, [1], _birth(L="3"), _birth(agent_version="v" * 5_000_000)):
        assert read_birth(bad) is None
    assert read_birth({**_birth(), "online": False}) is None  # a death is not a birth
