"""The edge agent: measure, encode, frame, publish; from start-up checks to a clean death.

`run_agent(cfg)` is what ``sparsetel edge`` runs. It fails fast, with a one-line reason,
before touching the network: ids are checked, the encoder's sha256, self-test and KPI schema
are verified, the source is opened, and bdSeq (``state_dir/bdseq``) is incremented and
persisted, so every run has a new bdSeq even after a crash. Then it connects (a broker that
does not answer within `connect_timeout_s` is retried in the background while the agent
measures into its spool; one that refuses it is fatal) and loops:
gather up to `batch` measurements (or `max_batch_delay_s` after the first), encode them in
one onnxruntime call, publish one frame, seq 0, 1, 2, ... within the bdSeq. At the end of
the source, or on SIGTERM/SIGINT, it flushes the partial batch, waits (bounded) for the
broker's acknowledgements, publishes the death and disconnects.

Every frame goes to the on-disk spool (``state_dir/spool.db``, `edge.spool`) before it is
published and leaves it when the broker acknowledges it. Frames an earlier run left there
(broker away, agent killed) are published first, in order, flagged historical, under their
own bdSeq and seq, so the cloud stores each once.

A heartbeat thread publishes the agent's health on HEALTH every `health_interval_s` (JSON:
uptime, model, measurements, frames sent and acknowledged, rejects, spool depth and drops,
encode latency per measurement since the last heartbeat).

Model updates (`edge.updater`): NCMD ``deploy`` and ``rollback`` go to an updater thread that
fetches and checks a signed bundle and stages the encoder; the frame loop switches to it
between two frames, publishes a fresh birth, and falls back to the previous encoder,
re-encoding the batch, if the new one fails within its first `probation_frames` frames.

A reader thread iterates the source into a bounded queue, so a blocking source (stdin) never
holds back a due frame or a stop. The settings are in `edge.config`, bdSeq and the state-dir
lock in `edge.state`, the sources in `edge.source` and `edge.replay`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sparsetel import __version__
from sparsetel.shared.errors import ConfigError, ModelMismatchError, SparsetelError, WireError
from sparsetel.shared.kpi import parse_sentinels
from sparsetel.shared.signals import stop_on_signals
from sparsetel.shared.state import birth_payload, death_payload, state_from_manifest
from sparsetel.shared.topics import validate_id
from sparsetel.shared.wire import Frame, Record, encode_frame

from .config import EdgeConfig
from .encoder import OnnxEncoder
from .publisher import Publisher
from .replay import open_source
from .source import Measurement
from .spool import Spool, SpoolError, SpoolLimits, as_historical
from .state import lock_state_dir, next_bd_seq
from .updater import ActiveModels, ModelStore, Staged, Updater, load_trust_key

__all__ = ["AgentStats", "EdgeConfig", "run_agent"]

log = logging.getLogger(__name__)

_U32 = 2**32 - 1
_END = object()  # the reader's last item: the source is exhausted
_POLL_S = 0.1  # how often a waiting agent looks at its stop flag
SPOOL_FILE = "spool.db"


@dataclass
class AgentStats:
    """The agent's counters, printed as JSON by ``sparsetel edge --json``."""

    measurements: int = 0
    frames: int = 0
    bytes_sent: int = 0
    acked: int = 0
    failed: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    cells: Counter[str] = field(default_factory=Counter)
    bd_seq: int | None = None
    next_seq: int = 0
    connects: int = 0
    replayed: int = 0
    deferred: int = 0
    resent: int = 0
    spool_depth: int = 0
    spool_dropped: int = 0
    switches: int = 0
    rollbacks: int = 0
    resumed_at: int | None = None
    model_sha256: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["rejects"] = dict(self.rejects)
        data["cells"] = dict(self.cells)
        return data


class _Agent:
    """One run: the checked encoder and source, a bdSeq, a publisher, and the frame loop."""

    def __init__(self, cfg: EdgeConfig, stats: AgentStats, stdin: IO[bytes] | None) -> None:
        self.cfg = cfg
        self.stats = stats
        self.group = validate_id(cfg.group)
        self.edge = validate_id(cfg.edge_id)
        self.trust_key = load_trust_key(cfg.trust_key) if cfg.trust_key is not None else None
        self.base = Path(cfg.model).resolve()
        self.store = ModelStore(cfg.resolved_state_dir)
        self.encoder, self.previous = self._load_models()
        self.encoder.self_test()
        kpis = cfg.kpis if cfg.kpis is not None else self.encoder.kpis
        self.encoder.check_schema(kpis)
        self.kpis = tuple(kpis)
        self.updater: Updater | None = None
        self.staged: Staged | None = None  # set by the updater thread, taken by the frame loop
        self._staging = threading.Lock()
        self.probation = 0  # frames the newest model must encode before it is trusted
        self.probation_deployment = ""
        sentinels = parse_sentinels(cfg.sentinels) if cfg.sentinels else None
        self.source = open_source(
            cfg.source,
            kpis,
            sentinels,
            rate_hz=cfg.rate_hz,
            limit=cfg.limit,
            loop=cfg.loop,
            period_ms=cfg.period_ms,
            stdin=stdin,
            time_column=cfg.time_column,
        )
        self.queue: queue.Queue[object] = queue.Queue(maxsize=4 * cfg.batch)
        self.stopping = threading.Event()
        self.source_error: str | None = None
        self.source_done = False  # the source ended by itself (not stopped, not failed)
        self.bd_seq = 0
        self.seq = 0
        self.spool: Spool | None = None
        self.deferred: deque[int] = deque()  # spool ids the in-memory queue had no room for
        self.started = time.monotonic()
        self._encode_s = 0.0  # encode time and measurements since the last heartbeat
        self._encoded = 0
        self._encode_max_ms = 0.0
        self._window = threading.Lock()  # guards those three

    def stop(self) -> None:
        self.stopping.set()
        self.source.stop()

    def _load_models(self) -> tuple[OnnxEncoder, OnnxEncoder | None]:
        """The encoder to start with, and the one before it: the model last switched to when
        it was deployed over this same ``--model``; else ``--model`` itself."""
        active = self.store.read_active()
        if active is None or active.base != str(self.base):
            if active is not None:
                log.info("started with another --model: deployed models are set aside")
            return OnnxEncoder(self.base), None
        try:
            encoder = OnnxEncoder(active.current)
            encoder.self_test()
        except ModelMismatchError as exc:
            log.error(
                "deployed model %s is unusable (%s): starting on --model", active.current, exc
            )
            return OnnxEncoder(self.base), None
        previous = None
        if active.previous is not None:
            try:
                previous = OnnxEncoder(active.previous)
            except ModelMismatchError as exc:
                log.warning("previous model %s is unusable, no rollback: %s", active.previous, exc)
        log.info("running deployed model %s", encoder.model_sha256[:16])
        return encoder, previous

    def resume(self, spool: Spool) -> None:
        """Continue a replay an earlier run left unfinished, after its last spooled frame."""
        key = self.source.resume_key
        cursor = spool.cursor(key) if key is not None else None
        if cursor is not None:
            log.info("resuming %s after row %s", key, cursor[0])
            self.source.resume(*cursor)
            self.stats.resumed_at = cursor[0]

    def submit(self, command: dict[str, Any]) -> None:
        """paho's thread: a deploy or rollback command for the updater."""
        if self.updater is not None:
            self.updater.submit(command)

    def stage(self, staged: Staged) -> None:
        """Updater thread: have the frame loop switch to `staged.encoder` between frames."""
        with self._staging:
            self.staged = staged

    def _switch(self, publisher: Publisher) -> None:
        """Frame loop, between frames: run the staged encoder, announce it, report it."""
        if self.staged is None:
            return
        with self._staging:
            staged, self.staged = self.staged, None
        if staged is None:
            return
        previous, self.encoder = self.encoder, staged.encoder
        self.previous = previous
        deploying = staged.kind == "deploy"
        self.probation = self.cfg.probation_frames if deploying else 0
        self.probation_deployment = staged.deployment
        self.stats.switches += deploying
        self.stats.rollbacks += not deploying
        publisher.rebirth()
        log.info("switched to model %s (%s)", self.encoder.model_sha256[:16], staged.kind)
        if self.updater is not None:
            self.updater.switched(staged, previous, self.base)

    def _fall_back(self, exc: SparsetelError, publisher: Publisher) -> bool:
        """The newest model failed on probation: go back to the previous one (True), or
        False when there is nothing to go back to."""
        if self.probation <= 0 or self.previous is None:
            return False
        failed, self.encoder, self.previous = self.encoder, self.previous, None
        self.probation = 0
        self.stats.rollbacks += 1
        log.error("model %s failed on probation, rolled back: %s", failed.model_sha256[:16], exc)
        publisher.rebirth()
        if self.updater is not None:
            self.updater.store.write_active(
                ActiveModels(str(self.base), str(self.encoder.model_dir), None)
            )
            self.updater.report(
                self.probation_deployment,
                "rolled_back",
                self.encoder.model_sha256,
                f"the new model failed: {exc}",
                previous=failed.model_sha256,
            )
        return True

    def birth(self) -> bytes:
        state = state_from_manifest(
            self.encoder.manifest,
            edge=self.edge,
            group=self.group,
            bd_seq=self.bd_seq,
            agent_version=__version__,
            runtime_version=self.encoder.runtime_version,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        return birth_payload(state)

    def death(self) -> bytes:
        return death_payload(self.edge, self.group, self.bd_seq, time.time_ns() // 10**6)

    def replay(self, spool: Spool, publisher: Publisher) -> None:
        """Publish what earlier runs left in the spool, oldest first, flagged historical."""
        after = 0
        while not self.stopping.is_set():
            chunk = spool.pending(after=after, limit=self.cfg.batch)
            if not chunk:
                return
            for old in chunk:
                if publisher.publish_frame(as_historical(old.payload), tag=old.id):
                    self.stats.replayed += 1
                else:  # the memory queue is full (a long outage): resent once it drains
                    self.deferred.append(old.id)
                    self.stats.deferred += 1
            after = chunk[-1].id
        log.info("replayed %s spooled frames, flagged historical", self.stats.replayed)

    def health(self, publisher: Publisher) -> bytes:
        """The heartbeat's JSON; resets the encode-latency window."""
        with self._window:
            per = self._encode_s * 1000 / self._encoded if self._encoded else None
            worst = self._encode_max_ms
            self._encode_s, self._encoded, self._encode_max_ms = 0.0, 0, 0.0
        spool = self.spool
        body = {
            "edge": self.edge,
            "group": self.group,
            "bd_seq": self.bd_seq,
            "timestamp_ms": time.time_ns() // 1_000_000,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "model_sha256": self.encoder.model_sha256,
            "measurements": self.stats.measurements,
            "next_seq": self.seq,
            "frames_sent": publisher.stats.published,
            "frames_acked": publisher.stats.acked,
            "replayed": self.stats.replayed,
            "rejects": dict(self.stats.rejects + self.source.stats.rejects),
            "spool_depth": spool.depth if spool else 0,
            "spool_bytes": spool.size_bytes if spool else 0,
            "spool_dropped": spool.stats.dropped_full + spool.stats.dropped_age if spool else 0,
            "encode_ms_per_measurement": per,
            "encode_batch_ms_max": worst,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def _beat(self, publisher: Publisher) -> None:
        """Heartbeat thread: one now, then every `health_interval_s` until the stop."""
        while True:
            try:
                publisher.publish_health(self.health(publisher))
            except Exception:  # a heartbeat must never take the agent down
                log.exception("heartbeat failed")
            if self.stopping.wait(self.cfg.health_interval_s):
                return

    def resend(self, publisher: Publisher) -> None:
        """Publish deferred frames from the spool, oldest first, flagged historical, while
        the in-memory queue has room (a frame the spool has since dropped is skipped)."""
        while self.deferred and self.spool is not None and publisher.has_room():
            tag = self.deferred.popleft()
            frame = self.spool.get(tag)
            if frame is not None:
                publisher.publish_frame(as_historical(frame.payload), tag=tag)
                self.stats.resent += 1

    def run(self, publisher: Publisher) -> None:
        beat = threading.Thread(
            target=self._beat, args=(publisher,), name="sparsetel-health", daemon=True
        )
        beat.start()
        reader = threading.Thread(target=self._read, name="sparsetel-source", daemon=True)
        reader.start()
        if self.updater is not None:
            threading.Thread(
                target=self.updater.run,
                args=(self.stopping,),
                name="sparsetel-deploy",
                daemon=True,
            ).start()
        ended = False
        while not ended:
            batch, ended = self._gather(publisher)
            for start in range(0, len(batch), self.cfg.batch):
                self._send(batch[start : start + self.cfg.batch], publisher)
            self.resend(publisher)
        self.stopping.set()  # the source is done: the heartbeat thread ends too
        beat.join(timeout=5.0)

    def _read(self) -> None:
        """Reader thread: the source's measurements into the queue, then _END."""
        try:
            for measurement in self.source:
                if not self._put(measurement):
                    break
            else:
                self.source_done = not self.source.stopped
        except Exception as exc:  # a source must not take the agent down without a word
            self.source_error = f"source failed: {exc}"
            log.exception("source failed")
        finally:
            self._put(_END)

    def _put(self, item: object) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _gather(self, publisher: Publisher) -> tuple[list[Measurement], bool]:
        """Up to `batch` measurements, or fewer once `max_batch_delay_s` has passed since the
        first; (batch, True) when the source ended or a stop was asked. A staged model is
        switched to meanwhile (no frame is being encoded)."""
        batch: list[Measurement] = []
        # Deferred frames are resent between batches: come back even when nothing arrives.
        deadline = time.monotonic() + self.cfg.max_batch_delay_s if self.deferred else float("inf")
        while len(batch) < self.cfg.batch:
            self._switch(publisher)
            if self.stopping.is_set():
                return batch + self._drain(), True
            wait = min(_POLL_S, deadline - time.monotonic())
            if wait <= 0:
                return batch, False
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is _END:
                return batch, True
            assert isinstance(item, Measurement)
            batch.append(item)
            if len(batch) == 1:
                deadline = time.monotonic() + self.cfg.max_batch_delay_s
        return batch, False

    def _drain(self) -> list[Measurement]:
        """What the reader had already queued when the stop came."""
        items: list[Measurement] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, Measurement):
                items.append(item)

    def _send(self, batch: list[Measurement], publisher: Publisher) -> None:
        if not batch:
            return
        x = np.stack([m.values for m in batch])
        try:
            codes = self._encode(x)
        except SparsetelError as exc:  # the graph broke its contract on this batch
            try:
                if not self._fall_back(exc, publisher):
                    raise
                codes = self._encode(x)  # the same batch, with the previous model
            except SparsetelError as final:
                self.stats.rejects["encode"] += len(batch)
                log.error("batch of %s dropped: %s", len(batch), final)
                return
        self.probation = max(0, self.probation - 1)
        records = tuple(Record(m.t_ms, c) for m, c in zip(batch, codes, strict=True))
        self._publish(records, tuple(m.pos for m in batch), publisher)

    def _encode(self, x: np.ndarray) -> list[tuple[int, ...]]:
        started = time.perf_counter()
        codes = self.encoder.encode_records(x)
        took = time.perf_counter() - started
        with self._window:
            self._encode_s += took
            self._encoded += len(x)
            self._encode_max_ms = max(self._encode_max_ms, took * 1000)
        return codes

    def _publish(
        self,
        records: tuple[Record, ...],
        positions: tuple[int | None, ...],
        publisher: Publisher,
    ) -> None:
        if self.seq > _U32:
            self.stats.rejects["seq_exhausted"] += len(records)
            self.stop()
            return
        enc = self.encoder
        frame = Frame(
            model_ref=enc.model_ref,
            bd_seq=self.bd_seq,
            seq=self.seq,
            L=enc.L,
            K=enc.K,
            period_ms=self.source.period_ms,
            records=records,
        )
        try:
            payload = encode_frame(frame)
        except WireError as exc:
            if exc.reason == "too_large" and len(records) > 1:
                half = len(records) // 2
                self._publish(records[:half], positions[:half], publisher)
                self._publish(records[half:], positions[half:], publisher)
                return
            self.stats.rejects[f"wire_{exc.reason}"] += len(records)
            log.error("frame of %s records dropped: %s", len(records), exc)
            return
        self.seq += 1  # consumed even when the frame is dropped: the cloud sees the gap
        tag = None
        key, pos = self.source.resume_key, positions[-1]
        cursor = (key, pos, records[-1].t_ms) if key is not None and pos is not None else None
        if self.spool is not None:
            try:
                tag = self.spool.put(frame.bd_seq, frame.seq, payload, cursor)
            except SpoolError as exc:
                self.stats.rejects["spool"] += len(records)
                log.error("frame of %s records dropped: %s", len(records), exc)
                return
        if not publisher.publish_frame(payload, tag=tag):
            if tag is None:
                self.stats.rejects["queue_full"] += len(records)
                return
            # Safe in the spool: resent once the queue drains, or by the next run.
            self.deferred.append(tag)
            self.stats.deferred += 1
        self.stats.measurements += len(records)


def _finish(agent: _Agent, publisher: Publisher, stats: AgentStats) -> None:
    """Wait for acks (bounded), publish the death, disconnect; fill in the counters."""
    cfg = agent.cfg
    if agent.staged is not None and agent.updater is not None:
        agent.updater.report(agent.staged.deployment, "rejected", None, "the agent stopped first")
    agent.resend(publisher)
    if not publisher.wait_for_acks(cfg.ack_timeout_s):
        log.warning("not every frame was acknowledged within %g s", cfg.ack_timeout_s)
    publisher.close(timeout=min(cfg.ack_timeout_s, 5.0) or 1.0)
    stats.frames = publisher.stats.published
    stats.bytes_sent = publisher.stats.bytes_sent
    stats.acked = publisher.stats.acked
    stats.failed = publisher.stats.failed
    stats.connects = publisher.stats.connects
    stats.next_seq = agent.seq
    stats.model_sha256 = agent.encoder.model_sha256
    stats.rejects.update(agent.source.stats.rejects)
    stats.cells.update(agent.source.stats.cells)
    if agent.spool is not None:
        key = agent.source.resume_key
        if key is not None and agent.source_done and agent.source_error is None:
            agent.spool.clear_cursor(key)  # read to its end: a next run starts over
        stats.spool_depth = agent.spool.depth
        stats.spool_dropped = agent.spool.stats.dropped_full + agent.spool.stats.dropped_age


def run_agent(
    cfg: EdgeConfig,
    *,
    print_json: bool = False,
    stats: AgentStats | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Run one edge agent to the end of its source (or a signal); return the exit code.

    0 ok; 1 runtime failure (model mismatch, broker refusing us, state dir in use); 2 bad
    configuration. A broker that does not answer is not a failure: the agent measures into
    its spool and delivers once the broker is back (or the next run does). The counters go
    to `stats` (pass one to read them) and, with `print_json`, to stdout as one JSON object.
    `stdin` replaces sys.stdin.buffer for "-".
    """
    stats = stats if stats is not None else AgentStats()
    started = time.monotonic()
    code = _run(cfg, stats, stdin)
    stats.elapsed_s = round(time.monotonic() - started, 3)
    if stats.bd_seq is not None:
        log.info(
            "edge %s: %s measurements in %s frames (%s bytes), %s acked, rejects %s",
            cfg.edge_id,
            stats.measurements,
            stats.frames,
            stats.bytes_sent,
            stats.acked,
            dict(stats.rejects),
        )
    if print_json:
        print(json.dumps(stats.to_dict()), flush=True)
    return code


def _run(cfg: EdgeConfig, stats: AgentStats, stdin: IO[bytes] | None) -> int:
    try:
        agent = _Agent(cfg, stats, stdin)
    except (ValueError, ConfigError) as exc:
        return _fail(stats, 2, exc)
    except (SparsetelError, OSError) as exc:
        return _fail(stats, 1, exc)
    state_dir = cfg.resolved_state_dir
    try:
        with lock_state_dir(state_dir):
            agent.bd_seq = stats.bd_seq = next_bd_seq(state_dir)
            agent.birth()  # a birth the broker would carry must be valid before we connect
            limits = SpoolLimits(cfg.spool_max_bytes, cfg.spool_max_age_s)
            spool = agent.spool = Spool(state_dir / SPOOL_FILE, limits)
            try:
                agent.resume(spool)
                publisher = Publisher(
                    cfg.broker,
                    group=agent.group,
                    edge=agent.edge,
                    birth=agent.birth,
                    death=agent.death,
                    max_queued=cfg.max_queued_frames,
                    on_frame_acked=lambda tag: spool.ack([tag]),
                    on_command=agent.submit,
                )
                agent.updater = Updater(
                    group=agent.group,
                    edge=agent.edge,
                    kpis=agent.kpis,
                    store=agent.store,
                    trust_key=agent.trust_key,
                    link=publisher,
                    current=lambda: agent.encoder,
                    previous=lambda: agent.previous,
                    stage=agent.stage,
                    fetch_timeout_s=cfg.fetch_timeout_s,
                )
                online = publisher.connect(cfg.connect_timeout_s)
                log.info(
                    "edge %s/%s %s, bdSeq %s",
                    agent.group,
                    agent.edge,
                    "online" if online else "measuring offline into the spool",
                    agent.bd_seq,
                )
                try:
                    with stop_on_signals(agent.stop):
                        agent.replay(spool, publisher)
                        agent.run(publisher)
                finally:
                    _finish(agent, publisher, stats)
            finally:
                spool.close()
    except (SparsetelError, OSError, ValueError) as exc:  # ConnectionError is an OSError
        return _fail(stats, 1, exc)
    if agent.source_error is not None:
        stats.error = agent.source_error
        return 1
    return 0


def _fail(stats: AgentStats, code: int, exc: BaseException) -> int:
    stats.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.error("edge agent cannot run: %s", stats.error)
    return code
