"""Live accuracy from audit samples (`cloud.ingest.audit`): reconstruction NMSE in the model's
normalised space and the target's prediction error, summed per minute with their frame."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import Store, open_store
from tests.frames import TOPIC, FakeCodec, audited_frame
from tests.helpers import ANY_TIME
from tests.stores import check_code_usage, check_live_accuracy


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "acc.db")
    yield s
    s.close()


def test_audits_give_the_live_nmse_and_the_targets_prediction_error(store: Store) -> None:
    check_live_accuracy(store)


def test_code_usage_counts_each_models_codes_over_the_latest_measurements(store: Store) -> None:
    check_code_usage(store)


def test_frames_without_audits_add_nothing(store: Store) -> None:
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, audited_frame(0, 0, {})) == "stored"
    assert store.accuracy() == []


def test_a_failing_audit_is_counted_and_the_frame_still_stored(store: Store) -> None:
    codec = FakeCodec()
    codec.normalise = lambda x: (_ for _ in ()).throw(RuntimeError("bad norms"))  # type: ignore[method-assign]
    ingest = FrameIngest(ModelRegistry([codec]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, audited_frame(0, 0, {1: (1.0, 2.0, 3.0)})) == "stored"
    assert store.accuracy() == [] and ingest.stats.get("accuracy_errors") == 1
    assert store.count_measurements() == 3
