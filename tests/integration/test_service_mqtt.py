"""The decoder service against the real Mosquitto (tests/conftest.py `broker_url`:
mqtt://127.0.0.1:1883 or SPARSETEL_TEST_BROKER). Each test uses its own `group`, so tests and
runs never mix. Without a broker the tests skip, except under CI=true: they fail."""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import data_topic, state_topic
from tests.frames import MQTT_CODEC, recent_frame
from tests.helpers import wait_until
from tests.mqttclients import Publisher

pytestmark = pytest.mark.integration


def _service(url: str, group: str, db: Path, client_id: str | None = None) -> DecoderService:
    cfg = ServeConfig(broker=BrokerConfig(url=url, client_id=client_id), group=group, db=str(db))
    service = DecoderService(cfg, ModelRegistry([MQTT_CODEC]))
    service.start(timeout=15)
    return service


def _forget_session(url: str, client_id: str) -> None:
    """Drop the broker's persistent session of `client_id` (clean connect, then leave)."""
    Publisher(url, client_id=client_id, clean=True).close()


def test_valid_frames_stored_exactly_once_garbage_and_duplicates_counted(
    broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    service = _service(broker_url, group, tmp_path / "it.db")
    edge, state = data_topic(group, "edge-a"), state_topic(group, "edge-a")
    birth = state_from_manifest(
        MQTT_CODEC.manifest, edge="edge-a", group=group, bd_seq=0, agent_version="it",
        runtime_version="none", timestamp_ms=int(time.time() * 1000),
    )  # fmt: skip
    try:
        publisher.send(state, birth_payload(birth), retain=True)
        for seq in range(6):
            publisher.send(edge, recent_frame(seq))
        publisher.send(edge, b"\x00 not a frame" * 4)
        publisher.send(edge, recent_frame(3))  # a repeat, as after a reconnect
        publisher.send(edge, recent_frame(6, ref=bytes(8)))  # nobody's model
        publisher.send(state, b"{broken json")
        publisher.send(data_topic(group, "edge-b"), recent_frame(0, n=5))
        assert service.wait_for_records(6 * 2 + 5, timeout=30)
        assert wait_until(lambda: service.stats()["messages"] == 12, 15.0)
        stats = service.stats()
    finally:
        service.stop()
        publisher.send(state, b"", retain=True)  # leave no retained birth behind
    assert stats["records_stored"] == 17 and stats["frames_ok"] == 7
    assert stats["duplicates"] == 1 and stats["births"] == 1
    assert stats["rejects"] == {"magic": 1, "state": 1} and stats["parked"] == 1
    with open_store(tmp_path / "it.db") as store:
        assert store.count_measurements() == 17
        assert store.count_frames("edge-a") == 6
        rows = store.fetch_measurements("edge-a")
        (edge_row,) = [e for e in store.edges() if e["edge"] == "edge-a"]
    assert [(r["seq"], r["rec"]) for r in rows] == [(s, i) for s in range(6) for i in range(2)]
    assert rows[0]["prediction"] is None and rows[1]["prediction"] == 4.0  # window W=2 full
    assert rows[0]["kpis"] == [2.0, 3.0]
    assert edge_row["online"] is True and edge_row["group"] == group


def test_service_resubscribes_after_the_broker_drops_it(
    broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    client_id = f"it-svc-{uuid.uuid4().hex[:10]}"
    service = _service(broker_url, group, tmp_path / "re.db", client_id=client_id)
    try:
        publisher.send(data_topic(group, "e"), recent_frame(0))
        assert service.wait_for_records(2, timeout=15)
        # Same client id with a clean session: the broker drops the service and forgets its
        # subscriptions, so frames arrive again only if on_connect subscribes anew.
        _forget_session(broker_url, client_id)
        assert wait_until(lambda: service.stats()["connects"] >= 2, timeout=30)
        assert service.wait_until_subscribed(timeout=15)
        publisher.send(data_topic(group, "e"), recent_frame(1))
        assert service.wait_for_records(4, timeout=15)
    finally:
        service.stop()
        _forget_session(broker_url, client_id)
    assert service.stats()["disconnects"] >= 1


def test_frames_sent_while_the_service_is_down_arrive_after_restart(
    broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    client_id = f"it-svc-{uuid.uuid4().hex[:10]}"
    db = tmp_path / "down.db"
    try:
        first = _service(broker_url, group, db, client_id=client_id)
        publisher.send(data_topic(group, "e"), recent_frame(0))
        assert first.wait_for_records(2, timeout=15)
        first.stop()
        for seq in range(5):  # seq 0 again: stored already, so a duplicate
            publisher.send(data_topic(group, "e"), recent_frame(seq))
        second = _service(broker_url, group, db, client_id=client_id)
        try:
            assert second.wait_for_records(8, timeout=30)
            assert wait_until(lambda: second.stats()["duplicates"] == 1, 15.0), second.stats()
        finally:
            second.stop()
    finally:
        _forget_session(broker_url, client_id)
    with open_store(db) as store:
        assert store.count_measurements() == 10
        assert not any(math.isnan(v) for r in store.fetch_measurements() for v in r["kpis"])


def test_rejected_messages_are_copied_to_the_dead_letter_topic_and_floods_held_back(
    broker_url: str, group: str, publisher: Publisher, tmp_path: Path
) -> None:
    received: list[mqtt.MQTTMessage] = []
    listener = Publisher(broker_url)
    subscribed = threading.Event()
    listener.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    listener.client.on_message = lambda c, u, m: received.append(m)
    listener.client.subscribe(f"sparsetel/v1/{group}/DEAD/+", qos=1)
    assert subscribed.wait(10)
    cfg = ServeConfig(
        broker=BrokerConfig(url=broker_url), group=group, db=str(tmp_path / "dl.db"),
        flood_frames_per_s=0.4,  # a burst of 2 messages, then one every 2.5 s
    )  # fmt: skip
    service = DecoderService(cfg, ModelRegistry([MQTT_CODEC]))
    service.start(timeout=15)
    edge = data_topic(group, "noisy")
    garbage = b"\x00 not a frame" * 4
    try:
        publisher.send(edge, garbage)
        for seq in range(70):  # the garbage and frame 0 pass the flood limit, 69 do not
            publisher.send(edge, recent_frame(seq))
        assert wait_until(lambda: service.stats()["messages"] == 71, 15.0)
        assert wait_until(lambda: service.stats()["dead_letters"] >= 50, 15.0)
        time.sleep(0.5)
        stats = service.stats()
    finally:
        service.stop()
        listener.close()
    assert stats["rejects"] == {"magic": 1, "flood": 69} and stats["frames_ok"] == 1
    # copies: a burst of 50 per edge (and 10 more a second), the rest counted as held back
    copied = stats["dead_letters"]
    assert copied + stats["dead_letters_held"] == 70 and 50 <= copied < 70
    assert wait_until(lambda: len(received) == copied, 15.0)
    letters = [json.loads(m.payload) for m in received]
    assert {m.topic for m in received} == {f"sparsetel/v1/{group}/DEAD/noisy"}
    first = letters[0]
    assert (first["reason"], first["topic"], first["size"]) == ("magic", edge, len(garbage))
    assert base64.b64decode(first["payload_b64"]) == garbage and not first["truncated"]
    assert {letter["reason"] for letter in letters[1:]} == {"flood"}
