"""MQTT clients the integration tests watch and drive the system with, on a real broker.

`Listener` queues what arrives on its topic filters; `Publisher` sends QoS 1 and waits for
each PUBACK; `clear_retained` removes what a test left retained.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.shared.config import BrokerConfig, parse_broker_url

TIMEOUT = 10.0  # seconds a test waits for a SUBACK, a PUBACK or the next message


class Listener:
    """A paho subscriber that queues every message matching its topic filters."""

    def __init__(self, broker: BrokerConfig, *filters: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
        if filters:
            self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
            self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        else:
            self.client.on_connect = lambda c, u, f, rc, p: subscribed.set()
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT), "the test subscriber got no SUBACK"

    def next(self, what: str) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"no message within {TIMEOUT} s while waiting for {what}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(broker: BrokerConfig, topics: Iterable[str]) -> None:
    """Drop the messages retained on `topics` (an empty retained message on each)."""
    cleaner = Listener(broker)
    for topic in topics:
        cleaner.publish(topic, b"", retain=True)
    cleaner.close()


class Publisher:
    """A paho client that publishes QoS 1 and waits for each PUBACK."""

    def __init__(self, url: str, client_id: str | None = None, clean: bool = True) -> None:
        _, host, port = parse_broker_url(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"it-pub-{uuid.uuid4().hex[:10]}",
            clean_session=clean,
        )
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert connected.wait(10), "no CONNACK from the broker"

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
