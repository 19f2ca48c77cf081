"""The chained frames of a batch decoded and stored together (`cloud.ingest.chainbatch`): the
same outcomes, rows, tips and counters as one message at a time, whatever the batch holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.temporal import TemporalModel
from sparsetel.cloud.store.database import Store, open_store
from tests.chainfleet import NOW_MS, Message, data, fleet, interleave, table_rows
from tests.frames import temporal_frames
from tests.helpers import ANY_TIME
from tests.quickrun import quick_temporal_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quick_temporal_run(tmp_path_factory)


def make_ingest(run: Path, store: Store, **kw: Any) -> FrameIngest:
    registry = ModelRegistry([TemporalModel.load(run)])
    return FrameIngest(registry, store, ServiceStats(), limits=ANY_TIME, **kw)


def ingest_all(
    run: Path, path: Path, messages: list[Message], how: Callable[[FrameIngest], list[str]]
) -> tuple[list[str], dict[str, Any]]:
    with open_store(path) as store:
        ingest = make_ingest(run, store)
        outcomes = how(ingest)
        stats = ingest.stats.snapshot()
        del stats["uptime_s"]
        return outcomes, stats


def one_at_a_time(messages: list[Message]) -> Callable[[FrameIngest], list[str]]:
    return lambda ingest: [ingest.handle(t, p, ms) for t, p, ms in messages]


def in_batches(messages: list[Message], size: int) -> Callable[[FrameIngest], list[str]]:
    def how(ingest: FrameIngest) -> list[str]:
        out: list[str] = []
        for at in range(0, len(messages), size):
            out += ingest.handle_batch(messages[at : at + size])
        return out

    return how


@pytest.mark.parametrize(("seed", "size"), [(0, 1), (0, 7), (0, 64), (1, 2), (2, 5), (3, 13)])
def test_a_batch_stores_what_one_message_at_a_time_stores(
    run: Path, tmp_path: Path, seed: int, size: int
) -> None:
    messages = fleet(run, seed)
    slow, slow_stats = ingest_all(run, tmp_path / "slow.db", messages, one_at_a_time(messages))
    fast, fast_stats = ingest_all(run, tmp_path / "fast.db", messages, in_batches(messages, size))
    assert fast == slow
    assert {"stored", "pending", "duplicate", "clone", "decode_error", "undecodable",
            "parked", "health"} <= set(slow)  # fmt: skip
    assert fast_stats == slow_stats
    assert table_rows(tmp_path / "fast.db") == table_rows(tmp_path / "slow.db")


def test_most_chained_frames_of_a_fleet_take_the_batch_path(run: Path, tmp_path: Path) -> None:
    streams = [
        [data(f"e{i}", x) for x in temporal_frames(run, 20, per_frame=1, key_interval=7)[0]]
        for i in range(5)
    ]
    messages = interleave(*streams, seed=1)
    with open_store(tmp_path / "s.db") as store:
        ingest = make_ingest(run, store)
        calls: list[str] = []
        slow = ingest.chains.handle
        ingest.chains.handle = lambda *a: calls.append(a[1]) or slow(*a)  # type: ignore[method-assign]
        outcomes = in_batches(messages, 64)(ingest)
        assert outcomes == ["stored"] * 100
        assert calls == []  # heads too: each decodes alone, its successors from its state
        assert store.count_measurements() == 100


def test_a_failing_batch_leaves_every_frame_to_the_slow_path(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames, _ = temporal_frames(run, 6, per_frame=1, key_interval=10)
    messages = [data("a", x) for x in frames]
    with open_store(tmp_path / "s.db") as store:
        ingest = make_ingest(run, store)
        assert ingest.handle_batch(messages[:2]) == ["stored"] * 2

        def broken(*_: object) -> None:
            raise RuntimeError("disk full")

        monkeypatch.setattr(store, "store_frames", broken)
        assert ingest.handle_batch(messages[2:]) == ["stored"] * 4
        assert store.count_frames() == 6 and store.chain_tip("a", 0, 5) is not None
        assert store.chain_tip("a", 0, 1) is None  # each frame's tip moved on


def test_a_frame_outside_the_time_window_goes_the_slow_way_and_is_held(
    run: Path, tmp_path: Path
) -> None:
    frames, _ = temporal_frames(run, 4, per_frame=1, key_interval=10, t0_ms=10_000)
    late = [data("a", x) for x in frames]
    late[2] = (late[2][0], late[2][1], 10_000 + 10**12)  # received far after its times
    with open_store(tmp_path / "s.db") as store:
        ingest = FrameIngest(ModelRegistry([TemporalModel.load(run)]), store, ServiceStats())
        messages = [(t, p, 12_000 if ms == NOW_MS else ms) for t, p, ms in late]
        assert ingest.handle_batch(messages) == ["stored", "stored", "time_window", "stored"]
        assert [h["reason"] for h in store.held()] == ["time_window"]


def test_the_flood_limit_counts_each_frame_once(run: Path, tmp_path: Path) -> None:
    from sparsetel.cloud.ingest.deadletter import TokenBucket

    frames, _ = temporal_frames(run, 6, per_frame=1, key_interval=3)
    messages = [data("a", x) for x in frames]
    with open_store(tmp_path / "s.db") as store:
        ingest = make_ingest(run, store, flood=TokenBucket(1e-9, 4))
        outcomes = ingest.handle_batch(messages)
        assert outcomes == ["stored"] * 4 + ["flood"] * 2
