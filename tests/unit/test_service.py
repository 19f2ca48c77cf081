"""The decoder service without a broker: the worker fed payloads directly, and in-process."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.demo.broker import start_embedded_broker
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.serve import run_service
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig, serve_config_from_flags
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.birth import birth_payload, death_payload, state_from_manifest
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import ConfigError, ModelMismatchError
from sparsetel.shared.topics import data_topic, receipt_topic, state_topic
from sparsetel.shared.wire import Frame, Record, code_bits, encode_frame
from tests.frames import EDGE, GROUP, REF, TOPIC, FakeCodec, H, K, L, data_frame
from tests.helpers import ANY_TIME
from tests.processes import python, started, stop, wait_ready


def _raw_frame(records: Sequence[Sequence[int]], Lh: int = L, Kh: int = K, **hdr: int) -> bytes:
    """A frame built by hand from docs/wire-format.md, to say things encode_frame refuses."""
    f = {"version": 1, "flags": 0, "n": len(records)} | hdr
    header = struct.pack(
        ">2sBB8sIIQIHBH", b"ST", f["version"], f["flags"], REF, 0, 0, 1000, 1000, f["n"], Lh, Kh
    )
    nb, ib = code_bits(L, K)
    bits = "".join(
        format(len(c), f"0{nb}b") + "".join(format(i, f"0{ib}b") for i in c) for c in records
    )
    bits += "0" * (-len(bits) % 8)
    return header + (int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b"")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "svc.db")
    yield s
    s.close()


@pytest.fixture
def codec() -> FakeCodec:
    return FakeCodec()


@pytest.fixture
def ingest(store: Store, codec: FakeCodec) -> FrameIngest:
    return FrameIngest(ModelRegistry([codec]), store, ServiceStats(), limits=ANY_TIME)


def test_raw_frame_helper_matches_the_encoder() -> None:
    records = (Record(1000, (1,)), Record(2000, (2,)))  # built by hand as version 1
    frame = Frame(REF, 0, 0, L, K, 1000, records, version=1)
    assert _raw_frame([(1,), (2,)]) == encode_frame(frame)


def test_valid_frame_is_decoded_and_stored(ingest: FrameIngest, store: Store) -> None:
    assert (
        ingest.handle(TOPIC, data_frame(0, [(1, 5), (), (15, 15, 15)]), received_ms=7) == "stored"
    )
    rows = store.fetch_measurements(EDGE)
    assert [r["codes"] for r in rows] == [[1, 5], [], [15, 15, 15]]
    assert [r["kpis"] for r in rows] == [[2.0, 6.0, None], [0.0, 0.0, None], [3.0, 45.0, None]]
    assert [r["t_ms"] for r in rows] == [1_700_000_000_000 + 1000 * i for i in range(3)]
    assert rows[0]["model_ref"] == REF.hex() and rows[0]["nnz"] == 2
    snap = ingest.stats.snapshot()
    assert (snap["frames_ok"], snap["records_stored"], snap["rejects"]) == (1, 3, {})


MALFORMED = {
    "empty": (b"", "truncated"),
    "cut_header": (_raw_frame([(1,)])[:20], "truncated"),
    "cut_codes": (_raw_frame([(1, 2, 3)] * 4)[:-1], "truncated"),
    "magic": (b"XX" + _raw_frame([(1,)])[2:], "magic"),
    "version": (_raw_frame([(1,)], version=9), "version"),
    "flags": (_raw_frame([(1,)], flags=0x80), "flags"),
    "no_records": (_raw_frame([], n=0), "n_records"),
    "trailing": (_raw_frame([(1,)]) + b"\x00", "trailing"),
    "L_zero": (_raw_frame([()], Lh=0), "L_range"),
    "K_one": (_raw_frame([()], Kh=1), "K_range"),
    "nnz_gt_L": (_raw_frame([(1, 2, 3)], Lh=2), "nnz_gt_L"),
    "index_ge_K": (_raw_frame([(12,)], Kh=10), "index_ge_K"),
    "unsorted": (_raw_frame([(5, 2)]), "unsorted"),
    "padding": (_raw_frame([(1,)])[:-1] + bytes([_raw_frame([(1,)])[-1] | 1]), "padding"),
    "too_large": (b"ST" + bytes(300_000), "too_large"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_frame_is_rejected_with_its_reason(
    ingest: FrameIngest, store: Store, name: str
) -> None:
    payload, reason = MALFORMED[name]
    assert ingest.handle(TOPIC, payload) == reason
    assert ingest.stats.rejects() == {reason: 1}
    assert store.count_frames() == 0


def test_frame_of_an_unknown_model_is_parked_not_stored(ingest: FrameIngest, store: Store) -> None:
    other = bytes.fromhex("00112233aabbccdd")
    assert ingest.handle(TOPIC, data_frame(0, model_ref=other)) == "parked"
    assert ingest.stats.rejects() == {} and store.count_frames() == 0
    assert store.count_parked() == {other.hex(): 1} and ingest.stats.get("parked") == 1


@pytest.mark.parametrize("kw", [{"L": 4}, {"K": 32}])
def test_frame_whose_L_or_K_differ_from_its_model_is_rejected(
    ingest: FrameIngest, kw: dict[str, int]
) -> None:
    assert ingest.handle(TOPIC, data_frame(0, **kw)) == "model_mismatch"


def test_frame_whose_audit_has_another_D_is_rejected(ingest: FrameIngest) -> None:
    frame = Frame(REF, 0, 0, L, K, 1000, (Record(5, (1,), audit=(1.0, 2.0)),))
    assert ingest.handle(TOPIC, encode_frame(frame)) == "model_mismatch"


def test_audit_values_are_stored_beside_the_decoded_kpis(ingest: FrameIngest, store: Store) -> None:
    frame = Frame(REF, 0, 0, L, K, 1000, (Record(5, (1,), audit=(-80.0, math.nan, 7.0)),))
    assert ingest.handle(TOPIC, encode_frame(frame)) == "stored"
    assert store.fetch_measurements()[0]["audit"] == [-80.0, None, 7.0]


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/g/DATA/e",
        "sparsetel/v1/g/DATA",
        "sparsetel/v1/g/NCMD/e",
        "sparsetel/v1/g/DATA/a b",
    ],
)
def test_messages_on_foreign_topics_are_rejected(ingest: FrameIngest, topic: str) -> None:
    assert ingest.handle(topic, data_frame(0)) == "topic"


def test_a_repeated_frame_is_counted_as_duplicate_and_stored_once(
    ingest: FrameIngest, store: Store
) -> None:
    assert ingest.handle(TOPIC, data_frame(0)) == "stored"
    assert ingest.handle(TOPIC, data_frame(0)) == "duplicate"
    assert store.count_measurements() == 2
    snap = ingest.stats.snapshot()
    assert (snap["duplicates"], snap["frames_ok"], snap["records_stored"]) == (1, 1, 2)


class Sent:
    """A stand-in for the paho client: what was published."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.messages.append((topic, payload, qos))


def test_frames_handled_for_good_get_a_receipt_and_passing_failures_do_not(
    ingest: FrameIngest, store: Store
) -> None:
    other = bytes.fromhex("00112233aabbccdd")
    outcomes = [
        ingest.handle(TOPIC, data_frame(0, bd_seq=2)),  # stored
        ingest.handle(TOPIC, data_frame(0, bd_seq=2)),  # duplicate
        ingest.handle(TOPIC, data_frame(1, bd_seq=2)),  # stored
        ingest.handle(TOPIC, data_frame(3, bd_seq=2, model_ref=other)),  # parked
        ingest.handle(TOPIC, data_frame(5, bd_seq=2, L=4)),  # model_mismatch
        ingest.handle(TOPIC, data_frame(0, bd_seq=9)),  # stored, another session
        ingest.handle(TOPIC, data_frame(0)[:20]),  # truncated: no header to name it by
    ]
    assert outcomes[:6] == ["stored", "duplicate", "stored", "parked", "model_mismatch", "stored"]
    sent = Sent()
    assert ingest.receipts.publish(sent) == 2
    got = {(t, p) for t, p, _ in sent.messages}
    assert got == {
        (receipt_topic(GROUP, EDGE), b'{"v":1,"bdSeq":2,"seqs":[[0,1],[3,3],[5,5]]}'),
        (receipt_topic(GROUP, EDGE), b'{"v":1,"bdSeq":9,"seqs":[[0,0]]}'),
    }
    assert {q for *_, q in sent.messages} == {0}
    assert ingest.receipts.publish(sent) == 0  # taken: not sent twice
    store.close()
    assert ingest.handle(TOPIC, data_frame(7, bd_seq=2)) == "store_error"
    assert len(ingest.receipts) == 0  # comes again from the edge


def test_a_batch_that_does_not_commit_leaves_no_receipt_behind(
    ingest: FrameIngest, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_batch, real_store_frame = store.batch, store.store_frame

    @contextlib.contextmanager
    def failing_commit() -> Iterator[None]:
        with real_batch():
            yield
            monkeypatch.setattr(store, "store_frame", broken)  # the retries fail as well
            raise RuntimeError("disk full at commit")  # rolls the batch back

    def broken(*args: object) -> bool:
        raise RuntimeError("disk still full")

    monkeypatch.setattr(store, "batch", failing_commit)
    ingest.batch_commits = True
    outcomes = ingest.handle_batch([(TOPIC, data_frame(s), 0) for s in range(3)])
    assert outcomes == ["store_error"] * 3
    assert len(ingest.receipts) == 0 and store.count_frames() == 0
    monkeypatch.setattr(store, "store_frame", real_store_frame)
    monkeypatch.setattr(store, "batch", real_batch)
    assert ingest.handle_batch([(TOPIC, data_frame(0), 0)]) == ["stored"]
    assert len(ingest.receipts) == 1


def test_sequence_gaps_and_late_frames_are_counted_per_edge(ingest: FrameIngest) -> None:
    for seq in (0, 1, 4, 5, 9):
        ingest.handle(TOPIC, data_frame(seq))
    ingest.handle(TOPIC, data_frame(2))  # late: fills part of the first hole
    ingest.handle(data_topic(GROUP, "e2"), data_frame(7))  # another edge: its first frame
    ingest.handle(TOPIC, data_frame(0, bd_seq=1))  # a new session starts at 0: no gap
    snap = ingest.stats.snapshot()
    assert snap["gaps"] == {EDGE: 2}
    assert snap["missing_frames"] == 2 + 3
    assert snap["late_frames"] == 1


def test_predictions_start_once_a_window_is_full_and_continue_across_frames(
    ingest: FrameIngest, store: Store
) -> None:
    ingest.handle(TOPIC, data_frame(0, [(1,), (2,)]))
    ingest.handle(TOPIC, data_frame(1, [(3,), (4,), (5,)]))
    rows = store.fetch_measurements(EDGE)
    assert [r["prediction"] for r in rows] == [None, None, 10203.0, 20304.0, 30405.0]
    third = rows[2]
    assert third["predicted_t_ms"] == third["t_ms"] + H * 1000
    assert ingest.stats.snapshot()["predictions"] == 3


def test_history_resets_on_a_new_session_and_on_a_gap(ingest: FrameIngest, store: Store) -> None:
    ingest.handle(TOPIC, data_frame(0, [(1,), (2,)]))
    ingest.handle(TOPIC, data_frame(0, [(3,), (4,), (5,)], bd_seq=1))  # new bd_seq
    ingest.handle(TOPIC, data_frame(3, [(6,), (7,), (8,)], bd_seq=1))  # gap: seq 1, 2 missing
    preds = [r["prediction"] for r in store.fetch_measurements(EDGE)]
    assert preds == [None, None, None, None, 30405.0, None, None, 60708.0]


def test_shared_workers_continue_each_others_windows_from_the_store(
    store: Store, tmp_path: Path
) -> None:
    """Two workers on one store, taking alternate frames of an edge (as a shared subscription
    hands them out), predict what one worker taking them all predicts."""
    frames = [data_frame(s, [(s + 1,), (s + 2,)]) for s in range(5)]
    frames.append(data_frame(6, [(9,), (8,)]))  # seq 5 never came: a gap, the window restarts
    one = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    for payload in frames:
        one.handle(TOPIC, payload)
    shared_store = open_store(tmp_path / "shared.db")
    workers = [
        FrameIngest(
            ModelRegistry([FakeCodec()]),
            shared_store,
            ServiceStats(),
            track_gaps=False,
            limits=ANY_TIME,
        )
        for _ in range(2)
    ]
    for i, payload in enumerate(frames):
        workers[i % 2].handle(TOPIC, payload)
    expected = [r["prediction"] for r in store.fetch_measurements(EDGE)]
    got = [r["prediction"] for r in shared_store.fetch_measurements(EDGE)]
    shared_store.close()
    assert got == expected
    first_indices = [10202.0, 20203.0, 20303.0, 30304.0, 30404.0, 40405.0, 40505.0, 50506.0]
    assert expected[:2] == [None, None] and expected[2:10] == first_indices
    assert expected[10:] == [None, None]


def test_a_duplicate_does_not_disturb_the_prediction_history(
    ingest: FrameIngest, store: Store
) -> None:
    ingest.handle(TOPIC, data_frame(0, [(1,), (2,)]))
    ingest.handle(TOPIC, data_frame(0, [(1,), (2,)]))
    ingest.handle(TOPIC, data_frame(1, [(3,)]))
    assert store.fetch_measurements(EDGE)[-1]["prediction"] == 10203.0


def test_births_and_deaths_update_the_edges_table(
    ingest: FrameIngest, store: Store, codec: FakeCodec
) -> None:
    birth = state_from_manifest(
        codec.manifest, edge=EDGE, group=GROUP, bd_seq=3, agent_version="0.1",
        runtime_version="ort", timestamp_ms=5,
    )  # fmt: skip
    topic = state_topic(GROUP, EDGE)
    assert ingest.handle(topic, birth_payload(birth), received_ms=10) == "birth"
    assert store.edges()[0]["online"] is True
    assert store.edges()[0]["model_sha256"] == codec.manifest.model_sha256
    assert ingest.handle(topic, death_payload(EDGE, GROUP, 2, 6)) == "stale_death"
    assert ingest.handle(topic, death_payload(EDGE, GROUP, 3, 7), received_ms=20) == "death"
    (edge,) = store.edges()
    assert (edge["online"], edge["bd_seq"], edge["updated_ms"]) == (False, 3, 20)
    assert edge["birth"]["model_ref"] == REF.hex()
    assert ingest.handle(topic, b"") == "ignored"  # a retained birth being cleared
    snap = ingest.stats.snapshot()
    assert (snap["births"], snap["deaths"], snap["stale_deaths"]) == (1, 1, 1)


def test_bad_or_misaddressed_state_payloads_are_rejected(ingest: FrameIngest) -> None:
    assert ingest.handle(state_topic(GROUP, EDGE), b"{not json") == "state"
    other = death_payload("someone-else", GROUP, 0, 1)
    assert ingest.handle(state_topic(GROUP, EDGE), other) == "state_mismatch"
    assert ingest.stats.rejects() == {"state": 1, "state_mismatch": 1}


def test_birth_of_a_model_the_service_lacks_is_counted(ingest: FrameIngest) -> None:
    unknown = FakeCodec(sha="cd" * 32).manifest
    birth = state_from_manifest(
        unknown, edge=EDGE, group=GROUP, bd_seq=0, agent_version="a", runtime_version="b",
        timestamp_ms=0,
    )  # fmt: skip
    assert ingest.handle(state_topic(GROUP, EDGE), birth_payload(birth)) == "birth"
    assert ingest.stats.get("births_unknown_model") == 1


def test_a_failing_decoder_is_a_reject_not_a_crash(store: Store) -> None:
    codec = FakeCodec()
    codec.decode = lambda codes: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    ingest = FrameIngest(ModelRegistry([codec]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, data_frame(0)) == "decode_error"
    assert store.count_frames() == 0


def test_a_failing_predictor_still_stores_the_kpis(store: Store) -> None:
    codec = FakeCodec()
    codec.predict = lambda windows: (_ for _ in ()).throw(RuntimeError("nan"))  # type: ignore[method-assign]
    ingest = FrameIngest(ModelRegistry([codec]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, data_frame(0, [(1,), (2,), (3,)])) == "stored"
    assert [r["prediction"] for r in store.fetch_measurements()] == [None, None, None]
    assert ingest.stats.get("prediction_errors") == 1


def test_a_store_failure_is_counted_and_the_worker_goes_on(
    ingest: FrameIngest, store: Store
) -> None:
    store.close()
    assert ingest.handle(TOPIC, data_frame(0)) == "store_error"
    assert ingest.stats.rejects() == {"store_error": 1}


@pytest.fixture(scope="module")
def fuzz_ingest(tmp_path_factory: pytest.TempPathFactory) -> FrameIngest:
    store = open_store(tmp_path_factory.mktemp("fuzz") / "f.db")
    return FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=200), state=st.booleans())
def test_garbage_never_crashes_the_worker(
    fuzz_ingest: FrameIngest, payload: bytes, state: bool
) -> None:
    topic = state_topic(GROUP, EDGE) if state else TOPIC
    outcome = fuzz_ingest.handle(topic, payload)
    assert outcome != "internal"
    assert outcome in fuzz_ingest.stats.rejects() or outcome == "ignored"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_corrupted_frames_are_stored_or_rejected_never_crash(
    fuzz_ingest: FrameIngest, data: st.DataObject
) -> None:
    payload = bytearray(data_frame(data.draw(st.integers(0, 50)), [(1, 2), (3,), ()]))
    pos = data.draw(st.integers(0, len(payload) - 1))
    payload[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(1, len(payload)))
    outcome = fuzz_ingest.handle(TOPIC, bytes(payload[:cut]))
    assert outcome != "internal"


def test_the_worker_still_stores_after_a_stream_of_garbage(ingest: FrameIngest) -> None:
    rng = np.random.default_rng(0)
    for i in range(500):
        ingest.handle(
            TOPIC if i % 2 else state_topic(GROUP, EDGE), rng.bytes(int(rng.integers(1, 90)))
        )
    assert sum(ingest.stats.rejects().values()) == 500
    assert ingest.handle(TOPIC, data_frame(0)) == "stored"


# -- DecoderService in-process, no broker -------------------------------------------------


def _cfg(tmp_path: Path, **kw: object) -> ServeConfig:
    kw = {"limits": ANY_TIME, **kw}  # the frames here carry times of 2023
    return ServeConfig(db=str(tmp_path / "svc.db"), **kw)  # type: ignore[arg-type]


def test_service_stores_submitted_frames_and_stops_after_n_records(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path, stop_after_records=4), ModelRegistry([FakeCodec()]))
    service.start(connect=False)
    try:
        assert service.submit(TOPIC, data_frame(0))
        assert service.submit(TOPIC, b"garbage")
        assert service.submit(TOPIC, data_frame(0))
        assert service.submit(TOPIC, data_frame(1))
        assert service.wait_for_records(4, timeout=10)
        assert service.wait(timeout=10)
    finally:
        service.stop()
    stats = service.stats()
    json.dumps(stats)
    assert stats["messages"] == 4 and stats["records_stored"] == 4
    assert stats["duplicates"] == 1 and stats["rejects"] == {"truncated": 1}
    assert stats["stopped_because"] == "stored 4 records"
    with open_store(tmp_path / "svc.db") as s:
        assert s.count_measurements() == 4


def test_service_stops_after_the_idle_timeout(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path, idle_timeout_s=0.3), ModelRegistry([FakeCodec()]))
    service.start(connect=False)
    try:
        assert service.wait(timeout=10)
    finally:
        service.stop()
    assert service.stats()["stopped_because"].startswith("no message")


def test_wait_for_records_times_out_when_nothing_arrives(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path), ModelRegistry())
    service.start(connect=False)
    try:
        assert service.wait_for_records(1, timeout=0.2) is False
    finally:
        service.stop()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path, queue_size=1), ModelRegistry())
    assert service.submit(TOPIC, data_frame(0))  # not started: nothing takes it off the queue
    assert service.submit(TOPIC, data_frame(1)) is False
    assert service.stats()["queue_full"] == 1


def test_service_drains_its_queue_on_stop(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path), ModelRegistry([FakeCodec()]))
    for seq in range(20):
        service.submit(TOPIC, data_frame(seq))
    service.start(connect=False)
    service.stop()
    assert service.stats()["records_stored"] == 40


def test_starting_twice_is_a_wrong_state(tmp_path: Path) -> None:
    service = DecoderService(_cfg(tmp_path), ModelRegistry())
    service.start(connect=False)
    try:
        with pytest.raises(RuntimeError):
            service.start(connect=False)
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"group": "a/b"}, "group"),
        ({"queue_size": 0}, "queue_size"),
        ({"stop_after_records": 0}, "stop_after_records"),
        ({"idle_timeout_s": 0.0}, "idle_timeout_s"),
    ],
)
def test_serve_config_rejects_bad_values_with_the_key(kw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig(**kw)  # type: ignore[arg-type]
    assert err.value.key == key


def test_serve_flags_override_the_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text('db = "file.db"\nqueue_size = 50\n[broker]\nclient_id = "dec-1"\n')
    args = argparse.Namespace(
        config=toml, model=[Path("runs/a"), Path("runs/b")], group="g7", db=None,
        stop_after=10, idle_timeout=2.5, broker="mqtt://127.0.0.1:1884",
    )  # fmt: skip
    cfg = serve_config_from_flags(args)
    assert cfg.models == (Path("runs/a"), Path("runs/b")) and cfg.group == "g7"
    assert (cfg.db, cfg.queue_size, cfg.stop_after_records, cfg.idle_timeout_s) == (
        "file.db", 50, 10, 2.5,
    )  # fmt: skip
    assert cfg.broker.url == "mqtt://127.0.0.1:1884" and cfg.broker.client_id == "dec-1"


def test_serve_flags_report_a_bad_value_with_its_key() -> None:
    args = argparse.Namespace(config=None, model=None, group="a/b", db=None, stop_after=None,
                              idle_timeout=None, broker=None)  # fmt: skip
    with pytest.raises(ConfigError) as err:
        serve_config_from_flags(args)
    assert err.value.key == "group"


def test_registry_refuses_a_model_ref_collision() -> None:
    registry = ModelRegistry([FakeCodec(sha="ab" * 32)])
    with pytest.raises(ModelMismatchError):
        registry.add(FakeCodec(sha="ab" * 8 + "cd" * 24))
    assert registry.get(REF) is not None and REF in registry and len(registry) == 1
    assert registry.get(b"\x00" * 8) is None


def test_run_service_returns_1_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(tmp_path, broker=BrokerConfig(url=f"mqtt://127.0.0.1:{port}"))
    assert run_service(cfg) == 1
    assert not (tmp_path / "svc.db").exists()  # the store opens only once subscribed


def test_service_over_the_embedded_broker_stores_published_frames(tmp_path: Path) -> None:
    with start_embedded_broker() as broker:
        cfg = _cfg(tmp_path, broker=BrokerConfig(url=broker.url), group=GROUP)
        service = DecoderService(cfg, ModelRegistry([FakeCodec()]))
        service.start(timeout=15)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unit-pub")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            for payload in (data_frame(0), b"junk", data_frame(0), data_frame(1)):
                pub.publish(TOPIC, payload, qos=1).wait_for_publish(timeout=10)
            assert service.wait_for_records(4, timeout=15)
        finally:
            pub.disconnect()
            pub.loop_stop()
            service.stop()
    stats = service.stats()
    assert stats["records_stored"] == 4 and stats["connects"] == 1
    assert stats["messages"] == 4 and stats["duplicates"] == 1
    assert stats["rejects"] == {"truncated": 1}


def test_run_service_stops_cleanly_on_sigterm_and_prints_json_stats(tmp_path: Path) -> None:
    db = tmp_path / "sig.db"
    with start_embedded_broker() as broker:
        code = (
            "from sparsetel.cloud.ingest.serve import run_service\n"
            "from sparsetel.cloud.ingest.service import ServeConfig\n"
            "from sparsetel.shared.config import BrokerConfig\n"
            f"cfg = ServeConfig(broker=BrokerConfig(url={broker.url!r}), db={str(db)!r})\n"
            "raise SystemExit(run_service(cfg))\n"
        )
        with started(python(code), stderr=None) as proc:
            # the store opens once the service is subscribed
            wait_ready(proc, db.exists, 60, "run_service", interval=0.05)
            out, _ = stop(proc, timeout=30)
    assert proc.returncode == 0
    stats = json.loads(out)
    assert stats["stopped_because"] == "requested" and stats["connects"] == 1
