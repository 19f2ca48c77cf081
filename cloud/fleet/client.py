"""Talking to a fleet over MQTT for a deployment: one paho client, discovery and reports.

`BrokerLink` is the deployment's client: MQTT 3.1.1, a clean session and an id of its own (a
configured `client_id` belongs to the decoder service and is not reused, so a deployment
never kicks the service off the broker). Subscriptions are QoS 1 and wait for their SUBACK;
publishes are QoS 1 and wait for their PUBACK. paho's network thread only queues what
arrives and resubscribes after a reconnect; all waiting runs in the calling thread, against
deadlines, through `BrokerLink.next`.

On that link:

- `discover_edges` subscribes to the group's STATE topics and reads the retained births:
  an edge is online when its last birth says so (an empty retained payload clears it);
- `collect_reports` reads the DEPLOY reports of one deployment (`shared.commands`) until
  every target has sent a final step or time runs out.

Messages of another kind, group or deployment are skipped; malformed ones are logged and
skipped, never fatal.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ...shared.birth import parse_state
from ...shared.commands import DeployReport, parse_report
from ...shared.config import BrokerConfig
from ...shared.errors import SparsetelError, WireError
from ...shared.topics import parse_topic, state_subscription

__all__ = ["BrokerLink", "collect_reports", "discover_edges"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
DISCOVERY_LIMIT_S = 5.0  # retained births arrive at once; never wait longer than this for them


# --------------------------------------------------------------------------- link


class BrokerLink:
    """One paho client for a deployment. paho's thread only queues what arrives (`next`
    hands it out) and resubscribes after a reconnect; waiting happens in the caller."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.broker = broker
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._filters: list[str] = []
        self._subacks: dict[int, list[str]] = {}  # SUBACK mid -> the refused reason codes
        self._lock = threading.Condition()
        self._connected = threading.Event()
        self._refused = ""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sparsetel-deploy-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(ca_certs=str(broker.tls_ca) if broker.tls_ca else None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and start paho's thread; SparsetelError with the reason when it fails."""
        b = self.broker
        try:
            self.client.connect(b.host, b.port, keepalive=b.keepalive)
        except (OSError, ValueError) as exc:
            raise SparsetelError(f"cannot connect to broker {b.url}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._refused or time.monotonic() > deadline:
                self.close()
                raise SparsetelError(f"broker {b.url}: {self._refused or 'no CONNACK'}")

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> BrokerLink:
        """Connect (see `connect`): ``with BrokerLink(broker) as link`` closes it at the end."""
        self.connect()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def subscribe(self, topic_filter: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Subscribe (QoS 1) and wait for the broker to grant it."""
        with self._lock:
            self._filters.append(topic_filter)
        rc, mid = self.client.subscribe(topic_filter, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise SparsetelError(f"cannot subscribe to {topic_filter}: {mqtt.error_string(rc)}")
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._subacks, timeout):
                raise SparsetelError(f"no SUBACK for {topic_filter} within {timeout} s")
            refused = self._subacks.pop(mid)
        if refused:
            raise SparsetelError(f"subscription to {topic_filter} refused ({refused}): check ACL")

    def publish(
        self, messages: Sequence[tuple[str, bytes, bool]], timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        """Publish (topic, payload, retain) messages at QoS 1, then wait for every PUBACK."""
        sent = [(topic, self.client.publish(topic, p, qos=1, retain=r)) for topic, p, r in messages]
        deadline = time.monotonic() + timeout
        for topic, info in sent:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (ValueError, RuntimeError) as exc:
                raise SparsetelError(f"cannot publish to {topic}: {exc}") from exc
            if not info.is_published():
                raise SparsetelError(f"no PUBACK for {topic} within {timeout} s")

    def next(self, timeout: float) -> tuple[str, bytes] | None:
        """The next (topic, payload) received, or None after `timeout` seconds (at once when
        `timeout` <= 0, so loops against a deadline end even while messages keep coming)."""
        if timeout <= 0:
            return None
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    # paho's thread: queue, record, return; never block or raise

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._refused = f"connection refused: {rc}"
            return
        with self._lock:
            filters = list(self._filters)
        if filters:  # a reconnect: the clean session lost them
            client.subscribe([(f, 1) for f in filters])
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._connected.clear()
        if rc.is_failure:
            log.warning("lost the broker (%s); paho reconnects", rc)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._lock:
            self._subacks[mid] = [str(c) for c in codes if c.is_failure]
            self._lock.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload)))


# --------------------------------------------------------------------------- discovery


def discover_edges(
    link: BrokerLink, group: str, settle_s: float = 1.0, limit_s: float = DISCOVERY_LIMIT_S
) -> list[str]:
    """The online edges of `group`, sorted, from the retained births on its STATE topics:
    gathered until none came for `settle_s` seconds, `limit_s` at most. Other messages that
    arrive meanwhile are dropped."""
    link.subscribe(state_subscription(group))
    online: dict[str, bool] = {}
    last = start = time.monotonic()
    while True:
        item = link.next(min(last + settle_s, start + max(limit_s, settle_s)) - time.monotonic())
        if item is None:
            break
        seen = _edge_state(group, *item)
        if seen is not None:
            online[seen[0]] = seen[1]
            last = time.monotonic()
    edges = sorted(edge for edge, up in online.items() if up)
    log.info("group %s: %d edge(s) online, %d offline", group, len(edges), len(online) - len(edges))
    return edges


def _edge_state(group: str, topic: str, payload: bytes) -> tuple[str, bool] | None:
    """(edge, online) of a STATE message of `group`; None for anything else."""
    try:
        parts = parse_topic(topic)
    except WireError:
        return None
    if parts.kind != "STATE" or parts.group != group:
        return None
    if not payload:  # a retained birth being cleared
        return parts.edge, False
    try:
        state = parse_state(payload)
    except WireError as exc:
        log.warning("ignoring the STATE of edge %s: %s", parts.edge, exc)
        return None
    if state.edge != parts.edge:
        log.warning("ignoring a STATE on %s that names edge %s", topic, state.edge)
        return None
    return parts.edge, state.online


# --------------------------------------------------------------------------- reports


def collect_reports(
    link: BrokerLink, group: str, deployment: str, targets: Sequence[str], timeout_s: float
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Wait until every target reported a final step of `deployment`, or `timeout_s` passed.

    Returns {edge: {"step": last step or None, "reason", "steps": every step in order}} and
    the sorted targets without a final step. Reports of other deployments are skipped,
    malformed ones logged and skipped.
    """
    results: dict[str, dict[str, Any]] = {
        edge: {"step": None, "reason": None, "steps": []} for edge in targets
    }
    pending = set(targets)
    deadline = time.monotonic() + timeout_s
    while pending:
        item = link.next(deadline - time.monotonic())
        if item is None:
            break
        report = _report_of(group, deployment, *item)
        if report is None:
            continue
        if report.edge not in results:
            log.warning("edge %s reported on %s but was not a target", report.edge, deployment)
            continue
        entry = results[report.edge]
        entry.update(step=report.step, reason=report.reason)
        entry["steps"].append(report.step)
        log.info("edge %s: %s (%s)", report.edge, report.step, report.reason or "-")
        if report.final:
            pending.discard(report.edge)
    return results, sorted(pending)


def _report_of(group: str, deployment: str, topic: str, payload: bytes) -> DeployReport | None:
    """The DeployReport of `deployment` in a DEPLOY message of `group`, else None."""
    try:
        parts = parse_topic(topic)
    except WireError:
        return None
    if parts.kind != "DEPLOY" or parts.group != group:
        return None
    try:
        report = parse_report(payload)
    except ValueError as exc:
        log.warning("ignoring a malformed report from edge %s: %s", parts.edge, exc)
        return None
    if report.deployment != deployment:
        return None
    if report.edge != parts.edge:
        log.warning("ignoring a report on %s that names edge %s", topic, report.edge)
        return None
    return report
