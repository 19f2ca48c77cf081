"""Rows for the store, a small fleet to fill one with, and the checks every store must pass.

The `check_*` functions hold assertions run against SQLite (tests/unit) and against
PostgreSQL (tests/integration/test_store_postgres.py) alike: one behaviour, two databases.
"""

from __future__ import annotations

import json
import math

import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import Store
from sparsetel.cloud.store.rows import FrameRow, MeasurementRow
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.topics import health_topic, state_topic
from tests.frames import EDGE, GROUP, REF, TOPIC, FakeCodec, L, T, audited_frame, data_frame
from tests.helpers import ANY_TIME

ROW_REF = bytes.fromhex("0123456789abcdef")
NOW = 1_700_000_100_000  # the fleet's "now": 100 s after the first frame's time


def frame_row(seq: int, edge: str = "edge-1", bd_seq: int = 0, n: int = 2) -> FrameRow:
    return FrameRow(edge, bd_seq, seq, ROW_REF, n, 40 + n, False, 1_700_000_000_000)


def measurement_rows(n: int = 2, t0: int = 1_000) -> list[MeasurementRow]:
    return [
        MeasurementRow(
            rec=i,
            t_ms=t0 + 1000 * i,
            nnz=2,
            codes=(3, 3 + i),
            kpis=(-90.5 + i, math.nan, 12.0),
            prediction=None if i == 0 else 5.5,
            predicted_t_ms=None if i == 0 else t0 + 1000 * (i + 1),
        )
        for i in range(n)
    ]


def batch_with_a_failing_write(store: Store) -> list[bool]:
    """Three frames in one batch: a new one, a repeat, and one whose write fails halfway."""
    out = []
    with store.batch():
        out.append(store.store_frame(frame_row(1), measurement_rows()))
        out.append(store.store_frame(frame_row(0), measurement_rows()))  # stored before the batch
        try:
            with store._transaction():  # a write that fails after its first statement
                store.store_frame(frame_row(2), measurement_rows())
                raise RuntimeError("disk says no")
        except RuntimeError:
            out.append(False)
        out.append(store.store_frame(frame_row(3), measurement_rows()))
    return out


def check_kpi_series(store: Store) -> None:
    """A KPI by name over time, across two models that keep it in different columns."""
    other = bytes.fromhex("aaaabbbbccccdddd")
    store.register_model(ROW_REF, ("RSRP", "SNR", "CQI"), "CQI")
    store.register_model(other, ("SNR", "RSRP"), "SNR")
    store.register_model(ROW_REF, ("ignored",), "x")  # once registered, a model stays as it was
    assert store.models() == {ROW_REF.hex(): ["RSRP", "SNR", "CQI"], other.hex(): ["SNR", "RSRP"]}
    # RSRP -90.5, -89.5, -88.5; SNR NaN
    store.store_frame(frame_row(0), measurement_rows(3, t0=1_000))
    upgraded = FrameRow("edge-1", 1, 0, other, 2, 50, False, 0)
    store.store_frame(upgraded, [
        MeasurementRow(0, 4_000, 1, (1,), (7.0, -80.0)),
        MeasurementRow(1, 5_000, 1, (1,), (8.0, math.nan)),
    ])  # fmt: skip
    store.store_frame(frame_row(0, edge="edge-2"), measurement_rows(3, t0=1_000))
    assert store.kpi_series("edge-1", "RSRP") == [
        (1_000, -90.5), (2_000, -89.5), (3_000, -88.5), (4_000, -80.0), (5_000, None),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "RSRP", start_ms=2_000, end_ms=5_000) == [
        (2_000, -89.5), (3_000, -88.5), (4_000, -80.0),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "SNR", start_ms=2_500) == [
        (3_000, None), (4_000, 7.0), (5_000, 8.0),
    ]  # fmt: skip
    assert store.kpi_series("edge-1", "CQI", limit=2) == [(1_000, 12.0), (2_000, 12.0)]
    assert store.kpi_series("nobody", "RSRP") == []
    with pytest.raises(KeyError, match="'RSRP', 'SNR'"):
        store.kpi_series("edge-1", "DL_bitrate")


def check_digests_and_held_frames(store: Store) -> None:
    """A stored frame keeps its digest; a held frame (clone, time window) is kept once."""
    row = FrameRow("edge-1", 0, 0, ROW_REF, 2, 42, False, 1, digest="ab" * 16)
    assert store.store_frame(row, measurement_rows())
    assert store.stored_digest("edge-1", 0, 0) == "ab" * 16
    assert store.stored_digest("edge-1", 0, 1) is None  # not stored
    topic = "sparsetel/v1/g/DATA/edge-1"
    payload = bytes(range(256))  # every byte value comes back
    key = ("edge-1", 0, 0)
    assert store.hold_frame(key, "clone", "cd" * 16, (topic, payload, 7))
    assert not store.hold_frame(key, "clone", "cd" * 16, (topic, payload, 8))  # once
    assert store.hold_frame(key, "time_window", "ef" * 16, (topic, b"third", 9))
    assert [(c["reason"], c["digest"], c["payload"], c["received_ms"]) for c in store.held()] == [
        ("clone", "cd" * 16, payload, 7),
        ("time_window", "ef" * 16, b"third", 9),
    ]
    assert [c["digest"] for c in store.held("edge-1", reason="time_window")] == ["ef" * 16]
    assert store.held(edge="edge-2") == []
    store.park_frame("edge-1", ROW_REF, topic, b"p", 1)
    store.park_frame("edge-2", ROW_REF, topic.replace("edge-1", "edge-2"), b"p", 1)
    assert store.held_per_edge("parked_frames") == {"edge-1": 1, "edge-2": 1}
    assert store.held_per_edge("held_frames") == {"edge-1": 2}
    with pytest.raises(ValueError):
        store.held_per_edge("frames")


def check_live_accuracy(store: Store) -> None:
    """Audits give the live NMSE and the target's prediction error, per edge and per KPI.

    FakeCodec: decode -> [nnz, sum of indices, NaN], normalise -> x / 10, target SNR
    (column 1), W=3, H=2; a prediction reads the first index of each row of its window."""
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, audited_frame(0, 0, {})) == "stored"
    audits = {4: (1.0, 100.0, 3.0), 5: (2.0, 200.0, math.nan)}
    assert ingest.handle(TOPIC, audited_frame(1, 3, audits)) == "stored"
    assert ingest.handle(TOPIC, audited_frame(1, 3, audits)) == "duplicate"  # counts once
    (row,) = store.accuracy()
    # t4: decoded [1, 5, NaN] against [1, 100, 3]; t5: [1, 6, NaN] against [2, 200, NaN]
    se = (0.5 - 10.0) ** 2 + (0.1 - 0.2) ** 2 + (0.6 - 20.0) ** 2
    ss = 0.1**2 + 10.0**2 + 0.2**2 + 20.0**2
    assert row["audits"] == 2 and row["nmse"] == pytest.approx(se / ss)
    # SNR at t4 was predicted at t2 (stored with the first frame): 10203; at t5, at t3: 20304
    errors = [10203.0 - 100.0, 20304.0 - 200.0]
    assert row["target_n"] == 2
    assert row["target_mae"] == pytest.approx(sum(errors) / 2)
    assert row["target_rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 2))
    assert (row["edge"], row["model_ref"], row["L"]) == (EDGE, REF.hex(), L)
    bucket = T - T % 60_000
    assert row["first_bucket_ms"] == row["last_bucket_ms"] == bucket
    assert store.accuracy(since_ms=bucket + 60_000) == []
    assert store.accuracy(edge="another") == []
    # per KPI: the same sums, KPI by KPI; rmse in the KPI's own unit
    per = {r["kpi"]: r for r in store.kpi_accuracy(since_ms=0)}
    names = FakeCodec().manifest.kpis
    assert set(per) == set(names[:2])  # the third KPI is never decoded (NaN): not measured
    first, second = per[names[0]], per[names[1]]
    assert first["n"] == 2 and first["nmse"] == pytest.approx(
        ((0.1 - 0.1) ** 2 + (0.1 - 0.2) ** 2) / (0.1**2 + 0.2**2)
    )
    assert first["mse"] == pytest.approx((0 + 0.1**2) / 2)
    assert first["rmse"] == pytest.approx(math.sqrt((0 + 1.0) / 2))
    assert second["nmse"] == pytest.approx(((0.5 - 10) ** 2 + (0.6 - 20) ** 2) / (10**2 + 20**2))
    assert second["rmse"] == pytest.approx(math.sqrt((95.0**2 + 194.0**2) / 2))
    (bucketed,) = store.kpi_accuracy(since_ms=0, by_bucket=True)[:1]
    assert bucketed["bucket_ms"] == bucket
    assert store.kpi_accuracy(since_ms=bucket + 60_000) == []


def check_code_usage(store: Store) -> None:
    """Code usage counts each model's codes, over all or each edge's latest measurements;
    leaves frames 0 and 1 stored, without audits."""
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, audited_frame(0, 0, {})) == "stored"  # codes (1,), (2,), (3,)
    assert ingest.handle(TOPIC, audited_frame(1, 3, {})) == "stored"  # (4,), (5,), (6,)
    usage = store.code_usage(since_ms=0)
    assert usage == {REF.hex(): {"measurements": 6, "codes": {c: 1 for c in range(1, 7)}}}
    latest = store.code_usage(since_ms=0, per_edge=2)[REF.hex()]
    assert latest == {"measurements": 2, "codes": {5: 1, 6: 1}}
    assert store.code_usage(since_ms=T + 6000) == {}


def beat(edge: str = EDGE, **body: object) -> bytes:
    """A heartbeat of `edge` in GROUP whose body is `body`."""
    return json.dumps({"edge": edge, "group": GROUP, **body}).encode()


def fill_fleet(store: Store) -> None:
    """e1: online, 3 frames of 2 measurements (the last 40 s before NOW), a gap, a
    heartbeat; e2: a heartbeat only."""
    codec = FakeCodec()
    ingest = FrameIngest(ModelRegistry([codec]), store, ServiceStats())
    birth = state_from_manifest(
        codec.manifest, edge=EDGE, group=GROUP, bd_seq=0, agent_version="0.1",
        runtime_version="ort", timestamp_ms=5,
    )  # fmt: skip
    ingest.handle(state_topic(GROUP, EDGE), birth_payload(birth), received_ms=NOW - 300_000)
    for seq, age_s in ((0, 200), (1, 40), (3, 40)):  # seq 2 never came
        assert ingest.handle(TOPIC, data_frame(seq), received_ms=NOW - 1000 * age_s) == "stored"
    heartbeat = beat(spool_depth=4, rejects={"out_of_range": 2, "nan": 1})
    ingest.handle(health_topic(GROUP, EDGE), heartbeat, received_ms=NOW - 12_000)
    ingest.handle(health_topic(GROUP, "e2"), beat("e2", spool_depth=0), received_ms=NOW)


OLD_BEATS = {  # heartbeats kept before they were validated, one edge each
    "x1": {"edge": "x1", "rejects": [1, 2, 3], "spool_depth": 5},
    "x2": {"spool_depth": "abc", "rejects": {"nan": 2}},
    "x3": {"spool_depth": float("inf"), "rejects": {"a": float("nan")}},  # as 1e400 was kept
    "x4": {"a": "x"},
    "x5": {},
}


def write_old_rows(store: Store) -> None:
    """Rows as an older decoder kept them, written straight into the store: the heartbeats
    above, and a 5 MB birth kept verbatim whose L is a string."""
    for edge, body in OLD_BEATS.items():
        store.set_health(GROUP, edge, body, NOW - 5_000)
    codec = FakeCodec()
    birth = state_from_manifest(
        codec.manifest, edge="x6", group=GROUP, bd_seq=0, agent_version="0.1",
        runtime_version="ort", timestamp_ms=5,
    )  # fmt: skip
    doc = {**json.loads(birth_payload(birth)), "L": "3", "pad": "x" * 5_000_000}
    store.set_edge_state(GROUP, "x6", True, 0, codec.manifest.model_sha256, doc, NOW - 1_000)
