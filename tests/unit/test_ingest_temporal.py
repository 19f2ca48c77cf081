"""The ingest of version 3 (temporal-codec) frames: decoded in order from the chain state in
the store, pending frames, given-up chains, hostile frames (`cloud.ingest.chains`)."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.servemetrics import ServeCollector
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.cloud.monitor.metrics import FleetCollector
from sparsetel.cloud.monitor.status import fleet_status
from sparsetel.cloud.store import database
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.chainframe import decode_chain_frame, encode_chain_frame
from sparsetel.shared.topics import data_topic, health_topic
from tests.frames import FakeCodec, data_frame, temporal_frames
from tests.helpers import ANY_TIME, metric_samples
from tests.quickrun import quick_temporal_run

GROUP, EDGE = "g1", "t1"
TOPIC = data_topic(GROUP, EDGE)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_temporal_run(tmp_path_factory)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "t.db")


def make_ingest(run: Path, store: Store, **kw: object) -> FrameIngest:
    registry = ModelRegistry([TemporalModel.load(run)])
    return FrameIngest(registry, store, ServiceStats(), limits=ANY_TIME, **kw)  # type: ignore[arg-type]


def beat(dropped: object) -> bytes:
    return json.dumps({"edge": EDGE, "group": GROUP, "dropped": dropped}).encode()


def kpis_of(store: Store) -> np.ndarray:
    rows = store.fetch_measurements(EDGE)
    return np.array([[math.nan if v is None else v for v in r["kpis"]] for r in rows])


def assert_decoded(store: Store, expected: np.ndarray) -> None:
    got = kpis_of(store)
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=1e-7)


def test_frames_in_order_decode_to_what_the_edge_decoded(run: Path, store: Store) -> None:
    frames, expected = temporal_frames(run, 12, per_frame=2, key_interval=6)
    ingest = make_ingest(run, store)
    assert [ingest.handle(TOPIC, f) for f in frames] == ["stored"] * 12
    assert_decoded(store, expected)
    rows = store.fetch_measurements(EDGE)
    assert [r["t_ms"] for r in rows] == sorted(r["t_ms"] for r in rows)
    assert any(r["prediction"] is not None for r in rows)  # the run's predictor ran
    snap = ingest.stats.snapshot()
    assert snap["frames_v3"] == 12 and snap["records_stored"] == 24
    kpi = TemporalModel.load(run).codec.kpis[0]
    series = store.kpi_series(EDGE, kpi)  # `query` finds them by name
    assert len(series) == 24 and series[0][1] == pytest.approx(expected[0, 0])


def test_successor_first_waits_then_the_whole_chain_decodes_in_order(
    run: Path, store: Store
) -> None:
    frames, expected = temporal_frames(run, 6, per_frame=2, key_interval=12)  # one chain
    ingest = make_ingest(run, store)
    assert [ingest.handle(TOPIC, f) for f in reversed(frames[1:])] == ["pending"] * 5
    assert store.count_measurements() == 0
    assert store.pending_per_edge() == {EDGE: 5}
    assert fleet_status(store)["edges"][0]["pending_frames"] == 5
    assert ingest.handle(TOPIC, frames[0]) == "stored"  # ... and the five waiting after it
    assert store.pending_per_edge() == {}
    assert_decoded(store, expected)
    assert ingest.stats.get("pending_decoded") == 5


def test_repeats_of_stored_and_pending_frames_are_duplicates(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 4, per_frame=2, key_interval=8)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert ingest.handle(TOPIC, frames[0]) == "duplicate"
    assert ingest.handle(TOPIC, frames[2]) == "pending"
    assert ingest.handle(TOPIC, frames[2]) == "duplicate"
    historical = decode_chain_frame(frames[2])
    resent = encode_chain_frame(dataclasses.replace(historical, historical=True))
    assert ingest.handle(TOPIC, resent) == "duplicate"  # resent from the spool
    assert ingest.handle(TOPIC, frames[1]) == "stored"
    assert ingest.handle(TOPIC, frames[1]) == "duplicate"
    assert ingest.handle(TOPIC, frames[3]) == "stored"
    assert store.count_frames() == 4 and store.count_measurements() == 8


def test_a_pending_frame_with_other_content_is_a_clone(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 3, per_frame=2, key_interval=6)
    other, _ = temporal_frames(run, 3, per_frame=2, key_interval=6, seed=5)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[2]) == "pending"
    assert ingest.handle(TOPIC, other[2]) == "clone"
    assert [h["reason"] for h in store.held()] == ["clone"]


def test_a_dropped_range_gives_up_pending_frames_and_counts_them(run: Path, store: Store) -> None:
    frames, expected = temporal_frames(run, 9, per_frame=2, key_interval=6)  # heads: 0, 3, 6
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert [ingest.handle(TOPIC, f) for f in frames[2:3]] == ["pending"]  # needs 1, dropped
    assert ingest.handle(health_topic(GROUP, EDGE), beat([[0, 1, 1]])) == "health"
    assert store.pending_per_edge() == {}
    assert store.undecodable() == {EDGE: {"dropped": 2}}
    assert ingest.handle(health_topic(GROUP, EDGE), beat([[0, 1, 1]])) == "health"  # again
    assert store.undecodable() == {EDGE: {"dropped": 2}}  # counted once
    # decoding resumes at the next chain start
    assert [ingest.handle(TOPIC, f) for f in frames[3:]] == ["stored"] * 6
    assert_decoded(store, np.concatenate([expected[:2], expected[6:]]))
    status = fleet_status(store)["edges"][0]
    assert status["undecodable"] == {"dropped": 2} and status["undecodable_measurements"] == 2
    # the dropped frame itself, should it come after all, is taken as given up already
    assert ingest.handle(TOPIC, frames[1]) == "duplicate"


def test_a_dropped_range_marks_the_chain_for_frames_that_come_later(
    run: Path, store: Store
) -> None:
    frames, _ = temporal_frames(run, 3, per_frame=2, key_interval=12)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert ingest.handle(health_topic(GROUP, EDGE), beat([[0, 1, 1]])) == "health"
    assert ingest.handle(TOPIC, frames[2]) == "undecodable"  # needs frame 1, dropped
    assert store.undecodable() == {EDGE: {"dropped": 2}}
    assert ingest.stats.rejects() == {"undecodable": 1}


def test_a_bad_payload_is_counted_by_reason_and_its_chain_given_up(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 4, per_frame=2, key_interval=12)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert ingest.handle(TOPIC, frames[3]) == "pending"
    bad = decode_chain_frame(frames[1])
    broken = encode_chain_frame(dataclasses.replace(bad, payload=bad.payload + b"\xff\xff\xff"))
    assert ingest.handle(TOPIC, broken) == "decode_error"
    (reasons,) = store.undecodable().values()
    (reason,) = reasons
    assert reason.startswith("payload_") and reasons[reason] == 2
    assert ingest.handle(TOPIC, frames[2]) == "undecodable"  # after the bad one
    assert store.pending_per_edge() == {}  # frame 3 went with frame 2
    assert sum(store.undecodable()[EDGE].values()) == 6


def test_hostile_v3_frames_are_refused_with_a_reason(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 2, per_frame=2, key_interval=12)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0][:9]) == "truncated"
    body = bytearray(frames[0])
    body[6] ^= 0x40
    assert ingest.handle(TOPIC, bytes(body)) == "crc"
    assert ingest.handle(TOPIC, frames[0][:-4] + zlib.crc32(b"x").to_bytes(4, "big")) == "crc"
    # a chained frame of a chain nobody started waits (bounded), never decodes
    lonely, _ = temporal_frames(run, 2, per_frame=2, key_interval=12, bd_seq=7)
    assert ingest.handle(TOPIC, lonely[1]) == "pending"
    # a head naming a model nobody has is parked, as other frames of unknown models
    head = decode_chain_frame(frames[0])
    assert head.head is not None
    alien = dataclasses.replace(head, head=head.head._replace(model_ref=b"\x01" * 8))
    assert ingest.handle(TOPIC, encode_chain_frame(alien)) == "parked"
    # a head with another L than its model's
    wrong_l = dataclasses.replace(head, head=head.head._replace(L=head.head.L + 1))
    assert ingest.handle(TOPIC, encode_chain_frame(wrong_l)) == "model_mismatch"
    assert store.count_measurements() == 0
    assert "model_mismatch" in store.undecodable()[EDGE]


def test_pending_frames_are_bounded_per_edge(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 4, per_frame=2, key_interval=12)
    limits = dataclasses.replace(ANY_TIME, pending_per_edge=2)
    ingest = FrameIngest(
        ModelRegistry([TemporalModel.load(run)]), store, ServiceStats(), limits=limits
    )
    assert [ingest.handle(TOPIC, f) for f in frames[1:]] == ["pending", "pending", "pending_full"]
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert ingest.handle(TOPIC, frames[3]) == "stored"  # sent again: now it decodes


def test_a_frame_of_the_wrong_codec_kind_is_a_model_mismatch(run: Path, store: Store) -> None:
    model = TemporalModel.load(run)
    fake = FakeCodec(sha=model.manifest.model_sha256)  # a version 2 frame naming the run
    frames, _ = temporal_frames(run, 1, per_frame=2)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, data_frame(0, model_ref=fake.manifest.model_ref)) == (
        "model_mismatch"
    )
    other = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    alien = decode_chain_frame(frames[0])
    assert alien.head is not None
    named = alien.head._replace(model_ref=FakeCodec().manifest.model_ref)
    payload = encode_chain_frame(dataclasses.replace(alien, head=named))
    assert other.handle(TOPIC, payload) == "model_mismatch"


def test_audits_of_v3_frames_give_live_accuracy(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 6, per_frame=2, key_interval=12, audit_every=3)
    ingest = make_ingest(run, store)
    assert [ingest.handle(TOPIC, f) for f in frames] == ["stored"] * 6
    (row,) = store.accuracy()
    assert row["audits"] == 4 and row["nmse"] is not None and row["nmse"] < 1.0


def test_two_ingests_on_one_store_share_the_chain_state(run: Path, tmp_path: Path) -> None:
    """Workers of a shared subscription: each takes some of an edge's frames."""
    frames, expected = temporal_frames(run, 8, per_frame=2, key_interval=16)
    a, b = (make_ingest(run, open_store(tmp_path / "s.db"), track_gaps=False) for _ in "ab")
    order = [(b, 3), (a, 1), (b, 2), (a, 0), (a, 5), (b, 4), (b, 7), (a, 6)]
    for ingest, seq in order:
        assert ingest.handle(TOPIC, frames[seq]) in ("stored", "pending")
    with open_store(tmp_path / "s.db") as store:
        assert_decoded(store, expected)
        assert store.pending_per_edge() == {}


def test_migration_adds_the_chain_tables_to_an_existing_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Path
) -> None:
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:
        patch.setattr(database, "MIGRATIONS", database.MIGRATIONS[:7])
        with open_store(path) as old:
            assert old.schema_version() == 7
            ingest = FrameIngest(ModelRegistry([FakeCodec()]), old, ServiceStats(),
                                 limits=ANY_TIME)  # fmt: skip
            assert ingest.handle(TOPIC, data_frame(0)) == "stored"
    with open_store(path) as store:
        assert store.schema_version() == len(database.MIGRATIONS)
        assert store.count_frames() == 1  # kept
        frames, _ = temporal_frames(run, 2, per_frame=2, bd_seq=1)
        ingest = make_ingest(run, store)
        assert [ingest.handle(TOPIC, f) for f in frames] == ["stored", "stored"]


def test_metrics_show_pending_frames_and_undecodable_measurements_by_reason(
    run: Path, store: Store
) -> None:
    frames, _ = temporal_frames(run, 4, per_frame=2, key_interval=12)
    ingest = make_ingest(run, store)
    assert ingest.handle(TOPIC, frames[0]) == "stored"
    assert ingest.handle(TOPIC, frames[3]) == "pending"
    assert ingest.handle(TOPIC, frames[2]) == "pending"
    assert ingest.handle(health_topic(GROUP, EDGE), beat([[0, 2, 2]])) == "health"  # 3 goes
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(store))
    samples = metric_samples(generate_latest(fleet).decode())
    labels = (("edge", EDGE), ("group", GROUP))
    assert samples[("sparsetel_edge_pending_frames", labels)] == 1.0
    by_reason = tuple(sorted((*labels, ("reason", "dropped"))))
    assert samples[("sparsetel_edge_undecodable_measurements_total", by_reason)] == 2.0
    serve = CollectorRegistry(auto_describe=False)
    serve.register(ServeCollector(ingest.stats.snapshot))
    samples = metric_samples(generate_latest(serve).decode())
    reason = (("reason", "dropped"),)
    assert samples[("sparsetel_serve_undecodable_measurements_total", reason)] == 2.0
    assert samples[("sparsetel_serve_frames_pending_total", ())] == 2.0


def test_a_frame_outside_the_time_window_is_held_and_its_chain_goes_on(
    run: Path, store: Store
) -> None:
    frames, expected = temporal_frames(run, 3, per_frame=2, key_interval=12, t0_ms=10_000)
    ingest = FrameIngest(ModelRegistry([TemporalModel.load(run)]), store, ServiceStats())
    now = 10_000 + 2_000  # the default window: 8 days back, 1 day ahead
    assert ingest.handle(TOPIC, frames[0], received_ms=now + 10**12) == "time_window"
    assert [h["reason"] for h in store.held()] == ["time_window"]
    # the frames after it still decode from its state, once their times are inside
    assert ingest.handle(TOPIC, frames[1], received_ms=now) == "stored"
    assert ingest.handle(TOPIC, frames[2], received_ms=now) == "stored"
    assert_decoded(store, expected[2:])


def test_a_chain_whose_model_is_gone_is_given_up_as_model_unknown(run: Path, store: Store) -> None:
    frames, _ = temporal_frames(run, 2, per_frame=2, key_interval=12)
    assert make_ingest(run, store).handle(TOPIC, frames[0]) == "stored"
    restarted = FrameIngest(ModelRegistry(), store, ServiceStats(), limits=ANY_TIME)
    assert restarted.handle(TOPIC, frames[1]) == "undecodable"
    assert store.undecodable() == {EDGE: {"model_unknown": 2}}
    assert restarted.stats.snapshot()["undecodable"] == {"model_unknown": 2}
