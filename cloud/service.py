"""`sparsetel serve`: the decoder service, from MQTT frames to stored KPIs and predictions.

paho's network thread only enqueues (a bounded queue; it never blocks or raises); one worker
thread owns the store and takes each message through `FrameIngest`: topic -> frame ->
model (by the frame's model ref) -> decoded KPIs and predictions -> one transaction. Messages
are acknowledged (QoS 1, manual ack) once handled, so the broker holds back what the worker
has not taken yet. A bad message is logged (rate-limited), counted by reason and dropped; the
database drops repeats by the key (edge, bd_seq, seq). With a fixed `broker.client_id` the
MQTT session is persistent: frames published while the service is down wait at the broker.

Predictions need the last W measurements of an edge: the ingest keeps each edge's last W-1
count rows and continues them only across consecutive frames of one session (bd_seq).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import numpy as np
import paho.mqtt.client as mqtt
from numpy.lib.stride_tricks import sliding_window_view
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sparsetel.shared.config import BrokerConfig, load_config, parse_broker_url
from sparsetel.shared.errors import ConfigError, SparsetelError, WireError
from sparsetel.shared.state import parse_state
from sparsetel.shared.topics import (
    data_subscription,
    parse_topic,
    state_subscription,
    validate_id,
)
from sparsetel.shared.wire import Frame, decode_frame

from .registry import Decoder, ModelRegistry
from .store import FrameRow, MeasurementRow, Store, open_store

__all__ = [
    "DecoderService",
    "FrameIngest",
    "ServeConfig",
    "ServiceStats",
    "run_service",
    "serve_config_from_flags",
]

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 86_400  # MQTT 5 persistent session, when a client_id is configured


@dataclass(frozen=True)
class ServeConfig:
    """The decoder service. `models`: exported run directories; `db`: a path, sqlite:///
    or postgresql:// URL; `group`: one group id or "+" for all; `queue_size`: messages
    waiting for the worker (1..1e6); `stop_after_records`: stop once this many measurements
    are stored (demo, tests); `idle_timeout_s`: stop after this long without a message."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    group: str = "+"
    models: tuple[Path, ...] = ()
    db: str = "sparsetel.db"
    queue_size: int = 10_000
    stop_after_records: int | None = None
    idle_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.group != "+":
            try:
                validate_id(self.group)
            except ValueError as exc:
                raise ConfigError(f"must be '+' or an id: {exc}", key="group") from exc
        if not 1 <= self.queue_size <= 1_000_000:
            raise ConfigError("must be in 1..1000000", key="queue_size")
        if self.stop_after_records is not None and self.stop_after_records < 1:
            raise ConfigError("must be at least 1", key="stop_after_records")
        if self.idle_timeout_s is not None and not self.idle_timeout_s > 0:
            raise ConfigError("must be > 0 seconds", key="idle_timeout_s")
        if not self.db:
            raise ConfigError("must name a database", key="db")


class ServiceStats:
    """Thread-safe counters; `snapshot()` is JSON-able."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._rejects: Counter[str] = Counter()
        self._gaps: Counter[str] = Counter()
        self._started = time.monotonic()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            if name == "records_stored":
                self._lock.notify_all()

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejects[reason] += 1

    def gap(self, edge: str, missing: int) -> None:
        with self._lock:
            self._gaps[edge] += 1
            self._counts["missing_frames"] += missing

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def rejects(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejects)

    def wait_for(self, name: str, n: int, timeout: float | None) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._counts[name] >= n, timeout)

    def snapshot(self) -> dict[str, Any]:
        names = ("messages", "frames_ok", "records_stored", "duplicates", "predictions")
        more = ("births", "deaths", "stale_deaths", "missing_frames", "late_frames", "queue_full")
        with self._lock:
            out: dict[str, Any] = {n: self._counts[n] for n in (*names, *more)}
            out.update({k: v for k, v in self._counts.items() if k not in out})
            out["rejects"] = dict(sorted(self._rejects.items()))
            out["gaps"] = dict(sorted(self._gaps.items()))
            out["uptime_s"] = round(time.monotonic() - self._started, 3)
        return out


class _Throttle:
    """At most one log line per key and interval; says how many it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._held[key] += 1
            return
        self._next[key] = now + self.interval_s
        held, self._held[key] = self._held[key], 0
        if held:
            log.warning(msg + " (and %d more like it)", *args, held)
        else:
            log.warning(msg, *args)


@dataclass
class _Track:
    """Per edge: the prediction history of one session and the seqs seen per session."""

    bd_seq: int = -1
    model_ref: bytes = b""
    last_seq: int = -1
    rows: np.ndarray | None = None  # count rows (shape: [<= W-1, K])
    max_seq: dict[int, int] = field(default_factory=dict)  # bd_seq -> highest seq stored


class FrameIngest:
    """The worker's job, one message at a time, with no MQTT and no threads of its own.

    `handle` returns what happened: "stored", "duplicate", "birth", "death", "stale_death",
    "ignored", or the reason the message was rejected (a WireError reason such as
    "truncated", or "unknown_model", "model_mismatch", "state_mismatch", "decode_error",
    "store_error", "internal"). It never raises.
    """

    def __init__(self, registry: ModelRegistry, store: Store, stats: ServiceStats) -> None:
        self.registry = registry
        self.store = store
        self.stats = stats
        self._tracks: dict[str, _Track] = {}
        self._throttle = _Throttle()

    def handle(self, topic: str, payload: bytes, received_ms: int | None = None) -> str:
        now_ms = int(time.time() * 1000) if received_ms is None else received_ms
        try:
            parts = parse_topic(topic)
            kind = str(parts.kind).upper()
            if kind == "DATA":
                return self._data(parts.edge, bytes(payload), now_ms)
            if kind == "STATE":
                return self._state(parts.group, parts.edge, bytes(payload), now_ms)
            raise WireError(f"unexpected topic kind {kind}", reason="topic")
        except WireError as exc:
            return self._reject(exc.reason, "%s: %s", topic, exc)
        except Exception as exc:  # a bug must not stop the service: count it and go on
            log.debug("internal error on %s", topic, exc_info=True)
            return self._reject("internal", "internal error on %s: %r", topic, exc)

    def _reject(self, reason: str, msg: str, *args: object) -> str:
        self.stats.reject(reason)
        self._throttle.warning(reason, "rejected [" + reason + "] " + msg, *args)
        return reason

    def _data(self, edge: str, payload: bytes, now_ms: int) -> str:
        frame = decode_frame(payload)
        codec = self.registry.get(frame.model_ref)
        if codec is None:
            return self._reject("unknown_model", "%s: model %s", edge, frame.model_ref.hex())
        m = codec.manifest
        audit_ok = all(r.audit is None or len(r.audit) == m.D for r in frame.records)
        if (frame.L, frame.K) != (m.L, m.K) or not audit_ok:
            return self._reject(
                "model_mismatch", "%s: frame L=%s K=%s, model %s has L=%s K=%s D=%s",
                edge, frame.L, frame.K, frame.model_ref.hex(), m.L, m.K, m.D,
            )  # fmt: skip
        codes = [r.codes for r in frame.records]
        try:
            kpis = np.asarray(codec.decode(codes), dtype=np.float64)
            if kpis.shape != (len(codes), m.D):
                raise ValueError(f"decode returned shape {kpis.shape}")
        except Exception as exc:
            return self._reject("decode_error", "%s: %r", edge, exc)
        predictions, track = self._predict(edge, frame, codec)
        rows = [
            MeasurementRow(
                rec=i, t_ms=r.t_ms, nnz=len(r.codes), codes=r.codes,
                kpis=tuple(kpis[i].tolist()), prediction=predictions[i],
                predicted_t_ms=None if predictions[i] is None
                else r.t_ms + codec.horizon * frame.period_ms,
                audit=r.audit,
            )
            for i, r in enumerate(frame.records)
        ]  # fmt: skip
        row = FrameRow(
            edge, frame.bd_seq, frame.seq, frame.model_ref, len(rows), len(payload),
            frame.historical, now_ms,
        )  # fmt: skip
        try:
            stored = self.store.store_frame(row, rows)
        except Exception as exc:
            return self._reject("store_error", "%s seq %s: %r", edge, frame.seq, exc)
        if not stored:
            self.stats.add("duplicates")
            return "duplicate"
        self._tracks[edge] = track
        self._count_stored(edge, frame, sum(p is not None for p in predictions))
        return "stored"

    def _predict(
        self, edge: str, frame: Frame, codec: Decoder
    ) -> tuple[list[float | None], _Track]:
        """Predictions for the frame's records, and the edge's track if the frame is kept."""
        old = self._tracks.get(edge, _Track())
        track = _Track(frame.bd_seq, frame.model_ref, frame.seq, None, old.max_seq)
        n, w = len(frame.records), int(codec.window or 0)  # 0 or None: no predictor
        none: list[float | None] = [None] * n
        if w < 1:
            return none, track
        try:
            counts = np.asarray(codec.counts([r.codes for r in frame.records]), np.float32)
            follows = (old.bd_seq, old.model_ref, old.last_seq + 1) == (
                frame.bd_seq, frame.model_ref, frame.seq,
            )  # fmt: skip
            prefix = old.rows if follows and old.rows is not None else counts[:0]
            stacked = np.concatenate([prefix, counts])
            track.rows = stacked[len(stacked) - (w - 1) :] if w > 1 else stacked[:0]
            if len(stacked) < w:
                return none, track
            windows = sliding_window_view(stacked, w, axis=0).transpose(0, 2, 1)
            values = np.asarray(codec.predict(np.ascontiguousarray(windows)), np.float64)
        except Exception as exc:  # store the KPIs without predictions rather than lose them
            self._throttle.warning("prediction", "prediction failed for %s: %r", edge, exc)
            self.stats.add("prediction_errors")
            return none, track
        first = w - 1 - len(prefix)  # the first record whose window is complete
        out = none[:first] + [float(v) if math.isfinite(v) else None for v in values.ravel()]
        return out[:n], track

    def _count_stored(self, edge: str, frame: Frame, n_predictions: int) -> None:
        self.stats.add("frames_ok")
        self.stats.add("records_stored", len(frame.records))
        self.stats.add("predictions", n_predictions)
        seen = self._tracks[edge].max_seq
        top = seen.get(frame.bd_seq)
        if top is not None and frame.seq > top + 1:
            self.stats.gap(edge, frame.seq - top - 1)
        elif top is not None and frame.seq < top:
            self.stats.add("late_frames")
        seen[frame.bd_seq] = frame.seq if top is None else max(top, frame.seq)
        while len(seen) > 4:  # a few recent sessions are enough to place late frames
            del seen[min(seen)]

    def _state(self, group: str, edge: str, payload: bytes, now_ms: int) -> str:
        if not payload:  # a retained birth being cleared
            return "ignored"
        state = parse_state(payload)
        if (state.edge, state.group) != (edge, group):
            return self._reject(
                "state_mismatch", "topic %s/%s carries %s/%s", group, edge, state.group, state.edge
            )
        sha, birth = (
            (state.model_sha256 or None, json.loads(payload)) if state.online else (None, None)
        )
        try:
            applied = self.store.set_edge_state(
                group, edge, state.online, state.bd_seq, sha, birth, now_ms
            )
        except Exception as exc:
            return self._reject("store_error", "%s state: %r", edge, exc)
        if not state.online:
            self.stats.add("deaths" if applied else "stale_deaths")
            return "death" if applied else "stale_death"
        self.stats.add("births")
        if not self._knows(state.model_ref):
            self.stats.add("births_unknown_model")
            self._throttle.warning(
                "birth_model", "edge %s runs model %s, which this service has not loaded",
                edge, state.model_ref,
            )  # fmt: skip
        return "birth"

    def _knows(self, model_ref_hex: str) -> bool:
        try:
            return self.registry.get(bytes.fromhex(model_ref_hex)) is not None
        except (ValueError, TypeError):
            return False


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
        self.registry = registry if registry is not None else _load_registry(cfg.models)
        self._stats = ServiceStats()
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=cfg.queue_size)
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._halt = threading.Event()  # the worker drains the queue and ends
        self._done = threading.Event()  # a reason to stop came: stop_after, idle, signal
        self._done_reason = ""
        self._subscribed = threading.Event()
        self._connect_error = ""
        self._store_ready = threading.Event()
        self._store_error: BaseException | None = None
        self._last_message = time.monotonic()
        self._throttle = _Throttle()

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
        """Stop taking messages, store what was already taken, close the store."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self._halt.set()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout)
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
        ingest = FrameIngest(self.registry, store, self._stats)
        self._store_ready.set()
        try:
            while True:
                try:
                    msg = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._halt.is_set():
                        return
                    self._check_idle()
                    continue
                ingest.handle(msg.topic, msg.payload, msg.received_ms)
                self._ack(msg)
                limit = self.cfg.stop_after_records
                if limit is not None and self._stats.get("records_stored") >= limit:
                    self._finish(f"stored {limit} records")
        finally:
            store.close()

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
        group = self.cfg.group
        client.subscribe([(data_subscription(group), 1), (state_subscription(group), 1)])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            self._connect_error = f"subscription refused ({', '.join(refused)}): check the ACL"
            log.error("broker refused the subscriptions: %s", refused)
            return
        log.info("subscribed to %s and %s", data_subscription(self.cfg.group),
                 state_subscription(self.cfg.group))  # fmt: skip
        self._subscribed.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._subscribed.clear()
        if rc.is_failure:
            self._stats.add("disconnects")
            log.warning("lost the broker (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if not self.submit(msg.topic, msg.payload, msg.mid, msg.qos):
                client.ack(msg.mid, msg.qos)  # dropped for good: do not wedge the broker
        except Exception as exc:  # a callback must never raise into paho's loop
            self._stats.reject("internal")
            self._throttle.warning("on_message", "cannot queue a message: %r", exc)


def _load_registry(models: tuple[Path, ...]) -> ModelRegistry:
    registry = ModelRegistry()
    for run_dir in models:
        registry.add_run(run_dir)
    if not models:
        log.warning("no model loaded: every frame will be rejected as unknown_model")
    return registry


def serve_config_from_flags(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of ``sparsetel serve``: defaults < ``--config`` TOML < environment
    (broker credentials) < flags (None: not given). ConfigError names the offending key."""
    models = getattr(args, "model", None)
    overrides = {
        "models": [str(m) for m in models] if models else None,
        "group": getattr(args, "group", None),
        "db": getattr(args, "db", None),
        "stop_after_records": getattr(args, "stop_after", None),
        "idle_timeout_s": getattr(args, "idle_timeout", None),
        "broker": {"url": getattr(args, "broker", None)},
    }
    cfg: ServeConfig = load_config(
        ServeConfig, getattr(args, "config", None), "SPARSETEL_", overrides
    )
    return cfg


@contextmanager
def _signals_call(callback: Callable[[], None]) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM call `callback` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signum)
        callback()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_service(cfg: ServeConfig, print_json: bool = True) -> int:
    """`sparsetel serve`: run until SIGINT/SIGTERM, `stop_after_records` or the idle timeout;
    then print the stats on stdout, as one JSON object when `print_json` (nothing else goes to
    stdout), else as one summary line. 0 on a clean stop, 1 when it cannot start or the idle
    timeout came before `stop_after_records` were stored."""
    try:
        service = DecoderService(cfg)
        with _signals_call(service.request_stop):
            service.start()
            try:
                while not service.wait(0.5):
                    pass
            finally:
                service.stop()
    except (SparsetelError, OSError, ValueError, RuntimeError) as exc:
        log.debug("start failed", exc_info=True)
        log.error("cannot start the decoder service: %s", exc)
        return 1
    stats = service.stats()
    if print_json:
        print(json.dumps(stats, sort_keys=True), flush=True)
    else:
        print(
            f"sparsetel serve: stored {stats['records_stored']} measurements in "
            f"{stats['frames_ok']} frames; {stats['duplicates']} duplicates, "
            f"rejects {stats['rejects'] or 0}, gaps {stats['gaps'] or 0}",
            flush=True,
        )
    short = cfg.stop_after_records is not None and stats["records_stored"] < cfg.stop_after_records
    return 1 if short and stats["stopped_because"] != "requested" else 0
