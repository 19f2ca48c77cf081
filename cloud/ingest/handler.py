"""The decoder service's worker job: one MQTT message in, one outcome out.

`FrameIngest` takes each message through topic -> frame -> model (by the frame's model ref)
-> decoded KPIs and predictions -> one store transaction, and never raises: a bad message is
logged (rate-limited), counted by reason in `ServiceStats` and dropped; the database drops
repeats by the key (edge, bd_seq, seq). A frame whose key is stored with other content (by
its digest, `cloud.ingest.digest`) is no repeat but a clone: counted, logged and kept in the store's
``held_frames`` for an operator (and dead-lettered), never dropped as a duplicate. So is a
frame whose times lie outside the window the store takes.

A frame of a model the registry does not know is parked in the store, exactly as it came,
not dropped; once the model is registered (found in the registry's `models_dir` when a later
frame or birth names it) the parked frames are handled like new ones (`unpark`).

Predictions need the last W measurements of an edge: the ingest keeps each edge's last W-1
count rows for the next frame of the same session (bd_seq). A frame that does not follow the
last one this worker saw (another worker took that one, or it came late) reads the W-1 rows
before it from the store instead; the window restarts only at a frame missing there.

Version 3 frames (the temporal codec's chained frames) go to `cloud.ingest.chains`, which
decodes each edge's chains in order from the state kept in the store; chained frames whose
predecessor is not decoded yet wait there as pending frames ("pending", receipted), and a
heartbeat's ``dropped`` ranges give up the ones that never can be. Dispatch is on
`frame_version`.

What senders can make the ingest keep is bounded (`IngestLimits`): parked, held and pending
frames per edge and in all (beyond, no receipt: a confirming edge keeps the frame and sends it
again later), the in-memory state of edges gone quiet (released), and the times a frame may
carry (outside the window: held, and refused for good with a receipt).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...shared.birth import parse_state, state_record
from ...shared.chainframe import ChainFrame, is_chain_frame
from ...shared.errors import WireError
from ...shared.health import parse_beat
from ...shared.topics import parse_topic
from ...shared.wire import Frame, decode_frame
from ..store.database import Store
from ..store.rows import AccuracyRow, FrameRow, MeasurementRow
from .audit import audit_accuracy
from .chainbatch import ChainBatch
from .chains import ChainIngest, parse_dropped
from .counters import ServiceStats, Throttle
from .deadletter import TokenBucket
from .digest import chain_digest, frame_digest
from .limits import HeldCounts, IngestLimits
from .pendingreceipts import Receipts
from .registry import Decoder, Model, ModelRegistry
from .temporal import TemporalModel

__all__ = ["ACCEPTED", "FrameIngest", "IngestLimits", "ServiceStats", "Throttle", "decode_many"]

# What `FrameIngest.handle` returns for a message it did not reject.
ACCEPTED = frozenset(
    {"stored", "duplicate", "parked", "pending", "birth", "death", "stale_death", "ignored",
     "health"}
)  # fmt: skip
# Outcomes of a DATA frame that resending cannot change: the edge gets a receipt for them.
# Not final: what may pass ("store_error", "flood", "park_full", "held_full", "internal")
# and a malformed frame (its bytes may have been damaged on the way; its header is not
# trusted to name it).
FINAL = frozenset(
    {"stored", "duplicate", "parked", "pending", "model_mismatch", "decode_error",
     "time_window", "clone", "undecodable"}
)  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class _Track:
    """Per edge: the prediction history of one session and the seqs seen per session."""

    bd_seq: int = -1
    model_ref: bytes = b""
    last_seq: int = -1
    rows: np.ndarray | None = None  # count rows (shape: [<= W-1, K])
    max_seq: dict[int, int] = field(default_factory=dict)  # bd_seq -> highest seq stored
    touched: float = 0.0  # the ingest's clock when the edge's last frame was stored


class FrameIngest:
    """The worker's job, one message at a time, with no MQTT and no threads of its own.

    `handle` returns what happened: "stored", "duplicate", "parked" (its model is unknown
    yet), "pending" (a chained frame waiting for its predecessor), "birth", "death",
    "stale_death", "ignored", or the reason the message was rejected (a WireError reason
    such as "truncated", or "flood", "model_mismatch", "state_mismatch", "decode_error",
    "time_window" and "clone" (both held), "undecodable" (a version 3 frame given up),
    "held_full", "park_full", "pending_full", "store_error", "internal"). It never raises.

    `limits`: the bounds on what senders can make it keep (`IngestLimits()` by default);
    `clock`: monotonic seconds, for releasing the state of quiet edges.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: Store,
        stats: ServiceStats,
        flood: TokenBucket | None = None,
        track_gaps: bool = True,
        batch_commits: bool | None = None,
        limits: IngestLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.store = store
        self.stats = stats
        self.flood = flood  # DATA frames per edge beyond it are rejected as "flood"
        self.track_gaps = track_gaps  # False when other workers take some of an edge's frames
        # One transaction per batch on PostgreSQL (fewer round trips). SQLite has one writer
        # at a time: a batch transaction would hold its lock while the frames are decoded
        # and predicted, so workers would take turns; a frame's commit in WAL mode is cheap.
        self.batch_commits = store.dialect != "sqlite" if batch_commits is None else batch_commits
        self.receipts = Receipts()  # frames whose handling is final, for the edges' receipts
        self._tracks: dict[str, _Track] = {}
        self._known: set[bytes] = set()  # models whose KPI names are in the store
        self._throttle = Throttle(log)
        self.limits = IngestLimits() if limits is None else limits
        lim = self.limits
        self._parked = HeldCounts(lim.parked_per_edge, lim.parked_total, {})
        self._held = HeldCounts(lim.held_per_edge, lim.held_total, {})
        self._pending = HeldCounts(lim.pending_per_edge, lim.pending_total, {})
        self.chains = ChainIngest(self)
        self.chain_batch = ChainBatch(self)
        self._count_held()  # what the store holds already
        self._clock = clock
        self._sweep_at = clock() + self.limits.idle_s / 4

    def handle(
        self,
        topic: str,
        payload: bytes,
        received_ms: int | None = None,
        ahead: tuple[Frame, np.ndarray | None] | None = None,
        flood_checked: bool = False,
    ) -> str:
        """One message; `ahead`: its frame and KPIs, already decoded (see `handle_batch`);
        `flood_checked`: it passed the flood limit already."""
        now_ms = int(time.time() * 1000) if received_ms is None else received_ms
        self._sweep()
        try:
            parts = parse_topic(topic)
            kind = str(parts.kind).upper()
            if kind == "DATA":
                flood = None if flood_checked else self.flood
                if flood is not None and not flood.allow(parts.edge):
                    return self._reject("flood", "%s: more frames than the flood limit", topic)
                if ahead is None and is_chain_frame(payload):
                    outcome, chain = self.chains.handle(topic, parts.edge, bytes(payload), now_ms)
                    if outcome in FINAL:
                        self.receipts.note(parts.group, parts.edge, chain.bd_seq, chain.seq)
                    return outcome
                frame, kpis = ahead if ahead is not None else (decode_frame(payload), None)
                outcome = self._data(topic, parts.edge, frame, bytes(payload), now_ms, kpis)
                if outcome in FINAL:
                    self.receipts.note(parts.group, parts.edge, frame.bd_seq, frame.seq)
                return outcome
            if kind == "STATE":
                return self._state(parts.group, parts.edge, bytes(payload), now_ms)
            if kind == "HEALTH":
                return self._health(parts.group, parts.edge, bytes(payload), now_ms)
            raise WireError(f"unexpected topic kind {kind}", reason="topic")
        except WireError as exc:
            return self._reject(exc.reason, "%s: %s", topic, exc)
        except Exception as exc:  # a bug must not stop the service: count it and go on
            log.debug("internal error on %s", topic, exc_info=True)
            return self._reject("internal", "internal error on %s: %r", topic, exc)

    def handle_batch(self, messages: Sequence[tuple[str, bytes, int]]) -> list[str]:
        """`handle` each (topic, payload, received_ms), with `batch_commits` their writes
        committed together (one commit, one flush for the lot; each frame still stored or
        refused on its own), else each frame's on its own.

        If the commit itself fails, nothing of the batch is stored: the messages are handled
        again one at a time (the counters then count those frames twice). Receipts are noted
        only for what was committed.

        The frames of one model are decoded together first (`decode_many`: one pass of the
        decoder over the whole batch instead of one per frame), and the chained frames that
        go on from stored tips are decoded and stored together (`ChainBatch`)."""
        try:
            ahead = self._decode_ahead(messages)
        except Exception as exc:  # a bug here must not stop the service: decode one by one
            self._throttle.warning("ahead", "cannot decode the batch ahead: %r", exc)
            ahead = {}
        try:
            with self.store.batch() if self.batch_commits else contextlib.nullcontext():
                if self.batch_commits:  # chain locks in one order: no two batches wait in a cycle
                    self.store.lock_edges(_chain_edges(messages))
                done = self.chain_batch.run(messages)
                checked = self.chain_batch.flood_checked
                return [
                    done[i] if i in done else self.handle(t, p, ms, ahead.get(i), i in checked)
                    for i, (t, p, ms) in enumerate(messages)
                ]
        except Exception as exc:
            self._throttle.warning(
                "batch", "batch of %d not committed (%r): one at a time", len(messages), exc
            )
            self.receipts.discard()  # (a note lost here costs the edge one resend)
            self._known.clear()  # a model registered in the batch is registered again
            self.chains.forget()  # the rows it remembers may have been rolled back
            self._count_held()  # what the batch parked, kept or unparked was rolled back
            return [self.handle(t, p, ms) for t, p, ms in messages]

    def _decode_ahead(
        self, messages: Sequence[tuple[str, bytes, int]]
    ) -> dict[int, tuple[Frame, np.ndarray | None]]:
        """Position -> (frame, its KPIs or None) of each well-formed version 1 or 2 DATA
        message; KPIs for the frames of registered models that match them, decoded model by
        model. What fails here is left to `handle`, which then refuses it on its own."""
        out: dict[int, tuple[Frame, np.ndarray | None]] = {}
        by_model: dict[bytes, list[int]] = {}
        for i, (topic, payload, _) in enumerate(messages):
            if is_chain_frame(payload):
                continue  # version 3: `ChainBatch` and `cloud.ingest.chains`
            try:
                if parse_topic(topic).kind != "DATA":
                    continue
                frame = decode_frame(payload)
            except WireError:
                continue
            out[i] = (frame, None)
            by_model.setdefault(frame.model_ref, []).append(i)
        for ref, positions in by_model.items():
            codec = self.registry.get(ref)
            if codec is None or isinstance(codec, TemporalModel):
                continue
            m = codec.manifest
            fits = [i for i in positions if (out[i][0].L, out[i][0].K) == (m.L, m.K)]
            try:
                kpis = decode_many(codec, [out[i][0] for i in fits])
            except Exception:  # some frame's codes do not decode: each is tried alone
                continue
            for i, values in zip(fits, kpis, strict=True):
                out[i] = (out[i][0], values)
        return out

    def _reject(self, reason: str, msg: str, *args: object) -> str:
        self.stats.reject(reason)
        self._throttle.warning(reason, "rejected [" + reason + "] " + msg, *args)
        return reason

    def _data(
        self,
        topic: str,
        edge: str,
        frame: Frame,
        payload: bytes,
        now_ms: int,
        kpis: np.ndarray | None = None,
    ) -> str:
        if frame.version == 1:
            self.stats.add("frames_v1")
        outside = self.limits.time_window_error(frame, now_ms)
        if outside is not None:
            return self._hold("time_window", edge, frame, (topic, payload, now_ms), outside)
        codec = self._decoder(frame.model_ref)
        if codec is None:
            return self._park(topic, edge, frame.model_ref, payload, now_ms)
        if isinstance(codec, TemporalModel):
            return self._reject(
                "model_mismatch", "%s: a version %s frame of temporal-codec model %s",
                edge, frame.version, frame.model_ref.hex(),
            )  # fmt: skip
        m = codec.manifest
        audit_ok = all(r.audit is None or len(r.audit) == m.D for r in frame.records)
        if (frame.L, frame.K) != (m.L, m.K) or not audit_ok:
            return self._reject(
                "model_mismatch", "%s: frame L=%s K=%s, model %s has L=%s K=%s D=%s",
                edge, frame.L, frame.K, frame.model_ref.hex(), m.L, m.K, m.D,
            )  # fmt: skip
        if kpis is None:
            try:
                (kpis,) = decode_many(codec, [frame])
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
        digest = frame_digest(frame)
        row = FrameRow(
            edge, frame.bd_seq, frame.seq, frame.model_ref, len(rows), len(payload),
            frame.historical, now_ms, digest,
        )  # fmt: skip
        try:
            if frame.model_ref not in self._known:  # so its KPIs can be queried by name
                self.store.register_model(frame.model_ref, m.kpis, m.target)
                self._known.add(frame.model_ref)
            accuracy = self._accuracy(edge, frame, codec, kpis, predictions)
            stored = self.store.store_frame(row, rows, accuracy)
        except Exception as exc:
            return self._reject("store_error", "%s seq %s: %r", edge, frame.seq, exc)
        if not stored:
            return self._repeat(topic, edge, frame, payload, now_ms, digest)
        track.touched = self._clock()
        self._tracks[edge] = track
        self._count_stored(edge, frame, sum(p is not None for p in predictions))
        return "stored"

    def _repeat(
        self,
        topic: str,
        edge: str,
        frame: Frame | ChainFrame,
        payload: bytes,
        now_ms: int,
        digest: str,
    ) -> str:
        """A frame whose key is stored: a duplicate when the stored frame says the same (or
        predates digests), else a clone, held while the held bounds allow."""
        try:
            stored = self.store.stored_digest(edge, frame.bd_seq, frame.seq)
        except Exception as exc:
            return self._reject("store_error", "%s seq %s: %r", edge, frame.seq, exc)
        if stored is None or stored == digest:
            self.stats.add("duplicates")
            return "duplicate"
        self.stats.add("clones")
        why = "stored with other content (two agents with one edge id? a state folder lost?)"
        return self._hold("clone", edge, frame, (topic, payload, now_ms), why, digest)

    def _hold(
        self,
        reason: str,
        edge: str,
        frame: Frame | ChainFrame,
        message: tuple[str, bytes, int],
        why: str,
        digest: str | None = None,
    ) -> str:
        """Refuse a frame for `reason` (final: a clone, a time outside the window) but keep
        it in the store's ``held_frames`` for an operator, so it is not lost with its
        receipt; beyond the held bounds "held_full" (no receipt: a confirming edge keeps it)."""
        where = f"{edge} bdSeq {frame.bd_seq} seq {frame.seq}"
        if self._held.full(edge):
            return self._reject(
                "held_full", "%s: %s: %s; not kept (%d held of this edge, %d in all)",
                where, reason, why, self._held.of(edge), self._held.total,
            )  # fmt: skip
        try:
            key = (edge, frame.bd_seq, frame.seq)
            if not digest:
                digest = (
                    chain_digest(frame) if isinstance(frame, ChainFrame) else frame_digest(frame)
                )
            if self.store.hold_frame(key, reason, digest, message):
                self._held.add(edge)  # (not when this very frame is held already)
        except Exception as exc:
            return self._reject("store_error", "%s: cannot hold a frame: %r", where, exc)
        return self._reject(reason, "%s: %s; kept in held_frames", where, why)

    def _decoder(self, model_ref: bytes) -> Model | None:
        """The decoder for `model_ref`: registered, or found in the models folder now (and
        then the frames parked for it are handled first); None when it is nowhere."""
        codec = self.registry.get(model_ref)
        if codec is None:
            codec = self.registry.resolve(model_ref)
            if codec is not None:
                self.unpark(model_ref)
        return codec

    def _park(self, topic: str, edge: str, ref: bytes, payload: bytes, now_ms: int) -> str:
        if self._parked.full(edge):
            return self._reject(
                "park_full", "%s: model %s is not registered and %d frames of this edge (%d "
                "in all) are parked: not parked, no receipt", edge, ref.hex(),
                self._parked.of(edge), self._parked.total,
            )  # fmt: skip
        try:
            self.store.park_frame(edge, ref, topic, payload, now_ms)
        except Exception as exc:
            return self._reject("store_error", "%s: cannot park a frame: %r", edge, exc)
        self._parked.add(edge)
        self.stats.add("parked")
        self._throttle.warning(
            "parked", "%s: model %s is not registered; frame parked until it is", edge, ref.hex()
        )
        return "parked"

    def unpark(self, model_ref: bytes) -> int:
        """Handle the frames parked for `model_ref` (registered now), oldest first, and
        forget them; returns how many. A crash in between repeats some: the store drops
        the repeats by their key."""
        done = 0
        while True:
            batch = self.store.parked(model_ref)
            if not batch:
                break
            for _, topic, payload, received_ms in batch:
                self.handle(topic, payload, received_ms)
            self.store.drop_parked([item[0] for item in batch])
            for _, topic, _, _ in batch:
                self._parked.remove(parse_topic(topic).edge)
            done += len(batch)
        if done:
            self.stats.add("unparked", done)
            log.info("model %s registered: %d parked frames handled", model_ref.hex(), done)
        return done

    def _count_held(self) -> None:
        """Count the parked and held frames the store holds, per edge (at start, and after
        a batch that did not commit); when the store cannot say, the counts stay as they are
        (off by what a batch rolled back, until the next count)."""
        lim = self.limits
        try:
            parked, held = (self.store.held_per_edge(t) for t in ("parked_frames", "held_frames"))
            pending = self.store.pending_per_edge()
        except Exception as exc:
            self._throttle.warning("held", "cannot count the held frames: %r", exc)
            return
        self._parked = HeldCounts(lim.parked_per_edge, lim.parked_total, parked)
        self._held = HeldCounts(lim.held_per_edge, lim.held_total, held)
        self._pending = HeldCounts(lim.pending_per_edge, lim.pending_total, pending)

    def _sweep(self) -> None:
        """Release the prediction history of edges quiet for `limits.idle_s` (their next
        frame reads it back from the store); a scan at most every quarter of that time."""
        now = self._clock()
        if now < self._sweep_at:
            return
        self._sweep_at = now + self.limits.idle_s / 4
        quiet = now - self.limits.idle_s  # a new dict: a dict keeps its size after deletes
        self._tracks = {e: track for e, track in self._tracks.items() if track.touched >= quiet}
        self.chains.forget(quiet)

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
            if follows and old.rows is not None:
                prefix = old.rows
            else:  # another worker, or an earlier run, stored the frames before this one
                prefix = self._history(edge, frame, codec, w)
            stacked = np.concatenate([prefix, counts])
            track.rows = stacked[max(len(stacked) - (w - 1), 0) :] if w > 1 else stacked[:0]
            if len(stacked) < w:
                return none, track
            values = np.asarray(codec.predict_sequence(stacked), np.float64)
        except Exception as exc:  # store the KPIs without predictions rather than lose them
            self._throttle.warning("prediction", "prediction failed for %s: %r", edge, exc)
            self.stats.add("prediction_errors")
            return none, track
        first = w - 1 - len(prefix)  # the first record whose window is complete
        out = none[:first] + [float(v) if math.isfinite(v) else None for v in values.ravel()]
        return out[:n], track

    def _accuracy(
        self,
        edge: str,
        frame: Frame,
        codec: Decoder,
        kpis: np.ndarray,
        predictions: Sequence[float | None],
    ) -> list[AccuracyRow]:
        """The audit samples' error sums (`cloud.ingest.audit`); none when that fails (counted)."""
        if not any(r.audit is not None for r in frame.records):
            return []
        try:
            earlier = functools.partial(self.store.prediction_for, edge)
            return audit_accuracy(edge, frame, codec, kpis, predictions, earlier)
        except Exception as exc:  # the measurements matter more than their audit
            self._throttle.warning("accuracy", "audit of %s failed: %r", edge, exc)
            self.stats.add("accuracy_errors")
            return []

    def _history(self, edge: str, frame: Frame, codec: Decoder, w: int) -> np.ndarray:
        """Count rows of the last W-1 measurements before `frame` from the store: the frames
        just before it in its session (bd_seq), consecutive and of its model; fewer (or none)
        when one is missing."""
        need = w - 1
        if need < 1 or frame.seq == 0:
            return np.zeros((0, codec.manifest.K), np.float32)
        history: list[tuple[int, ...]] = []
        expected = frame.seq - 1  # the seq the next row back must have (or the one before it)
        for seq, model_ref, codes in self.store.recent_codes(edge, frame.bd_seq, frame.seq, need):
            if seq not in (expected, expected + 1) or model_ref != frame.model_ref.hex():
                break  # a frame missing, or another model: the window starts after it
            history.insert(0, tuple(codes))
            expected = seq - 1
        return np.asarray(codec.counts(history), np.float32).reshape(-1, codec.manifest.K)

    def _count_stored(self, edge: str, frame: Frame, n_predictions: int) -> None:
        self.stats.add("frames_ok")
        self.stats.add("records_stored", len(frame.records))
        self.stats.add("predictions", n_predictions)
        seen = self._tracks[edge].max_seq
        top = seen.get(frame.bd_seq)
        if self.track_gaps and top is not None:
            if frame.seq > top + 1:
                self.stats.gap(edge, frame.seq - top - 1)
            elif frame.seq < top:
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
        # What is kept of a birth: its validated fields, never the document as it came.
        sha, birth = (
            (state.model_sha256 or None, state_record(state)) if state.online else (None, None)
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
        if not self._resolved(state.model_ref):
            self.stats.add("births_unknown_model")
            self._throttle.warning(
                "birth_model", "edge %s runs model %s, which this service has not loaded",
                edge, state.model_ref,
            )  # fmt: skip
        return "birth"

    def _health(self, group: str, edge: str, payload: bytes, now_ms: int) -> str:
        """Keep an edge's heartbeat, as the schema normalises it (`shared.health`), for
        `sparsetel status` and the monitor; a bad one is refused whole."""
        try:
            body = parse_beat(payload, group, edge)
        except WireError as exc:
            return self._reject(exc.reason, "%s heartbeat: %s", edge, exc)
        try:
            dropped = parse_dropped(_dropped_field(body, payload))
        except WireError as exc:
            return self._reject(exc.reason, "%s heartbeat: %s", edge, exc)
        try:
            self.store.set_health(group, edge, body, now_ms)
            if dropped:
                self.chains.give_up_dropped(edge, dropped)
        except Exception as exc:
            return self._reject("store_error", "%s heartbeat: %r", edge, exc)
        self.stats.add("heartbeats")
        return "health"

    def _resolved(self, model_ref_hex: str) -> bool:
        """Whether the model a birth names is registered (now, looking in models_dir if
        needed; then its parked frames are handled)."""
        try:
            ref = bytes.fromhex(model_ref_hex)
        except (ValueError, TypeError):
            return False
        return self._decoder(ref) is not None


def _dropped_field(body: dict[str, Any], payload: bytes) -> object:
    """A heartbeat's ``dropped`` ranges (`parse_dropped` checks them): from the beat as
    `parse_beat` keeps it, or, while that schema does not know the field yet, from the JSON
    it admitted (at most MAX_BEAT_BYTES)."""
    if "dropped" in body:
        return body["dropped"]
    if b'"dropped"' not in payload:
        return None
    raw = json.loads(payload)
    return raw.get("dropped") if isinstance(raw, dict) else None


def _chain_edges(messages: Sequence[tuple[str, bytes, int]]) -> list[str]:
    """The edges whose chains a batch may touch: of its version 3 frames and heartbeats."""
    edges = []
    for topic, payload, _ in messages:
        try:
            parts = parse_topic(topic)
            kind = str(parts.kind).upper()
            if kind == "HEALTH" or (kind == "DATA" and is_chain_frame(payload)):
                edges.append(parts.edge)
        except WireError:
            continue
    return edges


def decode_many(codec: Decoder, frames: Sequence[Frame]) -> list[np.ndarray]:
    """The KPIs of each frame (float64, [records, D]), from one pass of `codec` over the
    distinct codes of all their records (a code is a network state: a batch repeats few of
    them, and decoding is a function of the code alone); ValueError when the decoder returns
    the wrong shape."""
    slot: dict[tuple[int, ...], int] = {}
    rows = [slot.setdefault(r.codes, len(slot)) for f in frames for r in f.records]
    if not rows:
        return [np.zeros((0, codec.manifest.D)) for _ in frames]
    distinct = np.asarray(codec.decode(list(slot)), dtype=np.float64)
    if distinct.shape != (len(slot), codec.manifest.D):
        raise ValueError(f"decode returned shape {distinct.shape} for {len(slot)} codes")
    kpis = distinct[np.asarray(rows)]
    ends = np.cumsum([len(f.records) for f in frames])[:-1]
    return np.split(kpis, ends)
