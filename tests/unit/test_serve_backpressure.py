"""serve under a full queue, without a broker: paho's callbacks driven as its network thread
would drive them, and acks recorded by a fake client.

A QoS 1 message is acknowledged once its batch is committed, never because it could not be
queued; one larger than any valid payload is rejected before the queue; one that came on a
connection that has since dropped is not acknowledged on the next.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, generate_latest

from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.servemetrics import ServeCollector
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.shared.errors import ConfigError
from sparsetel.shared.topics import data_topic, state_topic
from sparsetel.shared.wire import MAX_FRAME_BYTES

TOPIC = data_topic("g1", "e1")


class FakeClient:
    """What the service calls on paho's client: ack and publish recorded, the rest a no-op."""

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.published: list[tuple[str, bytes]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass


def _message(topic: str, payload: bytes, mid: int, qos: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos = payload, qos
    return msg


def _service(tmp_path: Path, client: FakeClient, **kw: object) -> DecoderService:
    """A service whose acks and dead letters go to `client` (as after `_connect`)."""
    cfg = ServeConfig(db=str(tmp_path / "bp.db"), **kw)  # type: ignore[arg-type]
    service = DecoderService(cfg, ModelRegistry())
    service._client = service._acks.client = client  # type: ignore[assignment]
    return service


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


def _deliver_in_thread(
    service: DecoderService, client: FakeClient, msg: mqtt.MQTTMessage
) -> threading.Thread:
    """paho's network thread delivering `msg` (it may wait there for room)."""
    thread = threading.Thread(target=service._on_message, args=(client, None, msg))
    thread.start()
    return thread


def test_a_qos1_message_waits_for_room_and_is_acked_only_once_committed(
    tmp_path: Path, client: FakeClient
) -> None:
    service = _service(tmp_path, client, queue_size=1)
    service._on_message(client, None, _message(TOPIC, b"junk one", mid=1))  # type: ignore[arg-type]
    network = _deliver_in_thread(service, client, _message(TOPIC, b"junk two", mid=2))
    network.join(0.3)
    assert network.is_alive(), "a full queue must hold paho's thread, not drop the message"
    assert client.acks == [] and service.stats()["queue_waits"] == 1
    service.start(connect=False)  # the worker takes both, commits, and only then acks
    network.join(10)
    service.stop()
    assert not network.is_alive()
    stats = service.stats()
    assert client.acks == [1, 2] and stats["acks"] == 2 and stats["queue_full"] == 0
    assert sum(stats["rejects"].values()) == 2  # handled (rejected junk), not dropped


def test_a_qos1_message_still_waiting_when_the_service_stops_is_never_acked(
    tmp_path: Path, client: FakeClient
) -> None:
    service = _service(tmp_path, client, queue_size=1)
    service._on_message(client, None, _message(TOPIC, b"first", mid=1))  # type: ignore[arg-type]
    network = _deliver_in_thread(service, client, _message(TOPIC, b"second", mid=2))
    network.join(0.3)
    service.stop()  # the broker keeps mid 2 for the next session
    network.join(10)
    assert not network.is_alive()
    assert 2 not in client.acks


def test_a_qos0_heartbeat_is_dropped_and_counted_when_the_queue_is_full(
    tmp_path: Path, client: FakeClient
) -> None:
    service = _service(tmp_path, client, queue_size=1)
    health = "sparsetel/v1/g1/HEALTH/e1"
    service._on_message(client, None, _message(health, b"{}", mid=0, qos=0))  # type: ignore[arg-type]
    service._on_message(client, None, _message(health, b"{}", mid=0, qos=0))  # type: ignore[arg-type]
    assert service.stats()["queue_full"] == 1 and client.acks == []


@pytest.mark.parametrize(
    ("topic", "size"), [(TOPIC, MAX_FRAME_BYTES + 1), (state_topic("g1", "e1"), 64 * 1024 + 1)]
)
def test_an_oversized_payload_is_rejected_before_the_queue_dead_lettered_and_acked(
    tmp_path: Path, client: FakeClient, topic: str, size: int
) -> None:
    service = _service(tmp_path, client)
    service._on_message(client, None, _message(topic, b"\x01" * size, mid=5))  # type: ignore[arg-type]
    stats = service.stats()
    assert stats["rejects"] == {"too_large": 1} and stats["queue_depth"] == 1
    assert stats["queue_bytes"] < 100_000  # a truncated copy waits, not the payload
    service.start(connect=False)
    service.stop()
    assert client.acks == [5]  # resending cannot make it fit
    ((dead_topic, body),) = client.published
    letter = json.loads(body)
    assert dead_topic == "sparsetel/v1/g1/DEAD/e1"
    assert (letter["reason"], letter["size"], letter["truncated"]) == ("too_large", size, True)


def test_a_message_from_a_dropped_connection_is_not_acked_on_the_next(
    tmp_path: Path, client: FakeClient
) -> None:
    service = _service(tmp_path, client)
    service._on_message(client, None, _message(TOPIC, b"old", mid=9))  # type: ignore[arg-type]
    lost = ReasonCode(PacketTypes.DISCONNECT, identifier=0x80)  # type: ignore[no-untyped-call]
    service._on_disconnect(None, None, None, lost, None)
    service._on_message(client, None, _message(TOPIC, b"new", mid=9))  # type: ignore[arg-type]
    service.start(connect=False)
    service.stop()
    stats = service.stats()
    assert client.acks == [9] and (stats["acks"], stats["acks_stale"]) == (1, 1)


# -- metrics while it runs ----------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path, client: FakeClient) -> Iterator[DecoderService]:
    service = _service(tmp_path, client, metrics="127.0.0.1:0")
    service.start(connect=False)
    yield service
    service.stop()


def _get(port: int | None, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return str(response.read().decode())


def _scrape_until(port: int | None, line: str, timeout: float = 10.0) -> str:
    """The metrics page once it shows `line` (or the last one after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        text = _get(port, "/metrics")
        if line in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_the_metrics_endpoint_serves_the_counters_while_the_service_runs(
    running: DecoderService,
) -> None:
    running.submit(TOPIC, b"junk", mid=1, qos=1)
    running.submit(TOPIC, b"\x00" * (MAX_FRAME_BYTES + 1), mid=2, qos=1)
    text = _scrape_until(running.metrics_port, "sparsetel_serve_acks_total 2.0")
    for line in (
        "sparsetel_serve_messages_received_total 2.0",
        'sparsetel_serve_rejected_total{reason="too_large"} 1.0',
        "sparsetel_serve_acks_total 2.0",
        "sparsetel_serve_queue_depth 0.0",
        "sparsetel_serve_queue_capacity 10000.0",
        "sparsetel_serve_measurements_stored_total 0.0",
        "sparsetel_serve_frames_parked_total 0.0",
        "sparsetel_serve_connected 0.0",
    ):
        assert line in text, line
    assert "# TYPE sparsetel_serve_queue_bytes gauge" in text
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(running.metrics_port, "/")
    assert err.value.code == 404


@pytest.mark.parametrize("listen", ["9108", "host:", ":9108", "h:99999", "[::1]9108"])
def test_a_bad_metrics_address_names_its_key(listen: str) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig(metrics=listen)
    assert err.value.key == "metrics"


@pytest.mark.parametrize("size", [2**20 - 1, 2**34 + 1])
def test_a_queue_bound_in_bytes_out_of_range_names_its_key(size: int) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig(queue_bytes=size)
    assert err.value.key == "queue_bytes"


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path, client: FakeClient) -> None:
    service = _service(tmp_path, client, queue_bytes=2**20)
    frame_sized = b"\x00" * 200_000  # a valid size, but five of them pass a MiB
    for mid in range(1, 6):
        assert service.submit(TOPIC, frame_sized, mid=mid, qos=0)
    assert service.submit(TOPIC, frame_sized, mid=6, qos=0) is False
    stats = service.stats()
    assert (stats["queue_depth"], stats["queue_full"]) == (5, 1)
    assert stats["queue_bytes"] <= stats["queue_capacity_bytes"] == 2**20


def test_the_collector_exports_base_units_and_skips_what_is_not_a_count() -> None:
    registry = CollectorRegistry()
    stats = {"queue_wait_ms": 1500, "clones": 3, "client_id": "x", "rejects": {"truncated": 2}}
    registry.register(ServeCollector(lambda: stats))
    text = generate_latest(registry).decode()
    assert "sparsetel_serve_queue_wait_seconds_total 1.5" in text
    assert "sparsetel_serve_clones_total 3.0" in text  # a counter added elsewhere comes along
    assert 'sparsetel_serve_rejected_total{reason="truncated"} 2.0' in text
    assert "client_id" not in text and "queue_wait_ms" not in text
