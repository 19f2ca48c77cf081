"""Dead letters: the copy of a rejected message, and the token buckets that limit copies and
floods per edge."""

from __future__ import annotations

import base64
import json

import pytest

from sparsetel.cloud.ingest.deadletter import MAX_COPY, TokenBucket, dead_letter
from sparsetel.cloud.ingest.handler import FrameIngest, ServiceStats
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.store.database import open_store
from tests.frames import TOPIC, FakeCodec, data_frame
from tests.helpers import ANY_TIME


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_burst_through_then_its_rate_per_key() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3.0, clock=clock)
    assert [bucket.allow("a") for _ in range(4)] == [True, True, True, False]
    assert bucket.allow("b")  # another key has its own bucket
    clock.now += 0.5  # one token back
    assert [bucket.allow("a") for _ in range(2)] == [True, False]
    clock.now += 100.0  # never more than the burst
    assert sum(bucket.allow("a") for _ in range(10)) == 3
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=3.0)


def test_a_dead_letter_carries_the_reason_and_the_payload_it_can() -> None:
    topic, body = dead_letter("sparsetel/v1/g/DATA/e1", b"\x00\x01junk", "magic", 7)
    assert topic == "sparsetel/v1/g/DEAD/e1"
    letter = json.loads(body)
    assert (letter["reason"], letter["topic"], letter["received_ms"]) == (
        "magic", "sparsetel/v1/g/DATA/e1", 7,
    )  # fmt: skip
    assert base64.b64decode(letter["payload_b64"]) == b"\x00\x01junk"
    big = bytes(MAX_COPY + 10)
    _, body = dead_letter("not/ours", big, "topic", 8)
    letter = json.loads(body)
    assert letter["truncated"] and letter["size"] == MAX_COPY + 10
    assert len(base64.b64decode(letter["payload_b64"])) == MAX_COPY
    assert dead_letter("not/ours", b"", "topic", 8)[0] == "sparsetel/v1/_unknown/DEAD/_unknown"


def test_frames_beyond_an_edges_flood_limit_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    store = open_store(tmp_path / "flood.db")
    ingest = FrameIngest(
        ModelRegistry([FakeCodec()]),
        store,
        ServiceStats(),
        TokenBucket(1.0, 2.0, clock),
        limits=ANY_TIME,
    )
    outcomes = [ingest.handle(TOPIC, data_frame(seq)) for seq in range(3)]
    clock.now += 1.0
    outcomes.append(ingest.handle(TOPIC, data_frame(3)))
    store.close()
    assert outcomes == ["stored", "stored", "flood", "stored"]
    assert ingest.stats.rejects() == {"flood": 1}
