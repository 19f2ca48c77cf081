"""Live accuracy from audit samples (`cloud.ingest.audit`): reconstruction NMSE in the model's
normalised space and the target's prediction error, summed per minute with their frame."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.wire import Frame, Record, encode_frame
from tests.helpers import ANY_TIME
from tests.unit.test_service import EDGE, REF, TOPIC, FakeCodec, K, L

T = 1_700_000_000_000  # in one minute bucket with the next 40 s


def _frame(seq: int, first: int, audits: dict[int, tuple[float, ...]]) -> bytes:
    records = tuple(Record(T + 1000 * k, (k + 1,), audits.get(k)) for k in range(first, first + 3))
    return encode_frame(Frame(REF, 0, seq, L, K, 1000, records))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "acc.db")
    yield s
    s.close()


def test_audits_give_the_live_nmse_and_the_targets_prediction_error(store: Store) -> None:
    """FakeCodec: decode -> [nnz, sum of indices, NaN], normalise -> x / 10, target SNR
    (column 1), W=3, H=2; a prediction reads the first index of each row of its window."""
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, _frame(0, 0, {})) == "stored"
    audits = {4: (1.0, 100.0, 3.0), 5: (2.0, 200.0, math.nan)}
    assert ingest.handle(TOPIC, _frame(1, 3, audits)) == "stored"
    assert ingest.handle(TOPIC, _frame(1, 3, audits)) == "duplicate"  # counts once
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


def test_code_usage_counts_each_models_codes_over_the_latest_measurements(store: Store) -> None:
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, _frame(0, 0, {})) == "stored"  # codes (1,), (2,), (3,)
    assert ingest.handle(TOPIC, _frame(1, 3, {})) == "stored"  # (4,), (5,), (6,)
    usage = store.code_usage(since_ms=0)
    assert usage == {REF.hex(): {"measurements": 6, "codes": {c: 1 for c in range(1, 7)}}}
    latest = store.code_usage(since_ms=0, per_edge=2)[REF.hex()]
    assert latest == {"measurements": 2, "codes": {5: 1, 6: 1}}
    assert store.code_usage(since_ms=T + 6000) == {}


def test_frames_without_audits_add_nothing(store: Store) -> None:
    ingest = FrameIngest(ModelRegistry([FakeCodec()]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, _frame(0, 0, {})) == "stored"
    assert store.accuracy() == []


def test_a_failing_audit_is_counted_and_the_frame_still_stored(store: Store) -> None:
    codec = FakeCodec()
    codec.normalise = lambda x: (_ for _ in ()).throw(RuntimeError("bad norms"))  # type: ignore[method-assign]
    ingest = FrameIngest(ModelRegistry([codec]), store, ServiceStats(), limits=ANY_TIME)
    assert ingest.handle(TOPIC, _frame(0, 0, {1: (1.0, 2.0, 3.0)})) == "stored"
    assert store.accuracy() == [] and ingest.stats.get("accuracy_errors") == 1
    assert store.count_measurements() == 3
