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
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sparsetel import __version__
from sparsetel.shared.errors import ConfigError, SparsetelError, WireError
from sparsetel.shared.kpi import parse_sentinels
from sparsetel.shared.signals import stop_on_signals
from sparsetel.shared.state import birth_payload, death_payload, state_from_manifest
from sparsetel.shared.topics import validate_id
from sparsetel.shared.wire import Frame, Record, encode_frame

from .config import EdgeConfig
from .encoder import OnnxEncoder
from .health import Heartbeat
from .intake import Intake
from .models import ModelSlot
from .publisher import Publisher
from .replay import open_source
from .source import Measurement
from .spool import Spool, SpoolError, SpoolLimits, as_historical
from .state import lock_state_dir, next_bd_seq
from .updater import ModelStore, Updater, load_trust_key

__all__ = ["AgentStats", "EdgeConfig", "run_agent"]

log = logging.getLogger(__name__)

_U32 = 2**32 - 1
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
    """One run: the checked models and source, a bdSeq, a publisher, and the frame loop."""

    def __init__(self, cfg: EdgeConfig, stats: AgentStats, stdin: IO[bytes] | None) -> None:
        self.cfg = cfg
        self.stats = stats
        self.group = validate_id(cfg.group)
        self.edge = validate_id(cfg.edge_id)
        self.trust_key = load_trust_key(cfg.trust_key) if cfg.trust_key is not None else None
        self.store = ModelStore(cfg.resolved_state_dir)
        self.models = ModelSlot(Path(cfg.model), self.store, cfg.probation_frames)
        self.models.encoder.self_test()
        kpis = cfg.kpis if cfg.kpis is not None else self.models.encoder.kpis
        self.models.encoder.check_schema(kpis)
        self.kpis = tuple(kpis)
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
        self.stopping = threading.Event()
        self.intake = Intake(self.source, cfg.batch, cfg.max_batch_delay_s, self.stopping)
        self.updater: Updater | None = None
        self.heartbeat: Heartbeat | None = None
        self.bd_seq = 0
        self.seq = 0
        self.spool: Spool | None = None
        self.deferred: deque[int] = deque()  # spool ids the in-memory queue had no room for

    @property
    def encoder(self) -> OnnxEncoder:
        return self.models.encoder

    def stop(self) -> None:
        self.stopping.set()
        self.source.stop()

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

    def _switch(self, publisher: Publisher) -> None:
        """Frame loop, between frames: run a staged encoder, announce it, report it."""
        switched = self.models.switch()
        if switched is None:
            return
        staged, previous = switched
        self.stats.switches += staged.kind == "deploy"
        self.stats.rollbacks += staged.kind != "deploy"
        publisher.rebirth()
        if self.updater is not None:
            self.updater.switched(staged, previous)

    def _fall_back(self, exc: SparsetelError, publisher: Publisher) -> bool:
        """The newest encoder failed on probation: back to the previous one (True), or False
        when there is nothing to go back to."""
        failed = self.models.fall_back()
        if failed is None:
            return False
        self.stats.rollbacks += 1
        log.error("model %s failed on probation, rolled back: %s", failed.model_sha256[:16], exc)
        publisher.rebirth()
        if self.updater is not None:
            self.updater.report(
                self.models.deployment,
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

    def counters(self, publisher: Publisher) -> dict[str, Any]:
        """What a heartbeat reports besides time and encode latency (`edge.health`)."""
        spool = self.spool
        return {
            "edge": self.edge,
            "group": self.group,
            "bd_seq": self.bd_seq,
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
        }

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
        self.heartbeat = Heartbeat(
            lambda: self.counters(publisher), publisher.publish_health, self.cfg.health_interval_s
        )
        beat = self.heartbeat.start(self.stopping)
        self.intake.start()
        if self.updater is not None:
            threading.Thread(
                target=self.updater.run,
                args=(self.stopping,),
                name="sparsetel-deploy",
                daemon=True,
            ).start()
        ended = False
        while not ended:
            # Deferred frames are resent between batches: come back even when nothing arrives.
            batch, ended = self.intake.gather(
                lambda: self._switch(publisher), come_back=bool(self.deferred)
            )
            for start in range(0, len(batch), self.cfg.batch):
                self._send(batch[start : start + self.cfg.batch], publisher)
            self.resend(publisher)
        self.stopping.set()  # the source is done: the heartbeat thread ends too
        beat.join(timeout=5.0)

    def _send(self, batch: list[Measurement], publisher: Publisher) -> None:
        if not batch:
            return
        x = np.stack([m.values for m in batch])
        if self.cfg.range_margin is not None:
            ok = self.encoder.valid_rows(x, self.cfg.range_margin)
            if not ok.all():
                self.stats.rejects["out_of_range"] += int((~ok).sum())
                batch = [m for m, good in zip(batch, ok.tolist(), strict=True) if good]
                if not batch:
                    return
                x = x[ok]
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
        self.models.encoded()
        records = tuple(Record(m.t_ms, c) for m, c in zip(batch, codes, strict=True))
        self._publish(records, tuple(m.pos for m in batch), publisher)

    def _encode(self, x: np.ndarray) -> list[tuple[int, ...]]:
        started = time.perf_counter()
        codes = self.encoder.encode_records(x)
        if self.heartbeat is not None:
            self.heartbeat.clock.record(time.perf_counter() - started, len(x))
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
    staged = agent.models.staged
    if staged is not None and agent.updater is not None:
        agent.updater.report(staged.deployment, "rejected", None, "the agent stopped first")
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
        if key is not None and agent.intake.done and agent.intake.error is None:
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
                    current=lambda: agent.models.encoder,
                    previous=lambda: agent.models.previous,
                    stage=agent.models.stage,
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
    if agent.intake.error is not None:
        stats.error = agent.intake.error
        return 1
    return 0


def _fail(stats: AgentStats, code: int, exc: BaseException) -> int:
    stats.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.error("edge agent cannot run: %s", stats.error)
    return code
