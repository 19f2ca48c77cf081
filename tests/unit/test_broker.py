"""The embedded amqtt broker and the MQTT probe (loopback only, no external broker needed)."""

from __future__ import annotations

import queue
import socket
import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.demo.broker import (
    EmbeddedBroker,
    _connect_packet,
    broker_answers,
    start_embedded_broker,
)
from tests.helpers import free_port
from tests.processes import python, started, stop, wait_ready


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    b = start_embedded_broker()
    yield b
    b.stop()


def _client(b: EmbeddedBroker, inbox: queue.Queue[mqtt.MQTTMessage] | None = None) -> mqtt.Client:
    """A connected paho client (VERSION2 callbacks) whose messages land in `inbox`."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:10]}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    if inbox is not None:
        client.on_message = lambda c, u, msg: inbox.put(msg)
    client.connect(b.host, b.port, keepalive=10)
    client.loop_start()
    assert connected.wait(10), "paho did not get a CONNACK from the embedded broker"
    return client


def _close(*clients: mqtt.Client) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_connect_packet_is_mqtt_311_with_clean_session() -> None:
    packet = _connect_packet("probe")
    assert packet == b"\x10\x11\x00\x04MQTT\x04\x02\x00\x0a\x00\x05probe"


def test_embedded_broker_binds_loopback_and_answers(broker: EmbeddedBroker) -> None:
    assert broker.host == "127.0.0.1" and broker.port > 0
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert broker_answers(broker.host, broker.port)


def test_broker_answers_false_when_nothing_listens() -> None:
    assert broker_answers("127.0.0.1", free_port(), timeout=0.5) is False


def test_broker_answers_false_for_a_server_that_is_not_mqtt() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def reply_garbage() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=reply_garbage, daemon=True)
        t.start()
        assert broker_answers("127.0.0.1", port, timeout=2.0) is False
        t.join(5)


def test_embedded_broker_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        start_embedded_broker("0.0.0.0", 0)


def test_qos1_publish_reaches_a_subscriber(broker: EmbeddedBroker) -> None:
    topic = f"sparsetel-test/{uuid.uuid4().hex}/DATA/e1"
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = _client(broker, inbox)
    subscribed = threading.Event()
    sub.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    pub = _client(broker)
    info = pub.publish(topic, b"\x00\x01binary\xff", qos=1)
    info.wait_for_publish(timeout=10)
    assert info.is_published()
    msg = inbox.get(timeout=10)
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"\x00\x01binary\xff", 1)
    _close(sub, pub)


def test_retained_message_is_delivered_to_a_later_subscriber(broker: EmbeddedBroker) -> None:
    topic = f"sparsetel-test/{uuid.uuid4().hex}/STATE/e1"
    pub = _client(broker)
    pub.publish(topic, b'{"online": true}', qos=1, retain=True).wait_for_publish(timeout=10)
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    sub = _client(broker, inbox)
    sub.subscribe(topic, qos=1)
    msg = inbox.get(timeout=10)
    assert msg.payload == b'{"online": true}' and msg.retain
    _close(sub, pub)


def test_stop_closes_the_listener_and_is_idempotent() -> None:
    b = start_embedded_broker("127.0.0.1", 0)
    port = b.port
    b.stop()
    b.stop()
    assert not b.alive
    assert broker_answers("127.0.0.1", port, timeout=0.5) is False


def test_a_taken_port_fails_start_with_a_reason(broker: EmbeddedBroker) -> None:
    with pytest.raises(RuntimeError, match="did not start"):
        start_embedded_broker("127.0.0.1", broker.port, timeout=5)


def test_run_broker_serves_until_sigterm_and_exits_0() -> None:
    port = free_port()
    code = (
        "from sparsetel.cloud.demo.broker import run_broker; "
        f"raise SystemExit(run_broker('127.0.0.1', {port}))"
    )
    with started(python(code), stderr=None) as proc:
        wait_ready(proc, lambda: broker_answers("127.0.0.1", port, timeout=0.5), 30, "run_broker")
        out, _ = stop(proc, timeout=30)
    assert proc.returncode == 0
    assert f"mqtt://127.0.0.1:{port}" in out
