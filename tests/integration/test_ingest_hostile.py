"""Hostile or unlucky frames through `serve` on the real Mosquitto, into SQLite and into
PostgreSQL: a clone (a stored key with other content) is counted, kept and dead-lettered,
never taken for a repeat; frames naming made-up models stop being parked at the bound and
the rest get no receipt (a confirming edge keeps them); frame times millions of years ahead,
or 2**64-1, are refused with a receipt and never stored."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.ingest.limits import IngestLimits
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.config import BrokerConfig, parse_broker_url
from sparsetel.shared.receipt import decode_receipt
from sparsetel.shared.topics import PREFIX, data_topic
from sparsetel.shared.wire import Frame, Record, encode_frame
from tests.frames import FakeCodec

pytestmark = pytest.mark.integration

REF = FakeCodec().manifest.model_ref
LIMITS = IngestLimits(parked_per_edge=50, parked_total=1000)


def _frame(seq: int, codes: tuple[int, ...] = (1, 2), t0: int = 0, **kw: object) -> bytes:
    t0 = t0 or int(time.time() * 1000)
    records = tuple(Record(t0 + 1000 * i, (c,)) for i, c in enumerate(codes))
    return encode_frame(Frame(kw.pop("ref", REF), 0, seq, 3, 16, 1000, records, **kw))  # type: ignore[arg-type]


class Fleet:
    """One MQTT client standing for the edges: publishes frames (QoS 1) and collects what
    the service sends back to them, receipts (ACK) and dead letters (DEAD)."""

    def __init__(self, url: str, group: str) -> None:
        _, host, port = parse_broker_url(url)
        self.group = group
        self.got: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"it-{uuid.uuid4().hex}")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self.client.subscribe([(f"{PREFIX}/{group}/ACK/+", 1), (f"{PREFIX}/{group}/DEAD/+", 1)])
        assert subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def send(self, edge: str, payload: bytes) -> None:
        info = self.client.publish(data_topic(self.group, edge), payload, qos=1)
        info.wait_for_publish(timeout=10)

    def wait(self, what: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 20) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: what(self.got), timeout), self.got[-5:]

    def receipted(self, edge: str) -> set[int]:
        seqs: set[int] = set()
        for topic, body in self.got:
            if topic == f"{PREFIX}/{self.group}/ACK/{edge}":
                for first, last in decode_receipt(body)[1]:
                    seqs.update(range(first, last + 1))
        return seqs

    def dead(self, reason: str) -> list[dict[str, object]]:
        letters = [json.loads(b) for t, b in self.got if "/DEAD/" in t]
        return [d for d in letters if d["reason"] == reason]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "hostile.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def served(broker_url: str, group: str, db: str) -> Iterator[tuple[DecoderService, Fleet]]:
    cfg = ServeConfig(
        broker=BrokerConfig(url=broker_url), group=group, db=db, limits=LIMITS,
        clean_session=True,
    )  # fmt: skip
    service = DecoderService(cfg, ModelRegistry([FakeCodec()]))
    fleet = Fleet(broker_url, group)
    service.start(timeout=15)
    try:
        yield service, fleet
    finally:
        service.stop()
        fleet.close()


def _until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def test_a_clone_is_counted_kept_and_dead_lettered_and_a_historical_resend_is_not(
    served: tuple[DecoderService, Fleet], db: str
) -> None:
    service, fleet = served
    t0 = int(time.time() * 1000)
    fleet.send("site", _frame(0, (1, 2), t0=t0))
    assert service.wait_for_records(2, timeout=20)
    fleet.send("site", _frame(0, (1, 2), t0=t0, historical=True))  # a resend from the spool
    clone = _frame(0, (7, 8))  # another agent that took the edge id, from bdSeq 0
    fleet.send("site", clone)
    fleet.send("site", _frame(1))
    assert service.wait_for_records(4, timeout=20)
    fleet.wait(lambda got: any("/DEAD/" in t for t, _ in got))
    stats = service.stats()
    assert (stats["duplicates"], stats["clones"], stats["rejects"]) == (1, 1, {"clone": 1})
    (letter,) = fleet.dead("clone")
    assert letter["topic"] == data_topic(fleet.group, "site")
    with open_store(db) as store:
        (kept,) = store.held(reason="clone")
        assert (kept["edge"], kept["seq"], kept["payload"]) == ("site", 0, clone)
        rows = store.fetch_measurements("site")
    assert [r["codes"] for r in rows if r["seq"] == 0] == [[1], [2]]  # the first one stays


def test_frames_of_made_up_models_stop_being_parked_at_the_bound_without_a_receipt(
    served: tuple[DecoderService, Fleet], db: str
) -> None:
    service, fleet = served
    rng = np.random.default_rng(7)
    n = 120
    for seq in range(n):
        fleet.send("rogue", _frame(seq, ref=rng.bytes(8)))
    _until(lambda: service.stats()["rejects"].get("park_full", 0) == n - LIMITS.parked_per_edge)
    fleet.send("honest", _frame(0))  # its receipt comes after every one before it
    fleet.wait(lambda got: any(t.endswith("/ACK/honest") for t, _ in got))
    assert fleet.receipted("rogue") == set(range(LIMITS.parked_per_edge))
    assert service.stats()["parked"] == LIMITS.parked_per_edge
    assert fleet.dead("park_full")  # copies of the refused ones (rate-limited)
    with open_store(db) as store:
        assert sum(store.count_parked().values()) == LIMITS.parked_per_edge


def test_frame_times_out_of_any_window_are_held_and_refused_with_a_receipt(
    served: tuple[DecoderService, Fleet], db: str
) -> None:
    service, fleet = served
    ahead = int(time.time() * 1000) + int(2.3e6 * 365.25 * 86_400_000)  # 2.3 million years
    fleet.send("skewed", _frame(0, (1,), t0=ahead))
    fleet.send("skewed", _frame(1, (1,), t0=2**64 - 1))
    fleet.send("skewed", _frame(2, (1,)))
    assert service.wait_for_records(1, timeout=20)
    fleet.wait(lambda got: fleet.receipted("skewed") == {0, 1, 2})
    assert service.stats()["rejects"] == {"time_window": 2}
    fleet.wait(lambda got: len(fleet.dead("time_window")) == 2)
    with open_store(db) as store:
        assert store.count_frames() == 1
        assert [r["seq"] for r in store.fetch_measurements()] == [2]
        assert sorted((h["reason"], h["seq"]) for h in store.held("skewed")) == [
            ("time_window", 0),
            ("time_window", 1),
        ]
