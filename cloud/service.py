"""`sparsetel serve`: the decoder service, from MQTT frames to stored KPIs and predictions.

paho's network thread only enqueues (a bounded queue; it never blocks or raises); one worker
thread owns the store and takes each message through `FrameIngest` (see `ingest`). Messages
are acknowledged (QoS 1, manual ack) once handled, so the broker holds back what the worker
has not taken yet. With a fixed `broker.client_id` the MQTT session is persistent: frames
published while the service is down wait at the broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sparsetel.shared.config import BrokerConfig, load_config, parse_broker_url
from sparsetel.shared.errors import ConfigError, SparsetelError
from sparsetel.shared.signals import stop_on_signals
from sparsetel.shared.topics import (
    data_subscription,
    health_subscription,
    shared_subscription,
    state_subscription,
    validate_id,
)

from .deadletter import COPY_BURST, COPY_RATE, TokenBucket, dead_letter
from .ingest import ACCEPTED, FrameIngest, ServiceStats, Throttle
from .registry import ModelRegistry
from .store import Store, open_store

__all__ = ["DecoderService", "ServeConfig", "run_service", "serve_config_from_flags"]

log = logging.getLogger(__name__)

BATCH_MAX = 64  # messages stored in one transaction at most (those already waiting)
SESSION_EXPIRY_S = 86_400  # MQTT 5 persistent session, when a client_id is configured


@dataclass(frozen=True)
class ServeConfig:
    """The decoder service. `models`: exported run directories; `models_dir`: a folder of
    run directories searched for the model of a frame no loaded model decodes (its frames
    are parked meanwhile, see `cloud.ingest`); `db`: a path, sqlite:///
    or postgresql:// URL; `group`: one group id or "+" for all; `queue_size`: messages
    waiting for the worker (1..1e6); `stop_after_records`: stop once this many measurements
    are stored (demo, tests); `idle_timeout_s`: stop after this long without a message;
    `shared`: take DATA through the MQTT 5 shared subscription ``$share/decoders/...``, so
    several services (processes, hosts) split the frames while each sees every STATE;
    `workers`: run that many shared services as processes (`cloud.workers`)."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    group: str = "+"
    models: tuple[Path, ...] = ()
    models_dir: Path | None = None
    db: str = "sparsetel.db"
    queue_size: int = 10_000
    stop_after_records: int | None = None
    idle_timeout_s: float | None = None
    flood_frames_per_s: float = 5000.0
    shared: bool = False
    workers: int = 1

    def __post_init__(self) -> None:
        if self.group != "+":
            try:
                validate_id(self.group)
            except ValueError as exc:
                raise ConfigError(f"must be '+' or an id: {exc}", key="group") from exc
        if not 1 <= self.queue_size <= 1_000_000:
            raise ConfigError("must be in 1..1000000", key="queue_size")
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


class _Message(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ms: int


class DecoderService:
    """The service in-process: `start()`, then `wait()` / `wait_for_records()`, `stop()`.

    `start()` connects and subscribes (raising SparsetelError with a one-line reason when it
    cannot), then opens the store in the worker thread, which owns it: the database file
    appears once the service is subscribed. With ``start(connect=False)`` nothing touches
    MQTT and messages come only from `submit()`.
    """

    def __init__(self, cfg: ServeConfig, registry: ModelRegistry | None = None) -> None:
        self.cfg = cfg
        if registry is None:
            registry = _load_registry(cfg.models, cfg.models_dir)
        self.registry = registry
        self._stats = ServiceStats()
        self._copies = TokenBucket(COPY_RATE, COPY_BURST)  # dead letters per edge
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=cfg.queue_size)
        self._client: mqtt.Client | None = None
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
        if connect:
            self._connect(timeout)
        self._worker = threading.Thread(target=self._work, name="sparsetel-decoder")
        self._worker.start()
        self._store_ready.wait()
        if self._store_error is not None:
            self.stop()
            raise SparsetelError(f"cannot open store {self.cfg.db}: {self._store_error}")
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
            self._client = None
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
        out["queue_depth"] = self._queue.qsize()
        out["models"] = [ref.hex() for ref in self.registry.refs()]
        if self._store_gaps is not None:
            out["gaps"] = self._store_gaps
        out["stopped_because"] = self._done_reason or None
        return out

    def _finish(self, reason: str) -> None:
        if not self._done.is_set():
            self._done_reason = reason
            log.info("decoder service: %s", reason)
            self._done.set()

    # -- messages ---------------------------------------------------------------------------

    def submit(self, topic: str, payload: bytes | bytearray, mid: int = 0, qos: int = 0) -> bool:
        """Queue one message for the worker (what on_message does); False when the queue is
        full, in which case it is counted and dropped."""
        self._last_message = time.monotonic()
        self._stats.add("messages")
        try:
            now_ms = int(time.time() * 1000)
            self._queue.put_nowait(_Message(topic, bytes(payload), mid, qos, now_ms))
            return True
        except queue.Full:
            self._stats.add("queue_full")
            self._throttle.warning(
                "queue_full", "queue full (%d): message dropped", self.cfg.queue_size
            )
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
        ingest = FrameIngest(self.registry, store, self._stats, flood, not self.cfg.shared)
        self._store_ready.set()
        try:
            while True:
                try:
                    batch = [self._queue.get(timeout=0.2)]
                except queue.Empty:
                    if self._halt.is_set():
                        return
                    self._check_idle()
                    continue
                batch += self._more(BATCH_MAX - 1)
                outcomes = ingest.handle_batch([(m.topic, m.payload, m.received_ms) for m in batch])
                self._stats.add("receipts", ingest.receipts.publish(self._client))
                for msg, outcome in zip(batch, outcomes, strict=True):
                    if outcome not in ACCEPTED:
                        self._dead_letter(msg, outcome)
                    self._ack(msg)  # only now: what was taken is committed
                limit = self.cfg.stop_after_records
                if limit is not None and self._stats.get("records_stored") >= limit:
                    self._finish(f"stored {limit} records")
        finally:
            if self.cfg.shared:
                self._store_gaps = _gaps_or_none(store)
            store.close()

    def _more(self, n: int) -> list[_Message]:
        """Up to `n` more messages that are already waiting (never waits)."""
        out: list[_Message] = []
        while len(out) < n:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return out

    def _dead_letter(self, msg: _Message, reason: str) -> None:
        """Copy a rejected message to its DEAD topic (rate-limited per edge)."""
        topic, body = dead_letter(msg.topic, msg.payload, reason, msg.received_ms)
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

    def _ack(self, msg: _Message) -> None:
        client = self._client
        if client is not None and msg.qos > 0:
            client.ack(msg.mid, msg.qos)  # a lost connection is fine: the broker resends

    # -- MQTT (paho's thread) ---------------------------------------------------------------

    def _connect(self, timeout: float) -> None:
        b = self.cfg.broker
        tls, host, port = parse_broker_url(b.url)
        persistent = b.client_id is not None  # a fixed id keeps its session and queued frames
        client_id = b.client_id or f"sparsetel-serve-{uuid.uuid4().hex[:12]}"
        v5 = b.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
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
        if v5:
            v5_args["clean_start"] = not persistent
            if persistent:
                v5_args["properties"] = props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            client.connect(host, port, keepalive=b.keepalive, **v5_args)
        except (OSError, ValueError) as exc:
            raise SparsetelError(f"cannot connect to broker {b.url}: {exc}") from exc
        self._client = client
        client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.05) and not self._done.is_set():
            if self._connect_error or time.monotonic() > deadline:
                self.stop()
                reason = self._connect_error or f"not subscribed within {timeout} s"
                raise SparsetelError(f"broker {b.url}: {reason}")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self._connect_error = f"connection refused: {rc}"
            log.warning("broker refused the connection: %s", rc)
            return
        self._stats.add("connects")
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
        self._subscribed.clear()
        if rc.is_failure:
            self._stats.add("disconnects")
            log.warning("lost the broker (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if self._closing.is_set():
                return  # stopping: not taken, not acknowledged, so delivered again later
            if not self.submit(msg.topic, msg.payload, msg.mid, msg.qos):
                client.ack(msg.mid, msg.qos)  # dropped for good: do not wedge the broker
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
        "broker": {
            "url": getattr(args, "broker", None),
            "protocol": "5" if getattr(args, "shared", False) else None,
        },
    }
    cfg: ServeConfig = load_config(
        ServeConfig, getattr(args, "config", None), "SPARSETEL_", overrides
    )
    return cfg


def run_service(cfg: ServeConfig, print_json: bool = True) -> int:
    """`sparsetel serve`: run until SIGINT/SIGTERM, `stop_after_records` or the idle timeout;
    then print the stats on stdout, as one JSON object when `print_json` (nothing else goes to
    stdout), else as one summary line. 0 on a clean stop, 1 when it cannot start or the idle
    timeout came before `stop_after_records` were stored. With `workers` > 1, the workers of
    `cloud.workers` do the work."""
    if cfg.workers > 1:
        from .workers import run_workers

        return run_workers(cfg, print_json)
    code, stats = run_service_stats(cfg)
    if not stats:
        return code
    if print_json:
        print(json.dumps(stats, sort_keys=True), flush=True)
    else:
        print(
            f"sparsetel serve: stored {stats['records_stored']} measurements in "
            f"{stats['frames_ok']} frames; {stats['duplicates']} duplicates, "
            f"rejects {stats['rejects'] or 0}, gaps {stats['gaps'] or 0}",
            flush=True,
        )
    return code


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
    return (1 if short and stats["stopped_because"] != "requested" else 0), stats
