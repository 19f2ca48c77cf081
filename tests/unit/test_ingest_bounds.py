"""What senders can make the ingest keep is bounded (`cloud.ingest.limits`): clones are told from
repeats by a digest of the decoded frame and kept apart, parked frames and clones stop at
their bounds (without a receipt, so a confirming edge keeps them), the state of quiet edges
is released, and frame times outside a window around arrival are refused for good."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.ingest import registry as registry_module
from sparsetel.cloud.ingest.deadletter import TokenBucket
from sparsetel.cloud.ingest.digest import frame_digest
from sparsetel.cloud.ingest.handler import ACCEPTED, FrameIngest, ServiceStats
from sparsetel.cloud.ingest.limits import IngestLimits
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import ServeConfig
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.cloud.store.rows import FrameRow
from sparsetel.shared.config import load_config
from sparsetel.shared.errors import ConfigError
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import Frame, Record, decode_frame, encode_frame
from tests.frames import EDGE, GROUP, TOPIC, FakeCodec

NOW = int(time.time() * 1000)
REF = FakeCodec().manifest.model_ref
DAY_MS = 86_400_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _frame(
    seq: int,
    codes: Sequence[Sequence[int]] = ((1,), (2,)),
    t0: int = NOW,
    ref: bytes = REF,
    **kw: object,
) -> Frame:
    records = tuple(Record(t0 + 1000 * i, tuple(c)) for i, c in enumerate(codes))
    return Frame(ref, kw.pop("bd_seq", 0), seq, 3, 16, 1000, records, **kw)  # type: ignore[arg-type]


def _bytes(*args: object, **kw: object) -> bytes:
    return encode_frame(_frame(*args, **kw))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "bounds.db")
    yield s
    s.close()


def _ingest(store: Store, **limits: object) -> FrameIngest:
    bounds = IngestLimits(**limits)  # type: ignore[arg-type]
    return FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=bounds)


def _receipted(ingest: FrameIngest) -> list[int]:
    return sorted(seq for seqs in ingest.receipts.take().values() for seq in seqs)


# -- clones ---------------------------------------------------------------------------------


def test_the_digest_is_of_the_decoded_frame_not_of_its_flag_or_wire_version() -> None:
    frame = _frame(0, [(1, 5), ()])
    same = [
        dataclasses.replace(frame, historical=True),
        decode_frame(encode_frame(frame)),
        decode_frame(encode_frame(dataclasses.replace(frame, version=1))),
    ]
    assert {frame_digest(f) for f in same} == {frame_digest(frame)}
    other = [
        _frame(0, [(1, 6), ()]),
        _frame(0, [(1, 5), ()], t0=NOW + 1),
        _frame(0, [(1, 5), ()], ref=bytes(8)),
        dataclasses.replace(frame, period_ms=999),
        _frame(0, [(1, 5)]),
    ]
    assert len({frame_digest(f) for f in [frame, *other]}) == 1 + len(other)


def test_audit_values_digest_by_value_with_any_nan_alike() -> None:
    def audited(values: tuple[float, ...]) -> str:
        return frame_digest(Frame(REF, 0, 0, 3, 16, 1000, (Record(NOW, (1,), values),)))

    other_nan = float(np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), np.float64)[0])
    assert math.isnan(other_nan)
    assert audited((1.0, math.nan, 3.0)) == audited((1.0, other_nan, 3.0))
    assert audited((1.0, 2.0, 3.0)) != audited((1.0, 2.0, 3.5))


def test_a_resend_flagged_historical_is_a_duplicate_not_a_clone(store: Store) -> None:
    ingest = _ingest(store)
    assert ingest.handle(TOPIC, _bytes(0), NOW) == "stored"
    assert ingest.handle(TOPIC, _bytes(0, historical=True), NOW) == "duplicate"
    assert ingest.stats.get("clones") == 0 and store.held(reason="clone") == []


def test_a_frame_with_a_stored_key_and_other_content_is_a_held_clone(store: Store) -> None:
    ingest = _ingest(store)
    assert ingest.handle(TOPIC, _bytes(0), NOW) == "stored"
    clone = _bytes(0, [(7,), (8,)])
    assert ingest.handle(TOPIC, clone, NOW + 5) == "clone"
    assert "clone" not in ACCEPTED  # so the service dead-letters a copy
    (kept,) = store.held(reason="clone")
    assert (kept["edge"], kept["bd_seq"], kept["seq"], kept["topic"]) == (EDGE, 0, 0, TOPIC)
    assert (kept["payload"], kept["received_ms"]) == (clone, NOW + 5)
    assert [r["codes"] for r in store.fetch_measurements()] == [[1], [2]]  # the first stays
    assert ingest.stats.get("clones") == 1 and ingest.stats.rejects() == {"clone": 1}
    assert _receipted(ingest) == [0, 0]  # kept: the edge may forget it
    assert ingest.handle(TOPIC, clone, NOW + 9) == "clone"  # the same clone again
    assert len(store.held(reason="clone")) == 1


def test_a_frame_stored_before_digests_repeats_as_a_duplicate(store: Store) -> None:
    store.store_frame(FrameRow(EDGE, 0, 0, REF, 2, 40, False, NOW), [])  # digest NULL
    ingest = _ingest(store)
    assert ingest.handle(TOPIC, _bytes(0, [(7,), (8,)]), NOW) == "duplicate"
    assert ingest.stats.get("clones") == 0


def test_clones_beyond_the_held_bound_are_not_kept_and_get_no_receipt(store: Store) -> None:
    ingest = _ingest(store, held_per_edge=2)
    for seq in range(4):
        assert ingest.handle(TOPIC, _bytes(seq), NOW) == "stored"
    ingest.receipts.discard()
    outcomes = [ingest.handle(TOPIC, _bytes(seq, [(9,)]), NOW) for seq in range(4)]
    assert outcomes == ["clone", "clone", "held_full", "held_full"]
    assert _receipted(ingest) == [0, 1]
    assert len(store.held(reason="clone")) == 2 and ingest.stats.get("clones") == 4
    again = _ingest(store, held_per_edge=2)  # a restart counts what the store holds
    assert again.handle(TOPIC, _bytes(3, [(9,)]), NOW) == "held_full"


# -- parked frames --------------------------------------------------------------------------


def test_parked_frames_stop_at_the_bound_per_edge_and_in_all(store: Store) -> None:
    ingest = _ingest(store, parked_per_edge=3, parked_total=5)
    rng = np.random.default_rng(0)
    mine = [ingest.handle(TOPIC, _bytes(s, ref=rng.bytes(8)), NOW) for s in range(5)]
    assert mine == ["parked"] * 3 + ["park_full"] * 2
    assert _receipted(ingest) == [0, 1, 2]  # the rest stays in the edge's spool
    other = data_topic(GROUP, "e2")
    theirs = [ingest.handle(other, _bytes(s, ref=rng.bytes(8)), NOW) for s in range(3)]
    assert theirs == ["parked", "parked", "park_full"]  # five in all
    assert sum(store.count_parked().values()) == 5
    assert ingest.stats.rejects() == {"park_full": 3} and ingest.stats.get("parked") == 5
    assert "park_full" not in ACCEPTED


def test_the_park_bound_counts_what_the_store_held_at_start(store: Store) -> None:
    first = _ingest(store, parked_per_edge=2)
    for seq in range(2):
        assert first.handle(TOPIC, _bytes(seq, ref=bytes(8)), NOW) == "parked"
    restarted = _ingest(store, parked_per_edge=2)
    assert restarted.handle(TOPIC, _bytes(2, ref=bytes(8)), NOW) == "park_full"


def test_a_batch_that_does_not_commit_leaves_the_counts_as_the_store_holds_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_batch = store.batch

    @contextlib.contextmanager
    def failing_commit() -> Iterator[None]:
        with real_batch():
            yield
            raise RuntimeError("disk full at commit")  # rolls the batch back

    monkeypatch.setattr(store, "batch", failing_commit)
    ingest = _ingest(store, parked_per_edge=3)
    ingest.batch_commits = True
    batch = [(TOPIC, _bytes(s, ref=bytes(8)), NOW) for s in range(2)]
    assert ingest.handle_batch(batch) == ["parked", "parked"]  # again, one at a time
    assert sum(store.count_parked().values()) == 2
    assert ingest.handle(TOPIC, _bytes(2, ref=bytes(8)), NOW) == "parked"  # room for one
    assert ingest.handle(TOPIC, _bytes(3, ref=bytes(8)), NOW) == "park_full"


def test_unparked_frames_make_room_under_the_bound(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "RESCAN_S", 0.0)
    new = FakeCodec(sha="cd" * 32)
    models = tmp_path / "models"
    registry = ModelRegistry([FakeCodec()], models_dir=models, load=lambda _: new)
    ingest = FrameIngest(registry, store, ServiceStats(), limits=IngestLimits(parked_per_edge=2))
    ref = new.manifest.model_ref
    outcomes = [ingest.handle(TOPIC, _bytes(s, ref=ref), NOW) for s in range(3)]
    assert outcomes == ["parked", "parked", "park_full"]
    (models / "r2").mkdir(parents=True)
    new.manifest.save(models / "r2" / MANIFEST_FILE)
    assert ingest.handle(TOPIC, _bytes(2, ref=ref), NOW) == "stored"  # after the two parked
    assert store.count_frames() == 3 and store.count_parked() == {}
    assert ingest.handle(TOPIC, _bytes(3, ref=bytes(8)), NOW) == "parked"  # room again


def test_made_up_model_refs_read_the_models_folder_at_most_every_few_seconds(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    for i in range(3):
        (models / f"r{i}").mkdir(parents=True)
        FakeCodec(sha=f"{i:02x}" * 32).manifest.save(models / f"r{i}" / MANIFEST_FILE)
    reads: list[Path] = []
    real_load = registry_module.ModelManifest.load
    monkeypatch.setattr(
        registry_module.ModelManifest, "load", lambda p: reads.append(p) or real_load(p)
    )
    registry = ModelRegistry([FakeCodec()], models_dir=models)
    ingest = FrameIngest(registry, store, ServiceStats())
    rng = np.random.default_rng(1)
    for seq in range(50):
        assert ingest.handle(TOPIC, _bytes(seq, ref=rng.bytes(8)), NOW) == "parked"
    assert len(reads) == 3  # one reading of the folder, not one per made-up ref


# -- time window ----------------------------------------------------------------------------

TIMES = {
    "nine_days_old": NOW - 9 * DAY_MS,
    "two_days_ahead": NOW + 2 * DAY_MS,
    "2.3_million_years_ahead": NOW + int(2.3e6 * 365.25 * DAY_MS),
    "2**64-1": 2**64 - 1,
}


@pytest.mark.parametrize("name", sorted(TIMES))
def test_a_frame_outside_the_time_window_is_held_and_refused_for_good(
    store: Store, name: str
) -> None:
    ingest = _ingest(store)
    payload = encode_frame(Frame(REF, 0, 4, 3, 16, 1000, (Record(TIMES[name], (1,)),)))
    assert ingest.handle(TOPIC, payload, NOW) == "time_window"
    assert "time_window" not in ACCEPTED  # dead-lettered ...
    assert _receipted(ingest) == [4]  # ... and confirmed: no edge sends it forever
    assert store.count_frames() == 0 and store.count_parked() == {}
    (held,) = store.held(EDGE)  # ... but not lost with its receipt
    assert (held["reason"], held["seq"], held["payload"]) == ("time_window", 4, payload)


def test_frames_outside_the_window_beyond_the_held_bound_get_no_receipt(store: Store) -> None:
    ingest = _ingest(store, held_per_edge=1)
    old = [encode_frame(Frame(REF, 0, s, 3, 16, 1000, (Record(1000 + s, (1,)),))) for s in (0, 1)]
    assert [ingest.handle(TOPIC, p, NOW) for p in old] == ["time_window", "held_full"]
    assert _receipted(ingest) == [0]  # the other stays in the edge's spool
    assert len(store.held()) == 1


def test_frames_inside_the_window_are_stored_and_its_bounds_are_configurable(
    store: Store,
) -> None:
    ingest = _ingest(store)
    assert ingest.handle(TOPIC, _bytes(0, t0=NOW - 7 * DAY_MS), NOW) == "stored"
    assert ingest.handle(TOPIC, _bytes(1, t0=NOW + DAY_MS // 2), NOW) == "stored"
    wide = _ingest(store, frame_max_age_s=20 * 365 * 86_400.0)  # a replay of old data
    assert wide.handle(TOPIC, _bytes(2, t0=NOW - 10 * 365 * DAY_MS), NOW) == "stored"


def test_a_store_failure_still_gets_no_receipt(store: Store) -> None:
    ingest = _ingest(store)
    store.close()
    assert ingest.handle(TOPIC, _bytes(0), NOW) == "store_error"
    assert len(ingest.receipts) == 0


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"parked_per_edge": -1}, "parked_per_edge"),
        ({"parked_per_edge": 10, "parked_total": 5}, "parked_total"),
        ({"held_total": 10**10}, "held_total"),
        ({"frame_max_age_s": 0.0}, "frame_max_age_s"),
        ({"frame_max_ahead_s": 1e12}, "frame_max_ahead_s"),
        ({"idle_s": 0.5}, "idle_s"),
    ],
)
def test_ingest_limits_refuse_values_out_of_bounds_with_the_key(
    kw: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        IngestLimits(**kw)  # type: ignore[arg-type]
    assert err.value.key == f"limits.{key}"


def test_serve_takes_its_limits_from_the_limits_table_of_its_config(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[limits]\nparked_per_edge = 5\nframe_max_age_s = 3.0e8\n")
    bad.write_text("[limits]\nparked_per_edge = 5\nparked_totl = 9\n")
    assert ServeConfig().limits == IngestLimits()
    limits = load_config(ServeConfig, good).limits
    assert (limits.parked_per_edge, limits.frame_max_age_s) == (5, 3.0e8)
    with pytest.raises(ConfigError) as err:
        load_config(ServeConfig, bad)
    assert err.value.key == "limits.parked_totl"


# -- memory of quiet edges -------------------------------------------------------------------


def test_the_sweep_releases_the_state_of_quiet_edges_and_history_comes_back(
    store: Store,
) -> None:
    clock = Clock()
    codec = FakeCodec()
    ingest = FrameIngest(
        ModelRegistry([codec]), store, ServiceStats(), TokenBucket(100.0, 100.0, clock),
        limits=IngestLimits(idle_s=60.0), clock=clock,
    )  # fmt: skip
    for i in range(20):
        assert ingest.handle(data_topic(GROUP, f"e{i}"), _bytes(0), NOW) == "stored"
    assert (len(ingest._tracks), len(ingest.flood)) == (20, 20)  # type: ignore[arg-type]
    clock.now += 30.0
    assert ingest.handle(TOPIC, _bytes(1, [(3,), (4,)]), NOW) == "stored"  # e1 goes on
    clock.now += 45.0  # the others quiet for 75 s, e1 for 45 s
    assert ingest.handle(data_topic(GROUP, "e0"), b"junk", NOW) == "truncated"
    assert list(ingest._tracks) == [EDGE]
    assert len(ingest.flood) == 1  # type: ignore[arg-type]
    clock.now += 120.0
    ingest.handle(data_topic(GROUP, "e0"), b"junk", NOW)
    assert ingest._tracks == {}
    codec.predicted.clear()
    assert ingest.handle(TOPIC, _bytes(2, [(5,), (6,)]), NOW) == "stored"
    (window,) = codec.predicted  # the history read back from the store: no restart
    assert window.argmax(-1).tolist() == [[3, 4, 5], [4, 5, 6]]


def test_a_token_bucket_forgets_keys_whose_bucket_is_full_again() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=50.0, clock=clock)  # full again after 5 s
    for i in range(1000):
        assert bucket.allow(f"made-up-{i}")
    assert len(bucket) == 1000
    clock.now += 5.0
    assert bucket.allow("one-more") and len(bucket) == 1
    assert [bucket.allow("one-more") for _ in range(50)].count(False) == 1  # still limits


def test_old_version_frames_are_counted(store: Store) -> None:
    ingest = _ingest(store)
    old = encode_frame(dataclasses.replace(_frame(0), version=1))
    assert ingest.handle(TOPIC, old, NOW) == "stored"
    assert ingest.handle(TOPIC, _bytes(1), NOW) == "stored"
    assert ingest.stats.get("frames_v1") == 1


def test_sequence_gaps_are_counted_per_edge_up_to_a_bound_then_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sparsetel.cloud.ingest.counters as stats_module

    monkeypatch.setattr(stats_module, "MAX_GAP_EDGES", 3)
    stats = stats_module.ServiceStats()
    for i in range(6):
        stats.gap(f"e{i}", 2)
    stats.gap("e0", 1)  # an edge counted already keeps its own entry
    gaps = stats.snapshot()["gaps"]
    assert gaps == {"e0": 2, "e1": 1, "e2": 1, stats_module.OTHER_EDGES: 3}
    assert stats.get("missing_frames") == 13
