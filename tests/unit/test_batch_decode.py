"""A worker's batch: the frames of one model go through the decoder together, with the same
outcomes and stored values as one at a time."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats, decode_many
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import Store, open_store
from sparsetel.shared.topics import state_topic
from sparsetel.shared.wire import decode_frame
from tests.frames import EDGE, GROUP, TOPIC, FakeCodec, data_frame
from tests.helpers import ANY_TIME


class CountingCodec(FakeCodec):
    """Counts decoder passes; a record holding code 7 makes the decoder fail."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[int] = []

    def decode(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        self.passes.append(len(codes))
        if any(7 in c for c in codes):
            raise RuntimeError("code 7 does not decode")
        return super().decode(codes)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    a, b = open_store(tmp_path / "a.db"), open_store(tmp_path / "b.db")
    yield a, b
    a.close()
    b.close()


def _messages() -> list[tuple[str, bytes, int]]:
    other = bytes.fromhex("00112233aabbccdd")
    payloads = [
        data_frame(0, [(1,), (2,), (3,)]),
        data_frame(1, [(4,)]),
        data_frame(2, model_ref=other),  # unknown model: parked
        data_frame(3)[:17],  # truncated
        data_frame(4, L=4),  # L differs from the model's
        data_frame(5, [(5, 6), (9,)]),
    ]
    msgs = [(TOPIC, p, 1_000 + i) for i, p in enumerate(payloads)]
    msgs.insert(2, (state_topic(GROUP, EDGE), b"{not json", 1_010))
    return msgs


def test_a_batch_decodes_once_per_model_and_matches_one_at_a_time(
    stores: tuple[Store, Store],
) -> None:
    codec = CountingCodec()
    batched = FrameIngest(ModelRegistry([codec]), stores[0], ServiceStats(), limits=ANY_TIME)
    alone = FrameIngest(ModelRegistry([FakeCodec()]), stores[1], ServiceStats(), limits=ANY_TIME)
    outcomes = batched.handle_batch(_messages())
    assert outcomes == [alone.handle(t, p, ms) for t, p, ms in _messages()]
    assert outcomes.count("stored") == 3 and "parked" in outcomes
    assert codec.passes == [3 + 1 + 2]  # one pass over the three frames that fit the model
    assert stores[0].fetch_measurements() == stores[1].fetch_measurements()


def test_a_frame_that_does_not_decode_fails_alone(stores: tuple[Store, Store]) -> None:
    codec = CountingCodec()
    ingest = FrameIngest(ModelRegistry([codec]), stores[0], ServiceStats(), limits=ANY_TIME)
    msgs = [(TOPIC, data_frame(s, [(s + 5,)]), 0) for s in range(4)]  # seq 2 holds code 7
    assert ingest.handle_batch(msgs) == ["stored", "stored", "decode_error", "stored"]
    assert codec.passes == [4, 1, 1, 1, 1]  # the batch, then each frame alone
    assert ingest.stats.rejects() == {"decode_error": 1}


def test_decode_many_splits_the_pass_back_into_frames() -> None:
    codec = FakeCodec()
    frames = [decode_frame(data_frame(s, c)) for s, c in ((0, [(1,), (2, 3)]), (1, [(5,)]))]
    parts = decode_many(codec, frames)
    assert [p.shape for p in parts] == [(2, 3), (1, 3)]
    np.testing.assert_array_equal(parts[0][:, :2], [[1, 1], [2, 5]])
    np.testing.assert_array_equal(parts[1][:, :2], [[1, 5]])
    assert decode_many(codec, []) == []


@settings(max_examples=60, deadline=None)
@given(
    batch=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.tuples(st.integers(0, 40), st.integers(0, 60), st.integers(0, 255)).map(
                lambda m: _mutated(*m)
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_garbage_in_a_batch_gets_the_outcome_it_gets_alone(batch: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        a, b = open_store(Path(tmp) / "a.db"), open_store(Path(tmp) / "b.db")
        try:
            batched = FrameIngest(ModelRegistry([FakeCodec()]), a, ServiceStats(), limits=ANY_TIME)
            alone = FrameIngest(ModelRegistry([FakeCodec()]), b, ServiceStats(), limits=ANY_TIME)
            msgs = [(TOPIC, p, 0) for p in batch]
            assert batched.handle_batch(msgs) == [alone.handle(*m) for m in msgs]
            assert a.fetch_measurements() == b.fetch_measurements()
        finally:
            a.close()
            b.close()


def _mutated(seq: int, at: int, byte: int) -> bytes:
    """A valid frame of the registered model with one byte changed (or none, past its end)."""
    data = bytearray(data_frame(seq, [(1,), (2, 3), (4,)]))
    if at < len(data):
        data[at] = byte
    return bytes(data)


def test_each_distinct_code_is_decoded_once_per_batch() -> None:
    codec = CountingCodec()
    frames = [
        decode_frame(data_frame(0, [(1,), (2, 3), (1,)])),
        decode_frame(data_frame(1, [(2, 3), (1,), (4,)])),
    ]
    parts = decode_many(codec, frames)
    assert codec.passes == [3]  # (1,), (2, 3), (4,)
    alone = FakeCodec()
    for frame, part in zip(frames, parts, strict=True):
        expected = alone.decode([r.codes for r in frame.records])
        np.testing.assert_array_equal(part, expected)


def test_sqlite_commits_each_frame_and_postgresql_each_batch(stores: tuple[Store, Store]) -> None:
    """SQLite has one writer at a time: a batch transaction would make workers take turns."""
    sqlite = FrameIngest(ModelRegistry([FakeCodec()]), stores[0], ServiceStats())
    assert sqlite.batch_commits is False
    stores[1].dialect = "postgresql"  # only the choice is looked at here
    assert FrameIngest(ModelRegistry([FakeCodec()]), stores[1], ServiceStats()).batch_commits
    stores[1].dialect = "sqlite"
