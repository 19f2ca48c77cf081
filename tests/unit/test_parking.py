"""Frames of a model the service does not know yet are parked, not dropped, and decoded once
the model turns up in the registry's models folder (a later frame or a birth names it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetel.cloud.ingest import registry as registry_module
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import state_topic
from tests.frames import EDGE, GROUP, TOPIC, FakeCodec, data_frame
from tests.helpers import ANY_TIME

NEW_SHA = "cd" * 32
NEW_REF = bytes.fromhex(NEW_SHA[:16])


class Loader:
    """Loads a FakeCodec for a run directory's manifest, counting the loads."""

    def __init__(self) -> None:
        self.loads: list[Path] = []

    def __call__(self, run_dir: Path) -> FakeCodec:
        self.loads.append(run_dir)
        return FakeCodec(sha=ModelManifest.load(run_dir / MANIFEST_FILE).model_sha256)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "park.db")
    yield s
    s.close()


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def ingest(store: Store, loader: Loader, tmp_path: Path) -> FrameIngest:
    (tmp_path / "models").mkdir()
    registry = ModelRegistry([FakeCodec()], models_dir=tmp_path / "models", load=loader)
    return FrameIngest(registry, store, ServiceStats(), limits=ANY_TIME)


def _deploy_run(models: Path, name: str = "r2") -> None:
    (models / name).mkdir()
    FakeCodec(sha=NEW_SHA).manifest.save(models / name / MANIFEST_FILE)


def _no_rescan_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "RESCAN_S", 0.0)


def test_parked_frames_are_decoded_once_their_model_appears(
    ingest: FrameIngest, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_rescan_wait(monkeypatch)
    for seq in range(3):
        assert ingest.handle(TOPIC, data_frame(seq, model_ref=NEW_REF)) == "parked"
    assert store.count_parked() == {NEW_REF.hex(): 3} and store.count_frames() == 0
    _deploy_run(tmp_path / "models")
    assert ingest.handle(TOPIC, data_frame(3, model_ref=NEW_REF)) == "stored"
    assert store.count_parked() == {} and store.count_frames() == 4
    rows = store.fetch_measurements(EDGE)
    assert [(r["seq"], r["model_ref"]) for r in rows] == [
        (s, NEW_REF.hex()) for s in range(4) for _ in range(2)
    ]
    assert rows[0]["kpis"][:2] == [1.0, 1.0]  # FakeCodec: [nnz, sum of indices, NaN]
    stats = ingest.stats.snapshot()
    assert (stats["parked"], stats["unparked"], stats["frames_ok"]) == (3, 3, 4)


def test_a_birth_naming_the_new_model_decodes_what_was_parked(
    ingest: FrameIngest, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_rescan_wait(monkeypatch)
    assert ingest.handle(TOPIC, data_frame(0, model_ref=NEW_REF)) == "parked"
    _deploy_run(tmp_path / "models")
    manifest = FakeCodec(sha=NEW_SHA).manifest
    state = state_from_manifest(
        manifest, edge=EDGE, group=GROUP, bd_seq=0, agent_version="t", runtime_version="t",
        timestamp_ms=1,
    )  # fmt: skip
    assert ingest.handle(state_topic(GROUP, EDGE), birth_payload(state)) == "birth"
    assert store.count_parked() == {} and store.count_frames() == 1
    assert ingest.stats.get("births_unknown_model") == 0


def test_the_models_folder_is_searched_at_most_every_few_seconds_per_model(
    ingest: FrameIngest, loader: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(registry_module.time, "monotonic", lambda: clock[0])
    assert ingest.handle(TOPIC, data_frame(0, model_ref=NEW_REF)) == "parked"
    _deploy_run(tmp_path / "models")
    clock[0] += registry_module.RESCAN_S / 2
    assert ingest.handle(TOPIC, data_frame(1, model_ref=NEW_REF)) == "parked"  # not looked again
    assert loader.loads == []
    clock[0] += registry_module.RESCAN_S
    assert ingest.handle(TOPIC, data_frame(2, model_ref=NEW_REF)) == "stored"
    assert loader.loads == [tmp_path / "models" / "r2"]


def test_a_broken_run_in_the_models_folder_is_skipped(
    ingest: FrameIngest,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _no_rescan_wait(monkeypatch)
    (tmp_path / "models" / "a-broken").mkdir()
    (tmp_path / "models" / "a-broken" / MANIFEST_FILE).write_text("{not json")
    _deploy_run(tmp_path / "models", "b-good")
    with caplog.at_level(logging.WARNING):
        assert ingest.handle(TOPIC, data_frame(0, model_ref=NEW_REF)) == "stored"
    assert "a-broken" in caplog.text
