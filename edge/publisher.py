"""The edge's MQTT side: one paho-mqtt 2.x client with birth, death and acknowledged frames.

Protocol (borrowed from Sparkplug B): the client's last will is the death on the edge's
STATE topic (retained, QoS 1), so the broker announces a lost edge; on every connect it
publishes the birth (retained, QoS 1) and subscribes to its NCMD topic, where ``rebirth``
asks for the birth again and ``deploy`` / ``rollback`` go to the agent's updater
(`on_command`), which fetches model bundles through `fetch` and reports on DEPLOY through
`publish_report`. Frames go to the DATA topic at QoS 1 and are counted as acknowledged when
the broker's PUBACK arrives (`on_publish`); with `on_receipt` the client also takes the
cloud's store receipts from its ACK topic. `close()` publishes the death itself (a clean
disconnect does not fire the will) and disconnects.

paho runs its network loop in its own thread (`loop_start`) and reconnects; each wait is
drawn by `Backoff` (exponential, with jitter, so a fleet cut off together does not come back
in lockstep). Our callbacks only record state and queue publishes: they never block and
never raise. paho's queue lives in memory, bounded by `max_queued`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..shared.commands import parse_command
from ..shared.config import BrokerConfig, parse_broker_url
from ..shared.topics import (
    data_topic,
    deploy_topic,
    health_topic,
    ncmd_topic,
    receipt_topic,
    state_topic,
)
from .backoff import Backoff

__all__ = ["Publisher", "PublisherStats"]

log = logging.getLogger(__name__)

QOS = 1


@dataclass
class PublisherStats:
    """Counters of one publisher: frames published, acknowledged, and refused by the broker
    (a PUBACK with a failure reason code, MQTT 5); sessions. A frame `publish_frame` could not
    queue is not counted here: it is not lost, its caller keeps it (the spool)."""

    published: int = 0
    acked: int = 0
    failed: int = 0
    bytes_sent: int = 0
    connects: int = 0
    disconnects: int = 0
    births: int = 0
    commands: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["commands"] = dict(self.commands)
        return data


class Publisher:
    """Publish an edge's frames with QoS 1, its birth on every connect and its death at the end.

    `birth` and `death` build the STATE payloads when they are needed (a fresh timestamp
    each time). `max_inflight` bounds unacknowledged QoS 1 frames on the wire: None = 100
    with MQTT 3.1.1 (paho's default of 20 throttles a fast replay), 20 with MQTT 5, where
    the broker's Receive Maximum (Mosquitto: 20) must not be exceeded and paho cannot adapt
    once connected. `max_queued` bounds frames waiting in memory while the broker is away
    (0 = unbounded). `on_frame_acked(tag)` is called, from paho's network thread, when the
    broker acknowledges a frame published with a `tag` (the spool's id of the frame).
    `on_command(command)` gets every NCMD command but ``rebirth`` (a dict, see
    `sparsetel.shared.commands.parse_command`), also from paho's thread: it must not block.
    With `on_receipt(payload)` the client also subscribes to its ACK topic and hands over the
    cloud's store receipts (`sparsetel.shared.receipt`), likewise from paho's thread.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        group: str,
        edge: str,
        birth: Callable[[], bytes],
        death: Callable[[], bytes],
        max_inflight: int | None = None,
        max_queued: int = 10_000,
        on_frame_acked: Callable[[int], object] | None = None,
        on_command: Callable[[dict[str, Any]], object] | None = None,
        on_receipt: Callable[[bytes], object] | None = None,
    ) -> None:
        if max_inflight is None:
            max_inflight = 20 if broker.protocol == "5" else 100
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        self.stats = PublisherStats()
        self._birth, self._death = birth, death
        self._data_topic = data_topic(group, edge)
        self._state_topic = state_topic(group, edge)
        self._ncmd_topic = ncmd_topic(group, edge)
        self._health_topic = health_topic(group, edge)
        self._deploy_topic = deploy_topic(group, edge)
        self._on_command = on_command
        self._receipt_topic = receipt_topic(group, edge)
        self._on_receipt = on_receipt
        self._fetches: dict[str, queue.Queue[bytes]] = {}  # topic -> what arrived on it
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._tls, self._host, self._port = parse_broker_url(broker.url)
        self._keepalive = broker.keepalive
        self._cond = threading.Condition()
        self._pending: dict[int, tuple[str, int | None]] = {}  # mid -> (kind, tag): no PUBACK yet
        self._on_frame_acked = on_frame_acked
        self._early: dict[int, bool] = {}  # PUBACKs that beat publish() returning the mid
        self._frames_pending = 0
        self._connected = threading.Event()
        self._answered = threading.Event()  # the first CONNACK, accepted or not
        self._refused: str | None = None
        self._last_error = "no answer yet"
        self._closed = False
        self._backoff = Backoff()
        # ids never hold "/", so this client id is unique per (group, edge)
        client_id = broker.client_id or f"sparsetel/{group}/{edge}"
        self._client = self._build_client(broker, client_id)

    def _build_client(self, broker: BrokerConfig, client_id: str) -> mqtt.Client:
        v5 = broker.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if log.isEnabledFor(logging.DEBUG):  # paho's own log is for debugging only
            client.enable_logger(log.getChild("paho"))
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if self._tls:
            client.tls_set(ca_certs=None if broker.tls_ca is None else str(broker.tls_ca))
        client.will_set(self._state_topic, self._death(), qos=QOS, retain=True)
        self._draw_reconnect_wait(client)
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)  # bounded in publish_frame, births always pass
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _draw_reconnect_wait(self, client: mqtt.Client) -> None:
        """Give paho the next jittered wait: it sleeps min_delay before its next attempt, as
        its doubling restarts from min_delay after every reconnect_delay_set. (paho 2.2.0
        annotates the delays as int but computes with them as float seconds.)"""
        wait = self._backoff.next()
        client.reconnect_delay_set(min_delay=wait, max_delay=wait)  # type: ignore[arg-type]

    def connect(self, timeout: float = 10.0) -> bool:
        """Start the network loop and wait up to `timeout` for the first CONNACK.

        True once connected. False when the broker did not answer in time: the loop keeps
        trying with backoff, and what is published meanwhile waits for it (an edge that boots
        without its uplink still measures). Raises ConnectionError (the loop stopped) when
        the broker refuses us (credentials, authorisation): retrying cannot fix that.
        """
        log.info(
            "connecting to %s:%s%s (%s)",
            self._host,
            self._port,
            " over TLS" if self._tls else "",
            "with credentials" if self._client.username else "anonymous",
        )
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()
        if not self._answered.wait(timeout):
            log.warning(
                "broker %s:%s not reachable after %g s (%s): going on offline, retrying",
                self._host,
                self._port,
                timeout,
                self._last_error,
            )
            return False
        if self._refused is None:
            return True
        self._client.loop_stop()
        raise ConnectionError(f"broker {self._host}:{self._port}: {self._refused}")

    def publish_frame(self, payload: bytes, tag: int | None = None) -> bool:
        """Queue one frame (QoS 1) on the DATA topic; False, queueing nothing, when the
        in-memory queue is full or paho refuses it: the caller keeps the frame and sends it
        again later. `tag` comes back through `on_frame_acked` once the broker has it."""
        with self._cond:
            backlog = self._frames_pending
        if 0 < self._max_queued <= backlog:
            log.debug("memory queue full: %s frames await the broker", backlog)
            return False
        info = self._client.publish(self._data_topic, payload, qos=QOS)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("frame not queued, kept for later: %s", mqtt.error_string(info.rc))
            return False
        self.stats.published += 1
        self.stats.bytes_sent += len(payload)
        self._track(info.mid, "frame", tag)
        return True

    def has_room(self) -> bool:
        """Whether the in-memory queue is at most half full (room to resend older frames)."""
        with self._cond:
            return self._max_queued == 0 or 2 * self._frames_pending < self._max_queued

    def publish_health(self, payload: bytes) -> bool:
        """Publish one heartbeat on the HEALTH topic (QoS 0: the next one follows soon);
        False when it could not leave, e.g. while the broker is away."""
        if not self.connected:
            return False
        info = self._client.publish(self._health_topic, payload, qos=0)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_report(self, payload: bytes) -> bool:
        """Publish a deployment report on DEPLOY (QoS 1; queued while the broker is away)."""
        info = self._client.publish(self._deploy_topic, payload, qos=QOS)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("deploy report not queued: %s", mqtt.error_string(info.rc))
            return False
        self._track(info.mid, "report")
        return True

    def rebirth(self) -> None:
        """Publish the birth now (the model changed); offline, the next connect does it."""
        if self.connected:
            self._publish_birth(self._client)

    def fetch(self, topic: str, timeout: float) -> bytes | None:
        """The first non-empty message on `topic` (a retained one comes at once), subscribing
        only while waiting; None when nothing came within `timeout` seconds."""
        inbox: queue.Queue[bytes] = queue.Queue()
        with self._cond:
            self._fetches[topic] = inbox
        try:
            self._client.subscribe(topic, qos=QOS)
            return inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        finally:
            with self._cond:
                self._fetches.pop(topic, None)
            self._client.unsubscribe(topic)

    def wait_for_acks(self, timeout: float) -> bool:
        """Wait until every frame and birth published so far is acknowledged; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Publish the death (retained), wait for it up to `timeout`, disconnect cleanly."""
        if self._closed:
            return
        self._closed = True
        if self.connected:
            info = self._client.publish(self._state_topic, self._death(), qos=QOS, retain=True)
            self._track(info.mid, "state")
            try:
                info.wait_for_publish(timeout)
                if not info.is_published():
                    log.warning("death not acknowledged within %g s", timeout)
            except (ValueError, RuntimeError) as exc:
                log.warning("death not published: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # ------------------------------------------------------------------ paho callbacks
    # They run in paho's network thread: record, queue, return. Never block, never raise.

    def _track(self, mid: int, kind: str, tag: int | None = None) -> None:
        with self._cond:
            ok = self._early.pop(mid, None)
            if ok is None:
                self._pending[mid] = (kind, tag)
                self._frames_pending += kind == "frame"
                return
            self._settle(kind, ok)
            self._cond.notify_all()
        self._acked(kind, ok, tag)

    def _settle(self, kind: str, ok: bool) -> None:
        """Count one acknowledged (or refused) message; the caller holds `_cond`."""
        if kind == "frame":
            if ok:
                self.stats.acked += 1
            else:
                self.stats.failed += 1

    def _acked(self, kind: str, ok: bool, tag: int | None) -> None:
        """Tell the owner a tagged frame is safe with the broker (outside `_cond`)."""
        if kind == "frame" and ok and tag is not None and self._on_frame_acked is not None:
            self._on_frame_acked(tag)

    def _publish_birth(self, client: mqtt.Client) -> None:
        info = client.publish(self._state_topic, self._birth(), qos=QOS, retain=True)
        self.stats.births += 1
        self._track(info.mid, "state")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._refused = f"connection refused: {reason_code}"
                log.error("broker refused the connection: %s", reason_code)
                self._answered.set()
                return
            receive_max = getattr(properties, "ReceiveMaximum", None)
            if isinstance(receive_max, int) and receive_max < self._max_inflight:
                log.warning(
                    "broker's Receive Maximum %s is below max_inflight %s: lower max_inflight",
                    receive_max,
                    self._max_inflight,
                )
            self.stats.connects += 1
            self._backoff.reset()
            client.subscribe(self._ncmd_topic, qos=QOS)
            if self._on_receipt is not None:
                client.subscribe(self._receipt_topic, qos=0)  # a lost one costs a resend
            with self._cond:
                fetching = list(self._fetches)
            for topic in fetching:  # a fetch that outlived a reconnect
                client.subscribe(topic, qos=QOS)
            self._publish_birth(client)
            self._refused = None
            self._connected.set()
            self._answered.set()
            log.info("connected (session %s), birth published", self.stats.connects)
        except Exception as exc:
            self._refused = f"on_connect failed: {exc}"
            self._answered.set()
            log.exception("on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._last_error = "connection failed"
        self._draw_reconnect_wait(client)
        log.warning("cannot reach the broker %s:%s, retrying", self._host, self._port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()
        self.stats.disconnects += 1
        if not self._closed:
            self._draw_reconnect_wait(client)
            log.warning("disconnected from the broker (%s), reconnecting", reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        try:
            ok = not reason_code.is_failure
            if not ok:
                log.warning("broker refused message %s: %s", mid, reason_code)
            with self._cond:
                entry = self._pending.pop(mid, None)
                if entry is None:
                    self._early[mid] = ok
                else:
                    self._frames_pending -= entry[0] == "frame"
                    self._settle(entry[0], ok)
                self._cond.notify_all()
            if entry is not None:
                self._acked(entry[0], ok, entry[1])
        except Exception:
            log.exception("on_publish failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self._receipt_topic and self._on_receipt is not None:
                self._on_receipt(bytes(message.payload))
                return
            if message.topic != self._ncmd_topic:
                with self._cond:
                    inbox = self._fetches.get(message.topic)
                if inbox is not None and message.payload:
                    inbox.put(bytes(message.payload))
                return
            command = parse_command(message.payload)
            name = str(command["command"])[:64]
            self.stats.commands[name] += 1
            if name == "rebirth":
                log.info("NCMD rebirth: publishing the birth again")
                self._publish_birth(client)
            elif self._on_command is not None and name in ("deploy", "rollback", "invalid"):
                self._on_command(command)
            else:
                log.warning("NCMD %r is not supported by this agent, ignored", name)
        except Exception:
            log.exception("NCMD handling failed")
