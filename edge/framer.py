"""One run of the edge agent: the checked models and source, a bdSeq, and the frame loop.

`Framer` holds what a run needs (built and checked before the network is touched: ids, the
model's sha256, self-test and KPI schema, the source) and runs the loop: gather up to `batch`
measurements (`edge.intake`; a temporal codec codes each as it comes, `edge.ahead`), drop
those out of the model's range, encode them (or end what was coded ahead), build frame
seq 0, 1, 2, ... of the bdSeq and hand it to the delivery (`edge.delivery`: spool first, then
the broker). An ONNX encoder codes the batch in one onnxruntime call into a version 2 frame
that stands alone; a temporal codec codes it into version 3 frames that continue each other
(`edge.chain`: the state between frames, keys at the start of a frame only, a new chain
after anything that breaks one). Between frames it switches to a staged model
(`edge.modelslots`) and announces it in a fresh birth; a new model failing on probation is
replaced by the previous one and the rest of the batch re-encoded. `edge.agent` runs it end
to end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..shared.birth import birth_payload, death_payload, state_from_manifest
from ..shared.chainframe import ChainHead, chain_frame, encode_chain_frame
from ..shared.errors import SparsetelError, WireError
from ..shared.kpi import parse_sentinels
from ..shared.topics import validate_id
from ..shared.wire import Frame, Record, encode_frame
from .ahead import FrameAhead
from .chain import FrameChain
from .delivery import Delivery
from .heartbeat import Heartbeat
from .intake import Intake
from .models import Encoder
from .modelslots import ModelSlot
from .publisher import Publisher
from .replay import open_source
from .settings import EdgeConfig
from .source import Measurement
from .spool import Spool
from .temporalencoder import TemporalEncoder
from .updater import ModelStore, Updater, load_trust_key

if TYPE_CHECKING:
    from .encoder import OnnxEncoder

__all__ = ["AgentStats", "Framer"]

log = logging.getLogger(__name__)

_U32 = 2**32 - 1


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
    invalid_cells: Counter[str] = field(default_factory=Counter)  # by KPI: not numbers, now NaN
    bd_seq: int | None = None
    next_seq: int = 0
    connects: int = 0
    replayed: int = 0
    deferred: int = 0
    resent: int = 0
    receipts: int = 0
    confirmed: int = 0
    audits: int = 0
    spool_depth: int = 0
    spool_dropped: int = 0
    switches: int = 0
    coded_ahead: int = 0  # version 3 frames coded as their measurements came (`edge.ahead`)
    rollbacks: int = 0
    resumed_at: int | None = None
    model_sha256: str | None = None
    elapsed_s: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["rejects"] = dict(self.rejects)
        data["cells"] = dict(self.cells)
        data["invalid_cells"] = dict(self.invalid_cells)
        return data


class Framer:
    """One run: the checked models and source, a bdSeq, a publisher, and the frame loop."""

    def __init__(self, cfg: EdgeConfig, stats: AgentStats, stdin: IO[bytes] | None) -> None:
        self.cfg = cfg
        self._audit_rng = np.random.default_rng()  # which measurements go out raw as well
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
        self.delivery: Delivery | None = None  # frames through the spool to the broker
        interval_ms = (
            None if cfg.key_interval_s is None else max(1, round(cfg.key_interval_s * 1000))
        )
        self.chain = FrameChain(cfg.key_interval, interval_ms)  # temporal codec: v3 frames
        self.ahead = FrameAhead()  # the next v3 frame, coded as its measurements come

    @property
    def encoder(self) -> Encoder:
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
        self.chain.cut()  # the new model starts its own chain
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
        self.chain.cut()
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
        """What a heartbeat reports besides time and encode latency (`edge.heartbeat`)."""
        spool = self.delivery.spool if self.delivery else None
        return {
            "edge": self.edge,
            "group": self.group,
            "bd_seq": self.bd_seq,
            "model_sha256": self.encoder.model_sha256,
            "measurements": self.stats.measurements,
            "next_seq": self.seq,
            "frames_sent": publisher.stats.published,
            "frames_acked": publisher.stats.acked,
            "replayed": self.delivery.stats.replayed if self.delivery else 0,
            "confirmed": spool.stats.confirmed if spool else 0,
            "audits": self.stats.audits,
            "rejects": dict(self.stats.rejects + self.source.stats.rejects),
            "spool_depth": spool.depth if spool else 0,
            "spool_bytes": spool.size_bytes if spool else 0,
            "spool_dropped": self._spool_dropped(),
            "dropped": [list(r) for r in spool.dropped_ranges()] if spool else [],
        }

    def _spool_dropped(self) -> int:
        """Frames lost for good: beyond the spool's bounds, or damaged on its disk."""
        delivery = self.delivery
        if delivery is None:
            return 0
        spool = delivery.spool.stats
        return spool.dropped_full + spool.dropped_age + delivery.stats.damaged

    def run(self, delivery: Delivery) -> None:
        """The frame loop, from the spool's leftovers to the end of the source or a stop."""
        publisher = delivery.publisher
        delivery.replay(self.stopping)
        self.heartbeat = Heartbeat(
            lambda: self.counters(publisher), publisher.publish_health, self.cfg.health_interval_s
        )
        beat = self.heartbeat.start(self.stopping)
        self.ahead.clock = self.heartbeat.clock
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
            # Deferred frames (and frames without receipt) are resent between batches: come
            # back even when nothing arrives.
            come_back = bool(delivery.deferred) or delivery.confirm_wait_s is not None
            batch, ended = self.intake.gather(
                lambda: self._switch(publisher), come_back, self._arrived
            )
            for start in range(0, len(batch), self.cfg.batch):
                self._send(batch[start : start + self.cfg.batch], publisher)
            delivery.resend()
            delivery.resend_overdue()
        self.stopping.set()  # the source is done: the heartbeat thread ends too
        beat.join(timeout=5.0)

    def _arrived(self, m: Measurement) -> None:
        """A measurement taken from the intake: coded at once into the next version 3 frame."""
        encoder = self.encoder
        if isinstance(encoder, TemporalEncoder):
            self.ahead.arrived(encoder, self.chain, m, self.cfg.range_margin)

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
        done = 0
        while done < len(batch):
            try:
                done = self._send_some(batch, x, done, publisher)
            except SparsetelError as exc:  # the model broke its contract on this batch
                try:
                    if not self._fall_back(exc, publisher):
                        raise
                except SparsetelError as final:  # the rest of the batch, with the previous model
                    self.chain.cut()
                    self.stats.rejects["encode"] += len(batch) - done
                    log.error("batch of %s dropped: %s", len(batch) - done, final)
                    return

    def _send_some(
        self, batch: list[Measurement], x: np.ndarray, start: int, publisher: Publisher
    ) -> int:
        """Encode and hand on measurements from `start` on: the rest of the batch (ONNX) or
        one frame (temporal codec); returns how far the batch is done."""
        encoder = self.encoder
        if isinstance(encoder, TemporalEncoder):
            return self._send_chained(encoder, batch, x, start)
        codes = self._encode(encoder, x[start:])
        self.models.encoded()
        rest = batch[start:]
        audited = self._audits(len(rest))
        records = tuple(
            Record(m.t_ms, c, tuple(m.values.tolist()) if sample else None)
            for m, c, sample in zip(rest, codes, audited, strict=True)
        )
        self._publish(records, tuple(m.pos for m in rest), publisher)
        return len(batch)

    def _audits(self, n: int, count: bool = True) -> list[bool]:
        """Which of `n` measurements also travel raw (drawn at `audit_share`); `count`: add
        them to the audit counter now."""
        audited = self._audit_rng.random(n) < self.cfg.audit_share
        if count:
            self.stats.audits += int(audited.sum())
        return [bool(a) for a in audited.tolist()]

    def _encode(self, encoder: OnnxEncoder, x: np.ndarray) -> list[tuple[int, ...]]:
        started = time.perf_counter()
        codes = encoder.encode_records(x)
        if self.heartbeat is not None:
            self.heartbeat.clock.record(time.perf_counter() - started, len(x))
        return codes

    def _send_chained(
        self, encoder: TemporalEncoder, batch: list[Measurement], x: np.ndarray, start: int
    ) -> int:
        """One version 3 frame from `start` on: a new chain from a key measurement when one
        is due (`edge.chain`), else continuing the last frame; returns where it ends."""
        if self.seq > _U32:
            self.stats.rejects["seq_exhausted"] += len(batch) - start
            self.stop()
            return len(batch)
        chain = self.chain
        times = [m.t_ms for m in batch[start:]]
        key, n = chain.split(times)
        audited = self._audits(n, count=False)  # drawn once, kept if the frame is halved
        coded = self.ahead.take(encoder, key, chain.state, batch[start : start + n])
        ahead = coded is not None
        while True:
            if coded is not None:  # coded as the measurements came (`edge.ahead`)
                payload, decoded = coded
                coded = None
            else:
                ahead = False
                started = time.perf_counter()
                payload, decoded = encoder.encode_frame(x[start : start + n], key, chain.state)
                if self.heartbeat is not None:
                    self.heartbeat.clock.record(time.perf_counter() - started, n)
            try:
                data = self._chain_bytes(
                    encoder, batch[start : start + n], key, payload, audited[:n]
                )
                break
            except WireError as exc:
                if exc.reason == "too_large" and n > 1:
                    n //= 2  # the same measurements, coded again into a smaller frame
                    continue
                chain.cut()
                self.stats.rejects[f"wire_{exc.reason}"] += n
                log.error("frame of %s measurements dropped: %s", n, exc)
                return start + n
        self.models.encoded()
        self.stats.coded_ahead += ahead
        self.stats.audits += sum(audited[:n])
        sent = batch[start : start + n]
        if self._deliver(data, sent, starts=key):
            chain.advance(key, times[:n], decoded.state)
        else:
            chain.cut()
        assert self.delivery is not None
        if self.delivery.spool.take_cut():  # the spool dropped the chain this frame continues
            chain.cut()
        return start + n

    def _chain_bytes(
        self,
        encoder: TemporalEncoder,
        sent: list[Measurement],
        key: bool,
        payload: bytes,
        audited: list[bool],
    ) -> bytes:
        """The version 3 frame (seq `self.seq`) of measurements `sent` coded into `payload`;
        `audited[i]`: measurement i travels raw as well."""
        period = self.source.period_ms
        times = [m.t_ms for m in sent]
        head = ChainHead(encoder.model_ref, times[0], period, encoder.L, encoder.K) if key else None
        audit = [
            tuple(m.values.tolist()) if a else None for m, a in zip(sent, audited, strict=True)
        ]
        frame = chain_frame(
            self.bd_seq, self.seq, times, period, (0,) if key else (), payload, head,
            self.chain.last_ms, audit=audit,
        )  # fmt: skip
        return encode_chain_frame(frame)

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
        key, pos = self.source.resume_key, positions[-1]
        cursor = (key, pos, records[-1].t_ms) if key is not None and pos is not None else None
        self._hand_on(payload, len(records), cursor, starts=True)

    def _deliver(self, payload: bytes, sent: list[Measurement], starts: bool) -> bool:
        key, pos = self.source.resume_key, sent[-1].pos
        cursor = (key, pos, sent[-1].t_ms) if key is not None and pos is not None else None
        return self._hand_on(payload, len(sent), cursor, starts)

    def _hand_on(
        self, payload: bytes, count: int, cursor: tuple[str, int, int] | None, starts: bool
    ) -> bool:
        """Frame `self.seq` (of `count` measurements) to the delivery; True once it is safe."""
        seq = self.seq
        self.seq += 1  # consumed even when the frame is dropped: the cloud sees the gap
        assert self.delivery is not None, "frames are published only once delivery is set up"
        reason = self.delivery.deliver(self.bd_seq, seq, payload, cursor, starts=starts)
        if reason is not None:
            self.stats.rejects[reason] += count
            return False
        self.stats.measurements += count
        return True
