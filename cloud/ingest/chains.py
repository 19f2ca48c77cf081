"""Version 3 frames of the temporal codec, decoded in order: `ChainIngest`.

A chained frame (`shared.chainframe`) continues the decoder state its predecessor
(bd_seq, seq - 1) left, so it decodes only after that one. Design (chosen over "predict only
from receipted state", which would cost the edge a round trip per key and bits at 1 Hz, and
could not decode a spool backlog of days): the chain state lives in the store
(`cloud.store.chains`) and frames are decoded in order there.

- A frame with a ChainHead starts a chain and always decodes alone. Its model is its head's
  model ref; an unknown one parks it (`cloud.ingest.handler`) until the model is registered.
- A chained frame decodes when the tip its predecessor left is stored; otherwise it is kept
  PENDING in the store (bounded: `IngestLimits.pending_*`) and committed, so it is
  receipted and acknowledged like a stored frame: durably queued, never lost.
- Every decode then tries the pending successor (bd_seq, seq + 1), and so on, in the same
  transaction: a predecessor arriving days later decodes the whole chain waiting for it.
- Each decode runs in `Store.edge_transaction(edge)`, which holds the edge's lock (PostgreSQL:
  pg_advisory_xact_lock; SQLite: the exclusive write transaction), so workers sharing a
  subscription (`serve --workers N`) never decode one chain at once and always read the
  committed state.
- Frames that cannot be decoded are given up, counted per edge and reason in the store's
  ``undecodable`` (measurements and frames) and in the service's counters: "dropped" (the
  edge's spool dropped a frame the chain needs: the ranges its heartbeats carry), "model_unknown"
  (the chain's model is not registered any more), "model_mismatch" (a head's L or K, or an audit's
  length, is not its model's), "payload_<WireError reason>" (the payload does not decode),
  "time_window" (a pending frame's times lie outside the window). A frame given up on arrival
  is refused with a receipt (the service dead-letters it, as other refused frames); a pending
  frame given up is deleted, its count kept. Its chain's tip is marked given up, so the
  frames after it are given up too, with the same reason, and decoding resumes at the edge's
  next chain start (its next key frame).

Predictions: the run's KPI predictor (`TemporalModel.predict`) over the last `window` decoded
rows of the edge's session: those this worker decoded last, else read back from the store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...shared.chainframe import ChainFrame, decode_chain_frame
from ...shared.errors import WireError
from ...shared.temporalcodec import ChainState
from ...shared.wire import Frame, Record
from ..codec.payloaddecoder import decode_payload
from ..store.rows import ChainTip, FrameRow, MeasurementRow, PendingFrame
from .audit import audit_accuracy
from .digest import chain_digest
from .temporal import TemporalModel

if TYPE_CHECKING:
    from .handler import FrameIngest

__all__ = [
    "MAX_DROPPED_RANGES", "ChainIngest", "key_flags", "parse_dropped", "predictions_of",
    "stored_rows",
]  # fmt: skip

log = logging.getLogger(__name__)

MAX_DROPPED_RANGES = 32  # [bd_seq, first_seq, last_seq] ranges a heartbeat carries at most
_U32 = 2**32 - 1
# Outcomes of a decoded frame whose chain goes on from its state (held for its times or not)
_CONTINUED = frozenset({"stored", "time_window"})


@dataclass
class _Recent:
    """Per edge: the decoded rows (normalised, [<= W - 1, D]) up to frame (bd_seq, seq)."""

    bd_seq: int
    seq: int
    model_sha256: str
    rows: np.ndarray
    touched: float  # the ingest's clock when it was kept


class ChainIngest:
    """The version 3 half of `FrameIngest` (`host`: its store, registry, counters, bounds)."""

    def __init__(self, host: FrameIngest) -> None:
        self.host = host
        self._recent: dict[str, _Recent] = {}

    def forget(self, quiet_since: float | None = None) -> None:
        """Drop the decoded rows kept per edge: all (a batch they came from was rolled
        back), or those of edges quiet since `quiet_since` (the ingest's clock); an edge's
        next frame reads them back from the store."""
        if quiet_since is None:
            self._recent = {}
        else:
            self._recent = {e: r for e, r in self._recent.items() if r.touched >= quiet_since}

    # -- arrival --------------------------------------------------------------------------

    def handle(self, topic: str, edge: str, data: bytes, now_ms: int) -> tuple[str, ChainFrame]:
        """One version 3 DATA message -> (outcome, its frame); WireError when it is not a
        valid frame (refused by the caller, no receipt)."""
        host = self.host
        frame = decode_chain_frame(data)
        host.stats.add("frames_v3")
        digest = chain_digest(frame)
        message = (topic, data, now_ms)
        model = None
        if frame.head is not None:
            model = host._decoder(frame.head.model_ref)  # (unparks what waited for it)
            if model is None:
                return host._park(topic, edge, frame.head.model_ref, data, now_ms), frame
        try:
            with host.store.edge_transaction(edge):
                if frame.head is None:
                    outcome = self._chained(message, edge, frame, digest, late=False)
                else:
                    outcome = self._decode(message, edge, frame, digest, model, None, late=False)
                if outcome in _CONTINUED:
                    self._successors(edge, frame.bd_seq, frame.seq + 1)
        except Exception as exc:
            self._recent.pop(edge, None)
            where = f"{edge} bdSeq {frame.bd_seq} seq {frame.seq}"
            return host._reject("store_error", "%s: %r", where, exc), frame
        return outcome, frame

    def _chained(
        self,
        message: tuple[str, bytes, int],
        edge: str,
        frame: ChainFrame,
        digest: str,
        late: bool,
    ) -> str:
        """A chained frame: decoded from its predecessor's tip, given up after a given-up
        one, or kept pending when the predecessor is not processed yet."""
        store = self.host.store
        tip = store.chain_tip(edge, frame.bd_seq, frame.seq - 1)
        if tip is None:
            return self._wait(message, edge, frame, digest)
        if tip.state is None or tip.model_sha256 is None:
            why = "a frame before it was given up"
            return self._refuse("undecodable", tip.reason or "dropped", edge, frame, late, why)
        model = self.host.registry.resolve(bytes.fromhex(tip.model_sha256[:16]))
        if not isinstance(model, TemporalModel):
            why = f"its chain's model {tip.model_sha256[:16]} is not registered"
            return self._refuse("undecodable", "model_unknown", edge, frame, late, why)
        try:
            state = ChainState.from_json(tip.state, model.codec.D)
        except ValueError:
            why = "its chain's state does not fit the model"
            return self._refuse("undecodable", "model_mismatch", edge, frame, late, why)
        return self._decode(message, edge, frame, digest, model, (state, tip), late)

    def _wait(
        self, message: tuple[str, bytes, int], edge: str, frame: ChainFrame, digest: str
    ) -> str:
        """Keep a chained frame until its predecessor is decoded (a repeat of a frame decoded,
        given up or pending already is a duplicate, or a clone)."""
        host, store = self.host, self.host.store
        topic, data, now_ms = message
        key = (edge, frame.bd_seq, frame.seq)
        if store.has_frame(*key):
            return host._repeat(topic, edge, frame, data, now_ms, digest)
        if store.chain_tip(*key) is not None:  # given up before: its tip says so
            host.stats.add("duplicates")
            return "duplicate"
        waiting = store.pending_frame(*key)
        if waiting is not None:
            if waiting.digest == digest:
                host.stats.add("duplicates")
                return "duplicate"
            why = "pending with other content (two agents with one edge id?)"
            return host._hold("clone", edge, frame, message, why, digest)
        if host._pending.full(edge):
            return host._reject(
                "pending_full", "%s: %d chained frames of this edge (%d in all) wait for their "
                "predecessor: not kept, no receipt", edge, host._pending.of(edge),
                host._pending.total,
            )  # fmt: skip
        row = PendingFrame(frame.bd_seq, frame.seq, frame.count, digest, topic, data, now_ms)
        if store.add_pending(edge, row):
            host._pending.add(edge)
        host.stats.add("pending")
        return "pending"

    # -- decoding -------------------------------------------------------------------------

    def _decode(
        self,
        message: tuple[str, bytes, int],
        edge: str,
        frame: ChainFrame,
        digest: str,
        model: object,
        context: tuple[ChainState, ChainTip] | None,
        late: bool,
    ) -> str:
        """Decode `frame` from `context` (its predecessor's state and tip; None: a head),
        store its measurements and its tip. `late`: it was pending (receipted already), so
        what goes wrong is counted as given up, never refused."""
        host = self.host
        topic, data, received_ms = message
        if not isinstance(model, TemporalModel):
            why = "the model of a version 3 frame is not a temporal codec"
            return self._refuse("model_mismatch", "model_mismatch", edge, frame, late, why)
        m, codec = model.manifest, model.codec
        head = frame.head
        audit_ok = all(a is None or len(a) == m.D for a in frame.audit or ())
        if (head is not None and (head.L, head.K) != (m.L, m.K)) or not audit_ok:
            why = (
                f"frame L, K or audit length is not model {m.model_ref.hex()}'s L={m.L} "
                f"K={m.K} D={m.D}"
            )
            return self._refuse("model_mismatch", "model_mismatch", edge, frame, late, why)
        state, tip = context if context is not None else (None, None)
        period = head.period_ms if head is not None else tip.period_ms  # type: ignore[union-attr]
        keys = key_flags(frame)
        try:
            times = frame.times(None if head else period, None if tip is None else tip.last_ms)
            decoded = decode_payload(codec, frame.payload, keys, state)
        except WireError as exc:
            reason = f"payload_{exc.reason}"
            return self._refuse("decode_error", reason, edge, frame, late, str(exc))
        new_tip = ChainTip(frame.bd_seq, frame.seq, m.model_sha256, decoded.state.to_json(),
                           times[-1], period)  # fmt: skip
        outside = host.limits.times_error(times, received_ms)
        if outside is not None:  # not stored, but its chain goes on from its state
            host.store.set_chain_tip(edge, new_tip)
            if late:
                self._count(edge, frame.count, "time_window")
                return "time_window"
            return host._hold("time_window", edge, frame, message, outside, digest)
        kpis = codec.to_raw(decoded.recon)
        predictions = self._predict(edge, frame, model, decoded.recon)
        row, rows = stored_rows(message, edge, frame, digest, model, times, period,
                                decoded.codes, kpis, predictions)  # fmt: skip
        self.known(model)
        accuracy = self._accuracy(edge, frame, model, times, period, kpis, predictions)
        if not host.store.store_frame(row, rows, accuracy):
            return host._repeat(topic, edge, frame, data, received_ms, digest)
        host.store.set_chain_tip(edge, new_tip)
        host.stats.add("frames_ok")
        host.stats.add("records_stored", frame.count)
        host.stats.add("predictions", sum(p is not None for p in predictions))
        return "stored"

    def known(self, model: TemporalModel) -> None:
        """Register `model`'s KPI names in the store once (before its first frame)."""
        host, m = self.host, model.manifest
        if m.model_ref not in host._known:
            host.store.register_model(m.model_ref, m.kpis, m.target)
            host._known.add(m.model_ref)

    def _successors(self, edge: str, bd_seq: int, seq: int) -> None:
        """Decode the pending frames that follow a decoded one, in order, while they come."""
        host, store = self.host, self.host.store
        while (waiting := store.pending_frame(edge, bd_seq, seq)) is not None:
            store.drop_pending(edge, bd_seq, seq)
            host._pending.remove(edge)
            host.stats.add("pending_decoded")
            frame = decode_chain_frame(waiting.payload)  # it decoded when it came
            message = (waiting.topic, waiting.payload, waiting.received_ms)
            if self._chained(message, edge, frame, waiting.digest, late=True) not in _CONTINUED:
                return
            seq += 1

    # -- giving up ------------------------------------------------------------------------

    def _refuse(
        self, outcome: str, reason: str, edge: str, frame: ChainFrame, late: bool, why: str
    ) -> str:
        """Give up `frame` for `reason` (see `_give_up`); refused as `outcome` when it just
        came, "undecodable" when it was pending (receipted already)."""
        self._give_up(edge, frame, reason)
        if late:
            return "undecodable"
        where = f"{edge} bdSeq {frame.bd_seq} seq {frame.seq}"
        return self.host._reject(outcome, "%s: given up (%s): %s", where, reason, why)

    def _give_up(self, edge: str, frame: ChainFrame, reason: str) -> None:
        """Give up `frame` and the pending frames after it: counted, its tip marked."""
        store = self.host.store
        store.set_chain_tip(edge, ChainTip(frame.bd_seq, frame.seq, None, None, 0, 0, reason))
        self._count(edge, frame.count, reason)
        self._cascade(edge, frame.bd_seq, frame.seq + 1, reason)

    def _cascade(self, edge: str, bd_seq: int, seq: int, reason: str) -> None:
        """Give up the pending frames from `seq` on while they follow each other."""
        store = self.host.store
        while (waiting := store.pending_frame(edge, bd_seq, seq)) is not None:
            store.drop_pending(edge, bd_seq, seq)
            self.host._pending.remove(edge)
            store.set_chain_tip(edge, ChainTip(bd_seq, seq, None, None, 0, 0, reason))
            self._count(edge, waiting.n_records, reason)
            seq += 1

    def _count(self, edge: str, measurements: int, reason: str) -> str:
        self.host.store.count_undecodable(edge, reason, 1, measurements)
        self.host.stats.undecodable(reason, 1, measurements)
        self.host._throttle.warning(
            "undecodable", "%s: %d measurements given up (%s)", edge, measurements, reason
        )
        return "undecodable"

    def give_up_dropped(self, edge: str, ranges: Sequence[tuple[int, int, int]]) -> int:
        """The edge's spool dropped frames `ranges` ([bd_seq, first, last]): give up at once
        the pending frames whose chain needs one of them; returns how many were given up."""
        store = self.host.store
        before = self.host.stats.get("undecodable_frames")
        with store.edge_transaction(edge):
            for bd_seq, first, last in ranges:
                for seq in store.pending_seqs(edge, bd_seq, first + 1, last + 1):
                    self._cascade(edge, bd_seq, seq, "dropped")
                key = (edge, bd_seq, last)
                if not store.has_frame(*key) and store.chain_tip(*key) is None:
                    store.set_chain_tip(edge, ChainTip(bd_seq, last, None, None, 0, 0, "dropped"))
        return self.host.stats.get("undecodable_frames") - before

    # -- predictions and audits -----------------------------------------------------------

    def _predict(
        self, edge: str, frame: ChainFrame, model: TemporalModel, recon: np.ndarray
    ) -> list[float | None]:
        """The predictions of the frame's measurements (None where there is none)."""
        try:
            window = self.window_of(edge, frame, model, recon)
            if window is None:
                return [None] * frame.count
            stacked, before = window
            return predictions_of(model.predict(stacked)[before:])
        except Exception as exc:  # store the KPIs without predictions rather than lose them
            self.prediction_failed(edge, exc)
            return [None] * frame.count

    def window_of(
        self, edge: str, frame: ChainFrame, model: TemporalModel, recon: np.ndarray
    ) -> tuple[np.ndarray, int] | None:
        """The rows the predictor reads for `frame` (normalised: the W - 1 decoded before it
        in its session, then its own `recon`) and how many come before it; None when there
        are fewer than W (or no predictor). Keeps the last W - 1 for the edge's next frame."""
        w = model.window
        if w < 1:
            return None
        sha = model.manifest.model_sha256
        old = self._recent.get(edge)
        if old is not None and (old.bd_seq, old.seq + 1, old.model_sha256) == (
            frame.bd_seq, frame.seq, sha,
        ):  # fmt: skip
            prefix = old.rows
        else:
            prefix = self._history(edge, frame, model, w)
        stacked = np.concatenate([prefix, recon])
        keep = stacked[max(len(stacked) - (w - 1), 0) :] if w > 1 else stacked[:0]
        self._recent[edge] = _Recent(frame.bd_seq, frame.seq, sha, keep, self.host._clock())
        return None if len(stacked) < w else (stacked, len(prefix))

    def prediction_failed(self, edge: str, exc: Exception) -> None:
        self.host._throttle.warning("prediction", "prediction failed for %s: %r", edge, exc)
        self.host.stats.add("prediction_errors")

    def _history(self, edge: str, frame: ChainFrame, model: TemporalModel, w: int) -> np.ndarray:
        """The last W - 1 decoded rows before `frame` (normalised) from the store: the frames
        just before it in its session, consecutive and of its model; fewer when one is missing."""
        D, ref = model.codec.D, model.manifest.model_ref.hex()
        rows: list[list[float]] = []
        expected = frame.seq - 1
        stored = self.host.store.recent_kpis(edge, frame.bd_seq, frame.seq, w - 1)
        for seq, model_ref, kpis in stored:
            if seq not in (expected, expected + 1) or model_ref != ref or len(kpis) != D:
                break
            rows.insert(0, [math.nan if v is None else float(v) for v in kpis])
            expected = seq - 1
        raw = np.asarray(rows, dtype=np.float64).reshape(-1, D)
        return model.normalise(raw) if len(raw) else raw

    def _accuracy(
        self,
        edge: str,
        frame: ChainFrame,
        model: TemporalModel,
        times: Sequence[int],
        period: int,
        kpis: np.ndarray,
        predictions: Sequence[float | None],
    ) -> list[Any]:
        """The audit samples' error sums (`cloud.ingest.audit`), as for a version 2 frame."""
        if frame.audit is None:
            return []
        m = model.manifest
        records = tuple(Record(t, (), a) for t, a in zip(times, frame.audit, strict=True))
        view = Frame(m.model_ref, frame.bd_seq, frame.seq, m.L, m.K, period, records)
        try:
            earlier = self.host.store.prediction_for
            return audit_accuracy(
                edge, view, model, kpis, predictions, lambda a, b: earlier(edge, a, b)
            )
        except Exception as exc:  # the measurements matter more than their audit
            self.host._throttle.warning("accuracy", "audit of %s failed: %r", edge, exc)
            self.host.stats.add("accuracy_errors")
            return []


def key_flags(frame: ChainFrame) -> list[bool]:
    """Which of the frame's measurements are keys ([count]), as `decode_payload` takes them."""
    flags = [False] * frame.count
    for k in frame.keys:
        flags[k] = True
    return flags


def predictions_of(values: np.ndarray) -> list[float | None]:
    """Predicted values as stored: None where not finite."""
    return [float(v) if math.isfinite(v) else None for v in values]


def stored_rows(
    message: tuple[str, bytes, int],
    edge: str,
    frame: ChainFrame,
    digest: str,
    model: TemporalModel,
    times: Sequence[int],
    period: int,
    codes: Sequence[tuple[int, ...]],
    kpis: np.ndarray,
    predictions: Sequence[float | None],
) -> tuple[FrameRow, list[MeasurementRow]]:
    """What the store keeps of a decoded chained frame: its row and its measurements' rows
    (`kpis`: raw units, [count, D]; predictions of the target `model.horizon` periods on)."""
    _, data, received_ms = message
    step = model.horizon * period
    rows = [
        MeasurementRow(
            rec=i, t_ms=times[i], nnz=len(codes[i]), codes=codes[i],
            kpis=tuple(kpis[i].tolist()), prediction=predictions[i],
            predicted_t_ms=None if predictions[i] is None else times[i] + step,
            audit=None if frame.audit is None else frame.audit[i],
        )
        for i in range(frame.count)
    ]  # fmt: skip
    row = FrameRow(edge, frame.bd_seq, frame.seq, model.manifest.model_ref, frame.count,
                   len(data), frame.historical, received_ms, digest)  # fmt: skip
    return row, rows


def parse_dropped(value: object) -> list[tuple[int, int, int]]:
    """A heartbeat's ``dropped`` field: up to MAX_DROPPED_RANGES [bd_seq, first_seq,
    last_seq] ranges (ints in 0..2**32-1, first <= last); WireError("dropped") otherwise.
    None (an edge that does not send it) is no range."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_DROPPED_RANGES:
        raise WireError(f"dropped must be a list of at most {MAX_DROPPED_RANGES} ranges",
                        reason="dropped")  # fmt: skip
    out = []
    for item in value:
        ok = isinstance(item, list | tuple) and len(item) == 3
        ok = ok and all(type(v) is int and 0 <= v <= _U32 for v in item)
        if not ok or item[1] > item[2]:
            raise WireError(f"bad dropped range {item!r:.80}", reason="dropped")
        out.append((int(item[0]), int(item[1]), int(item[2])))
    return out
