"""`sparsetel serve`: the decoder service, from MQTT frames to stored KPIs and predictions.

paho's network thread only queues (`inbox.Inbox`, bounded in messages and bytes; it never
raises); one worker thread owns the store and takes each message through `FrameIngest` (see
`ingest`). A QoS 1 message is acknowledged (manual ack) only once committed, never because it
could not be queued: when the queue is full the network thread waits for room, paho stops
reading the socket and TCP holds the broker back. MQTT 5's Receive Maximum (the queue's
size) bounds what the broker sends ahead; over 3.1.1 Mosquitto's ``max_inflight_messages``
plays that role, but Mosquitto 2.0.11 keeps to it only until acknowledgements flow (18,867
unacknowledged messages reached a slow client under ``max_inflight_messages 100``), so the
wait is what holds. A payload larger than any valid one of its kind is rejected before it
is queued. The session is persistent and its
client id stable (`session`): frames published while the service is down wait at the
broker. ``metrics``: the counters as Prometheus metrics while it runs (`servemetrics`).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ...shared.config import BrokerConfig, load_config, parse_broker_url
from ...shared.errors import ConfigError, SparsetelError
from ...shared.signals import stop_on_signals
from ...shared.topics import (
    data_subscription,
    health_subscription,
    shared_subscription,
    state_subscription,
    validate_id,
)
from ..store.database import Store, open_store
from ..webserver import WebServer
from .deadletter import COPY_BURST, COPY_RATE, TokenBucket, dead_letter
from .handler import ACCEPTED, FrameIngest, IngestLimits, ServiceStats, Throttle
from .inbox import Acknowledger, Inbox, Message, payload_limit
from .mqttsession import MAX_RECEIVE_MAXIMUM, TakeoverWatch, connect_properties, serve_client_id
from .registry import ModelRegistry
from .servemetrics import parse_listen, serve_metrics

__all__ = ["DecoderService", "ServeConfig", "run_service_stats", "serve_config_from_flags"]

log = logging.getLogger(__name__)

BATCH_MAX = 64  # messages stored in one transaction at most (those already waiting)
PUT_WAIT_S = 0.2  # the network thread looks whether the service is stopping this often


@dataclass(frozen=True)
class ServeConfig:
    """The decoder service. `models`: exported run directories; `models_dir`: a folder of
    run directories searched for the model of a frame no loaded model decodes (its frames
    are parked meanwhile, see `cloud.ingest.handler`); `db`: a path, sqlite:///
    or postgresql:// URL; `group`: one group id or "+" for all; `queue_size` and
    `queue_bytes`: messages, and their bytes, waiting for the worker (1..1e6; 1 MiB..16 GiB;
    MQTT 5's Receive Maximum is `queue_size`, at most 65535); `stop_after_records`: stop once
    this many measurements are stored (demo, tests); `idle_timeout_s`: stop after this long
    without a message; `shared`: take DATA through the MQTT 5 shared subscription
    ``$share/decoders/...``, so several services (processes, hosts) split the frames while
    each sees every STATE; `workers`: run that many shared services as processes
    (`cloud.ingest.workers`); `clean_session`: a throwaway MQTT session with a random client id
    (tools), instead of the persistent one of a stable id (`session`); `metrics`:
    ``HOST:PORT`` to serve the counters on as Prometheus metrics (worker i of `workers`: PORT+i);
    `limits`: what senders can make the ingest keep (``[limits]``, `cloud.ingest.limits`)."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    group: str = "+"
    models: tuple[Path, ...] = ()
    models_dir: Path | None = None
    db: str = "sparsetel.db"
    queue_size: int = 10_000
    queue_bytes: int = 64 * 1024 * 1024
    stop_after_records: int | None = None
    idle_timeout_s: float | None = None
    flood_frames_per_s: float = 5000.0
    shared: bool = False
    workers: int = 1
    clean_session: bool = False
    metrics: str | None = None
    limits: IngestLimits = field(default_factory=IngestLimits)

    def __post_init__(self) -> None:
        if self.group != "+":
            try:
                validate_id(self.group)
            except ValueError as exc:
                raise ConfigError(f"must be '+' or an id: {exc}", key="group") from exc
        if not 1 <= self.queue_size <= 1_000_000:
            raise ConfigError("must be in 1..1000000", key="queue_size")
        if not 2**20 <= self.queue_bytes <= 2**34:
            raise ConfigError("must be in 1 MiB..16 GiB (bytes)", key="queue_bytes")
        if self.metrics is not None:
            _, port = parse_listen(self.metrics)
            if port and port + self.workers - 1 > 65535:
                raise ConfigError("worker i serves on PORT+i: PORT is too high", key="metrics")
        if not self.flood_frames_per_s > 0:
            raise ConfigError("must be > 0", key="flood_frames_per_s")
        if not 1 <= self.workers <= 64:
            raise ConfigError("must be in 1..64", key="workers")
        if self.shared and self.broker.protocol != "5":
            raise ConfigError(
                "a shared subscription needs MQTT 5 (broker.protocol = '5')", "shared"
            )
        if self.stop_after_records is not None and self.stop_after_records < 1:
            raise ConfigError("must be at least 1", key="stop_after_records")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise ConfigError("must be > 0 seconds", key="idle_timeout_s")
        if not self.db:
            raise ConfigError("must name a database", key="db")


class DecoderService:
    """The service in-process: `start()`, then `wait()` / `wait_for_records()`, `stop()`.

    `start()` connects, opens the store in the worker thread, which owns it (the database
    file appears once the broker answered), and waits until subscribed, raising
    SparsetelError with a one-line reason when it cannot. With ``start(connect=False)``
    nothing touches MQTT and messages come only from `submit()`.
    """

    def __init__(self, cfg: ServeConfig, registry: ModelRegistry | None = None) -> None:
        self.cfg = cfg
        if registry is None:
            registry = _load_registry(cfg.models, cfg.models_dir)
        self.registry = registry
        self._stats = ServiceStats()
        self._copies = TokenBucket(COPY_RATE, COPY_BURST)  # dead letters per edge
        self._inbox = Inbox(cfg.queue_size, cfg.queue_bytes)
        self._acks = Acknowledger()
        self._takeovers = TakeoverWatch()
        self._client: mqtt.Client | None = None
        self._client_id = ""
        self._metrics: WebServer | None = None
        self._worker: threading.Thread | None = None
        self._halt = threading.Event()  # the worker drains the queue and ends
        self._closing = threading.Event()  # stop() began: take no new message
        self._done = threading.Event()  # a reason to stop came: stop_after, idle, signal
        self._done_reason = ""
        self._subscribed = threading.Event()
        self._connect_error = ""
        self._store_ready = threading.Event()
        self._store_error: BaseException | None = None
        self._last_message = time.monotonic()
        self._throttle = Throttle(log)
        data = data_subscription(cfg.group)
        self._data_filter = shared_subscription(data) if cfg.shared else data
        health = health_subscription(cfg.group)
        self._health_filter = shared_subscription(health) if cfg.shared else health
        self._store_gaps: dict[str, int] | None = None  # shared: read from the store at stop

    # -- life cycle -------------------------------------------------------------------------

    def start(self, connect: bool = True, timeout: float = 30.0) -> None:
        if self._worker is not None:
            raise RuntimeError("the service was already started")
        self._last_message = time.monotonic()
        try:
            if self.cfg.metrics is not None:
                self._serve_metrics(self.cfg.metrics)
            if connect:
                self._connect()
            # The worker runs before the subscription is confirmed: a kept session delivers
            # its backlog first, and a full queue holds paho's thread until the worker takes.
            self._worker = threading.Thread(target=self._work, name="sparsetel-decoder")
            self._worker.start()
            self._store_ready.wait()
            if self._store_error is not None:
                raise SparsetelError(f"cannot open store {self.cfg.db}: {self._store_error}")
            if connect:
                self._wait_until_subscribed(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("decoder service running: %d model(s), store %s", len(self.registry), self.cfg.db)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, store and acknowledge what was already taken, disconnect,
        close the store. Messages arriving meanwhile are left unacknowledged: the broker
        hands them to the next session (a persistent one, or another shared worker)."""
        self._closing.set()
        self._halt.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = self._acks.client = None
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        self._finish("stopped")

    def request_stop(self) -> None:
        """Ask `wait()` to return (signal handlers call this); `stop()` does the stopping."""
        self._finish("requested")

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop condition was met (stop_after_records, idle timeout, request)."""
        return self._done.wait(timeout)

    def wait_until_subscribed(self, timeout: float | None = None) -> bool:
        """True once subscribed (again, after a reconnect) to DATA and STATE."""
        return self._subscribed.wait(timeout)

    def wait_for_records(self, n: int, timeout: float | None = None) -> bool:
        """True once at least `n` measurements are stored; False after `timeout` seconds."""
        return self._stats.wait_for("records_stored", n, timeout)

    def stats(self) -> dict[str, Any]:
        out = self._stats.snapshot()
        out["queue_depth"], out["queue_bytes"] = len(self._inbox), self._inbox.nbytes
        out["queue_capacity"], out["queue_capacity_bytes"] = (
            self.cfg.queue_size,
            self.cfg.queue_bytes,
        )
        out["connected"] = int(self._subscribed.is_set())
        out["client_id"] = self._client_id or None
        out["models"] = [ref.hex() for ref in self.registry.refs()]
        if self._store_gaps is not None:
            out["gaps"] = self._store_gaps
        out["stopped_because"] = self._done_reason or None
        return out

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics are served on (None without `metrics`)."""
        return self._metrics.port if self._metrics is not None else None

    def _serve_metrics(self, listen: str) -> None:
        try:
            self._metrics = serve_metrics(self.stats, listen)
        except OSError as exc:
            raise SparsetelError(f"cannot serve metrics on {listen}: {exc}") from exc
        log.info("serving metrics on http://%s:%d/metrics", listen.rsplit(":", 1)[0],
                 self._metrics.port)  # fmt: skip

    def _finish(self, reason: str) -> None:
        if not self._done.is_set():
            self._done_reason = reason
            log.info("decoder service: %s", reason)
            self._done.set()

    # -- messages ---------------------------------------------------------------------------

    def submit(self, topic: str, payload: bytes | bytearray, mid: int = 0, qos: int = 0) -> bool:
        """Queue one message for the worker, as on_message does. A payload larger than any
        valid one of its topic kind is rejected here ("too_large"; its dead letter queued in
        its place, so it is acknowledged in turn). When the queue is full, a QoS 0 message is
        dropped and counted ("queue_full"); a QoS 1 message waits for room until the service
        stops. False when it was not queued: then it is never acknowledged."""
        self._last_message = time.monotonic()
        self._stats.add("messages")
        msg = self._message(topic, payload, mid, qos)
        if self._inbox.put(msg, timeout=0):
            return True
        if qos == 0:
            self._stats.add("queue_full")
            self._throttle.warning("queue_full", "queue full: QoS 0 message on %s dropped", topic)
            return False
        return self._wait_for_room(msg)

    def _message(self, topic: str, payload: bytes | bytearray, mid: int, qos: int) -> Message:
        now_ms = int(time.time() * 1000)
        conn = self._acks.current
        limit = payload_limit(topic)
        if len(payload) <= limit:
            return Message(topic, bytes(payload), mid, qos, now_ms, conn)
        self._stats.reject("too_large")
        self._throttle.warning(
            "too_large", "%s: payload of %d bytes > %d: rejected", topic, len(payload), limit
        )
        dead = dead_letter(topic, bytes(payload), "too_large", now_ms)  # a truncated copy
        return Message(topic, b"", mid, qos, now_ms, conn, dead)

    def _wait_for_room(self, msg: Message) -> bool:
        """Back-pressure: paho's thread waits here, so it reads no more from the broker."""
        self._stats.add("queue_waits")
        started = time.monotonic()
        while not self._closing.is_set():
            if self._inbox.put(msg, PUT_WAIT_S):
                self._stats.add("queue_wait_ms", int(1000 * (time.monotonic() - started)))
                return True
        return False

    def _work(self) -> None:
        try:
            store = open_store(self.cfg.db)
        except Exception as exc:  # start() reports it
            self._store_error = exc
            self._store_ready.set()
            return
        rate = self.cfg.flood_frames_per_s
        flood = TokenBucket(rate, 5 * rate)
        # Shared: this worker sees only some of an edge's frames, so gaps come from the store.
        ingest = FrameIngest(
            self.registry, store, self._stats, flood, not self.cfg.shared, limits=self.cfg.limits
        )
        self._store_ready.set()
        try:
            self._drain(ingest)
        except Exception as exc:  # the network thread would wait for room forever
            log.exception("the decoder worker failed")
            self._finish(f"worker failed: {exc!r}")
        finally:
            if self.cfg.shared:
                self._store_gaps = _gaps_or_none(store)
            store.close()

    def _drain(self, ingest: FrameIngest) -> None:
        """Take batches off the inbox until halted and empty; acknowledge each message once
        its batch is committed."""
        while True:
            first = self._inbox.get(timeout=0.2)
            if first is None:
                if self._halt.is_set():
                    return
                self._check_idle()
                continue
            batch = [first, *self._inbox.take(BATCH_MAX - 1)]
            todo = [(m.topic, m.payload, m.received_ms) for m in batch if m.dead is None]
            done = iter(ingest.handle_batch(todo) if todo else [])
            outcomes = [next(done) if m.dead is None else "too_large" for m in batch]
            self._stats.add("receipts", ingest.receipts.publish(self._client))
            for msg, outcome in zip(batch, outcomes, strict=True):
                if outcome not in ACCEPTED:
                    self._dead_letter(msg, outcome)
                self._ack(msg)  # only now: what was taken is committed
            limit = self.cfg.stop_after_records
            if limit is not None and self._stats.get("records_stored") >= limit:
                self._finish(f"stored {limit} records")

    def _dead_letter(self, msg: Message, reason: str) -> None:
        """Copy a rejected message to its DEAD topic (rate-limited per edge)."""
        topic, body = msg.dead or dead_letter(msg.topic, msg.payload, reason, msg.received_ms)
        if not self._copies.allow(topic):
            self._stats.add("dead_letters_held")
            return
        client = self._client
        if client is not None:
            client.publish(topic, body, qos=1)
        self._stats.add("dead_letters")

    def _check_idle(self) -> None:
        idle = self.cfg.idle_timeout_s
        if idle is not None and time.monotonic() - self._last_message > idle:
            self._finish(f"no message for {idle} s")

    def _ack(self, msg: Message) -> None:
        acked = self._acks.ack(msg)  # not on a later connection: the broker resends it
        if acked is not None:
            self._stats.add("acks" if acked else "acks_stale")

    # -- MQTT (paho's thread) ---------------------------------------------------------------

    def _connect(self) -> None:
        b = self.cfg.broker
        tls, host, port = parse_broker_url(b.url)
        persistent = not self.cfg.clean_session  # the broker keeps what comes while we are away
        self._client_id = serve_client_id(
            b.client_id,
            self.cfg.group,
            clean_session=self.cfg.clean_session,
            shared=self.cfg.shared,
        )
        v5 = b.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=None if v5 else not persistent,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if tls:
            client.tls_set(ca_certs=str(b.tls_ca) if b.tls_ca else None)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        v5_args: dict[str, Any] = {}
        if v5:  # the broker sends at most a queue's worth ahead of our acks
            v5_args["clean_start"] = not persistent
            window = min(self.cfg.queue_size, MAX_RECEIVE_MAXIMUM)
            v5_args["properties"] = connect_properties(persistent, window)
        try:
            client.connect(host, port, keepalive=b.keepalive, **v5_args)
        except (OSError, ValueError) as exc:
            raise SparsetelError(f"cannot connect to broker {b.url}: {exc}") from exc
        self._client = self._acks.client = client
        client.loop_start()

    def _wait_until_subscribed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.05) and not self._done.is_set():
            if self._connect_error or time.monotonic() > deadline:
                reason = self._connect_error or f"not subscribed within {timeout} s"
                raise SparsetelError(f"broker {self.cfg.broker.url}: {reason}")

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._connect_error = f"connection refused: {rc}"
            log.warning("broker refused the connection: %s", rc)
            return
        self._acks.connection_changed()
        self._takeovers.connected()
        self._stats.add("connects")
        log.info("connected as %s (session kept by the broker: %s)", self._client_id,
                 bool(getattr(flags, "session_present", False)))  # fmt: skip
        client.subscribe(
            [
                (self._data_filter, 1),
                (state_subscription(self.cfg.group), 1),
                (self._health_filter, 0),
            ]
        )

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            self._connect_error = f"subscription refused ({', '.join(refused)}): check the ACL"
            log.error("broker refused the subscriptions: %s", refused)
            return
        log.info("subscribed to %s and %s", self._data_filter,
                 state_subscription(self.cfg.group))  # fmt: skip
        self._subscribed.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._acks.connection_changed()  # what came on that connection is not acked on the next
        self._subscribed.clear()
        if not rc.is_failure:
            return
        self._stats.add("disconnects")
        log.warning("lost the broker (%s); paho reconnects", rc)
        before = self._takeovers.total
        if self._takeovers.lost(getattr(rc, "value", None)):
            log.error(
                "client id %s: another client took this session over %d times within %.0f s: "
                "two services with one id take frames from each other; give each its own "
                "broker.client_id (or run them as one serve --workers N)",
                self._client_id, self._takeovers.times, self._takeovers.window_s,
            )  # fmt: skip
        self._stats.add("takeovers", self._takeovers.total - before)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if self._closing.is_set():
                return  # stopping: not taken, not acknowledged, so delivered again later
            self.submit(msg.topic, msg.payload, msg.mid, msg.qos)  # waits while the queue is full
        except Exception as exc:  # a callback must never raise into paho's loop
            self._stats.reject("internal")
            self._throttle.warning("on_message", "cannot queue a message: %r", exc)


def _gaps_or_none(store: Store) -> dict[str, int] | None:
    try:
        return store.sequence_gaps()
    except Exception as exc:
        log.warning("cannot count sequence gaps: %r", exc)
        return None


def _load_registry(models: tuple[Path, ...], models_dir: Path | None) -> ModelRegistry:
    registry = ModelRegistry(models_dir=models_dir)
    for run_dir in models:
        registry.add_run(run_dir)
    if not models and models_dir is None:
        log.warning("no model loaded: frames are parked until their model is registered")
    return registry


def serve_config_from_flags(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of ``sparsetel serve``: defaults < ``--config`` TOML < environment
    (broker credentials) < flags (None: not given). ConfigError names the offending key."""
    models = getattr(args, "model", None)
    overrides = {
        "models": [str(m) for m in models] if models else None,
        "models_dir": getattr(args, "models_dir", None),
        "group": getattr(args, "group", None),
        "db": getattr(args, "db", None),
        "stop_after_records": getattr(args, "stop_after", None),
        "idle_timeout_s": getattr(args, "idle_timeout", None),
        "workers": getattr(args, "workers", None),
        "shared": True if getattr(args, "shared", False) else None,
        "clean_session": True if getattr(args, "clean_session", False) else None,
        "metrics": getattr(args, "metrics", None),
        "broker": {
            "url": getattr(args, "broker", None),
            "protocol": "5" if getattr(args, "shared", False) else None,
        },
    }
    cfg: ServeConfig = load_config(
        ServeConfig, getattr(args, "config", None), "SPARSETEL_", overrides
    )
    return cfg


def run_service_stats(cfg: ServeConfig) -> tuple[int, dict[str, Any]]:
    """One service, run as `run_service` says; (exit code, its stats; empty if it could not
    start)."""
    try:
        service = DecoderService(cfg)
        with stop_on_signals(service.request_stop):
            service.start()
            try:
                while not service.wait(0.5):
                    pass
            finally:
                service.stop()
    except (SparsetelError, OSError, ValueError, RuntimeError) as exc:
        log.debug("start failed", exc_info=True)
        log.error("cannot start the decoder service: %s", exc)
        return 1, {}
    stats = service.stats()
    short = cfg.stop_after_records is not None and stats["records_stored"] < cfg.stop_after_records
    failed = str(stats["stopped_because"]).startswith("worker failed")
    return (1 if failed or (short and stats["stopped_because"] != "requested") else 0), stats
