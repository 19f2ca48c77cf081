"""The chained frames of a batch decoded and stored together: `ChainBatch`.

At 1 Hz an edge's frame holds one or two measurements, so the decoders see frames, not
measurements: handled one at a time (`cloud.ingest.chains`), each costs a transaction of
eight statements and most of a worker's time. Here the common case of a batch -- a chained
frame that goes on from the tip its predecessor left -- takes a few statements for the whole
batch instead: the tips of the batch's edges and their pending frames read in one query each,
every frame decoded in the batch's order (an edge's later frames from the state its earlier
ones left, in memory), the KPIs of one model converted to raw units at once, and the frames,
their measurements and the edges' new tips written by one statement each.

A frame is taken here only where the one-at-a-time path would store it or keep it pending:
no audit samples; a head of a registered temporal model whose L and K are the model's, or a
chained frame whose predecessor's tip (stored, or left by a frame earlier in the batch)
holds a state of such a model, or whose predecessor is not processed yet (it waits, pending);
no frame, tip or pending frame of its own key; a payload that decodes and times inside the
window. Frames waiting for a frame decoded here -- in the batch, or a run of them in the
store -- are decoded right after it, as that path does. Any other frame of a batch, and
every later frame of its edge in that batch (also after a heartbeat or an audited frame of
the edge), goes through `FrameIngest.handle` one at a time afterwards, exactly as before, so a
frame that is refused, given up, repeated or cloned gets the outcome, rows and counters it
always got (tests/unit/test_chain_batch.py compares the two paths' stores row by row).

Everything runs in one transaction (a savepoint inside a `batch_commits` batch), with the
chain locks of the batch's edges held (PostgreSQL; SQLite's write transaction is exclusive).
If anything in it fails, nothing of it is written and every frame goes the slow way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...shared.chainframe import ChainFrame, decode_chain_frame, is_chain_frame
from ...shared.errors import WireError
from ...shared.temporalcodec import ChainState
from ...shared.temporalpayload import Decoded
from ...shared.topics import parse_topic
from ..codec.payloaddecoder import decode_payload
from ..store.rows import ChainTip, PendingFrame
from .chains import key_flags, predictions_of, stored_rows
from .digest import chain_digest
from .temporal import TemporalModel

if TYPE_CHECKING:
    from .handler import FrameIngest

__all__ = ["ChainBatch"]

_Key = tuple[str, int, int]  # (edge, bd_seq, seq)
PENDING_RUN = 256  # pending frames read from the store at once, when their predecessor decodes


@dataclass(frozen=True)
class _Candidate:
    """A chained frame of the batch that may be decoded here."""

    at: int  # its position in the batch
    topic: str
    group: str
    edge: str
    data: bytes
    received_ms: int
    frame: ChainFrame


@dataclass(frozen=True)
class _Done:
    """A candidate decoded: what it leaves its chain and what it stores."""

    candidate: _Candidate
    model: TemporalModel
    times: list[int]
    period: int
    decoded: Decoded

    def tip(self) -> ChainTip:
        f, sha = self.candidate.frame, self.model.manifest.model_sha256
        return ChainTip(f.bd_seq, f.seq, sha, self.decoded.state.to_json(), self.times[-1],
                        self.period)  # fmt: skip


class ChainBatch:
    """The batch half of `ChainIngest` (`host`: the `FrameIngest` whose store, registry,
    counters and receipts it uses)."""

    def __init__(self, host: FrameIngest) -> None:
        self.host = host
        self.flood_checked: set[int] = set()  # positions the last run took through the flood limit

    def run(self, messages: Sequence[tuple[str, bytes, int]]) -> dict[int, str]:
        """Position -> outcome of each message of `messages` handled here: the chained frames
        stored or kept pending (committed, or inside the caller's batch), and those refused
        as "flood". The rest are the caller's, one at a time (`flood_checked`: those that
        passed the flood limit here already)."""
        host, out = self.host, dict[int, str]()
        host._sweep()
        candidates = self._candidates(messages, out)
        if not candidates:
            return out
        try:
            with host.store.batch():
                host.store.lock_edges([c.edge for c in candidates])
                work = self._decode(candidates)
                self._store(work)
        except Exception as exc:  # nothing of it was written: the slow path takes them all
            host._throttle.warning("chain_batch", "chained frames one at a time: %r", exc)
            host._known.clear()  # a model registered in it is registered again
            host.chains.forget()  # the rows it kept were rolled back
            host._count_held()  # the pending frames it counted, or took off, were not
            return out
        for c, outcome in work.outcomes:
            out[c.at] = outcome
            host.receipts.note(c.group, c.edge, c.frame.bd_seq, c.frame.seq)
        stats = host.stats
        stats.add("frames_v3", len(work.outcomes))
        stats.add("pending", sum(outcome == "pending" for _, outcome in work.outcomes))
        stats.add("pending_decoded", work.cascaded)
        stats.add("frames_ok", len(work.done))
        stats.add("records_stored", sum(item.candidate.frame.count for item in work.done))
        return out

    def _candidates(
        self, messages: Sequence[tuple[str, bytes, int]], out: dict[int, str]
    ) -> list[_Candidate]:
        """The well-formed version 3 DATA frames without audits, in batch order, up to an
        edge's first message left to the slow path (a heartbeat's dropped ranges, an audited
        frame: what it does to the edge's chains comes before the edge's later frames). Each
        version 3 DATA frame passes the flood limit here (or is refused into `out`)."""
        host, found, slow = self.host, [], set()
        self.flood_checked = set()
        for at, (topic, payload, received_ms) in enumerate(messages):
            try:
                parts = parse_topic(topic)
            except WireError:
                continue  # it names no edge: refused by the slow path
            frame = _chain_frame(str(parts.kind), payload)
            if frame is None:
                slow.add(parts.edge)
                continue
            if host.flood is not None:
                if not host.flood.allow(parts.edge):
                    why = "%s: more frames than the flood limit"
                    out[at] = host._reject("flood", why, topic)
                    continue
                self.flood_checked.add(at)
            if frame.audit is not None or parts.edge in slow:
                slow.add(parts.edge)
                continue
            found.append(_Candidate(at, topic, parts.group, parts.edge, bytes(payload),
                                    received_ms, frame))  # fmt: skip
        return found

    def _decode(self, candidates: Sequence[_Candidate]) -> _Pass:
        """The candidates in order, as the one-at-a-time path would take them: a head decodes
        alone; a chained frame decodes from the tip its predecessor left (stored, or in
        memory from earlier in the batch) or, with no such tip, waits (pending); a frame kept
        waiting, earlier in the batch or in the store, decodes right after its predecessor.
        An edge's frames stop at its first that the slow path must decide (it and the rest
        are the slow path's), or after a frame whose waiting successor does not decode here
        (`ChainIngest._successors` takes it after the batch's writes)."""
        store = self.host.store
        edges = [c.edge for c in candidates]
        work = _Pass(dict(store.tips_of(edges)), store.pending_of(edges))
        work.stored = set(work.tips)
        work.taken = store.frames_in([_key(c) for c in candidates])
        stopped: set[str] = set()
        for c in candidates:
            if c.edge in stopped:
                continue
            key = _key(c)
            known = key in work.tips or key in work.pending or key in work.waiting
            if known or key in work.taken or not self._take(work, c):
                stopped.add(c.edge)
        return work

    def _take(self, work: _Pass, c: _Candidate) -> bool:
        """Decode `c` (or keep it waiting) into `work`, then the frames waiting for it; False
        where the slow path must decide `c`, or the frames after it."""
        f, host = c.frame, self.host
        before = (c.edge, f.bd_seq, f.seq - 1)
        tip = work.tips.get(before)
        if tip is None and f.head is None:
            if host._pending.full(c.edge):
                return False  # (refused there, with its reason)
            work.waiting[_key(c)] = c
            work.outcomes.append((c, "pending"))
            host._pending.add(c.edge)
            return True
        item = self._decode_one(c, None if f.head is not None else tip)
        if item is None:
            return False
        work.outcomes.append((c, "stored"))
        while True:
            key = _key(item.candidate)
            work.tips.pop((c.edge, f.bd_seq, key[2] - 1), None)
            work.tips[key] = item  # (as `set_chain_tip`)
            work.taken.add(key)
            work.done.append(item)
            after = (c.edge, f.bd_seq, key[2] + 1)
            if after in work.pending and after not in work.waiting:
                self._load_pending(work, after)
            waiting = work.waiting.get(after)
            if waiting is None:
                return after not in work.pending  # (one it could not load: the slow path's)
            following = self._decode_one(waiting, item)
            if following is None:
                return False  # it stays pending: given up from the store, as the slow path would
            del work.waiting[after]
            if after in work.pending:
                work.pending.discard(after)
                work.unpended.append(after)
            host._pending.remove(c.edge)
            work.cascaded += 1
            item = following

    def _load_pending(self, work: _Pass, first: _Key) -> None:
        """The frames pending in the store from `first` on, while their seqs follow each other
        (up to PENDING_RUN), into `work.waiting`: decoded in the batch after their predecessor,
        as the slow path's successors are. A malformed or audited one, and the ones after it,
        stay the slow path's."""
        edge, bd_seq, seq = first
        for row in self.host.store.pending_run(edge, bd_seq, seq, PENDING_RUN):
            frame = _chain_frame("DATA", row.payload)
            if row.seq != seq or frame is None or frame.audit is not None:
                return
            group = parse_topic(row.topic).group
            c = _Candidate(-1, row.topic, group, edge, row.payload, row.received_ms, frame)
            work.waiting[(edge, bd_seq, seq)] = c
            seq += 1

    def _decode_one(self, c: _Candidate, tip: ChainTip | _Done | None) -> _Done | None:
        """`c` decoded from `tip` (None: `c` is a head), or None where the slow path must
        decide."""
        start = self._start(c, tip)
        if start is None:
            return None
        model, state, last_ms, period = start
        f = c.frame
        try:
            times = f.times(None if f.head else period, last_ms)
            decoded = decode_payload(model.codec, f.payload, key_flags(f), state)
        except (WireError, ValueError):
            return None
        if self.host.limits.times_error(times, c.received_ms) is not None:
            return None
        return _Done(c, model, list(times), period, decoded)

    def _start(
        self, c: _Candidate, tip: ChainTip | _Done | None
    ) -> tuple[TemporalModel, ChainState | None, int | None, int] | None:
        """(model, state, last time, period) `c` decodes from, or None where the slow path
        must decide: a model not registered (a head's is parked there), a tip given up."""
        if isinstance(tip, _Done):
            return tip.model, tip.decoded.state, tip.times[-1], tip.period
        if tip is None:
            head = c.frame.head
            found = None if head is None else self.host.registry.get(head.model_ref)
            if head is None or not isinstance(found, TemporalModel):
                return None
            m = found.manifest
            return (found, None, None, head.period_ms) if (head.L, head.K) == (m.L, m.K) else None
        if tip.state is None or tip.model_sha256 is None:
            return None  # given up
        model = self.host.registry.resolve(bytes.fromhex(tip.model_sha256[:16]))
        if not isinstance(model, TemporalModel):
            return None
        try:
            return model, ChainState.from_json(tip.state, model.codec.D), tip.last_ms, tip.period_ms
        except ValueError:
            return None

    def _store(self, work: _Pass) -> None:
        """Predict, write the frames, their measurements, the frames left waiting and the
        edges' tips, then decode the pending frames that follow each chain's new tip."""
        host, chains, rows = self.host, self.host.chains, []
        predicted = 0
        all_predictions = self._predict(work.done)
        for item, values, predictions in zip(work.done, _raw(work.done), all_predictions,
                                             strict=True):  # fmt: skip
            c = item.candidate
            message = (c.topic, c.data, c.received_ms)
            predicted += sum(p is not None for p in predictions)
            chains.known(item.model)
            rows.append(stored_rows(message, c.edge, c.frame, chain_digest(c.frame), item.model,
                                    item.times, item.period, item.decoded.codes, values,
                                    predictions))  # fmt: skip
        store = host.store
        if rows:
            store.store_frames(rows)
        new_waiting = [(k[0], _pending_row(c)) for k, c in work.waiting.items() if c.at >= 0]
        if new_waiting:
            store.add_pendings(new_waiting)
        if work.unpended:
            store.drop_pendings(work.unpended)
        new = [(key[0], tip.tip()) for key, tip in work.tips.items() if isinstance(tip, _Done)]
        store.move_tips(new, sorted(work.stored - set(work.tips)))
        host.stats.add("predictions", predicted)
        pending = work.pending | set(work.waiting)
        for edge, tip in new:  # (the batch holds the edges' locks: no frame came since)
            if (edge, tip.bd_seq, tip.seq + 1) in pending:
                chains._successors(edge, tip.bd_seq, tip.seq + 1)

    def _predict(self, done: Sequence[_Done]) -> list[list[float | None]]:
        """Each decoded frame's predictions, as `ChainIngest._predict` gives them: the
        windows taken in order (each edge's next frame goes on from the rows its last one
        kept), then each model's predictor run once over all its windows."""
        chains = self.host.chains
        out: list[list[float | None]] = [[None] * item.candidate.frame.count for item in done]
        by_model: dict[int, list[tuple[int, np.ndarray, int]]] = {}
        for i, item in enumerate(done):
            c = item.candidate
            try:
                window = chains.window_of(c.edge, c.frame, item.model, item.decoded.recon)
            except Exception as exc:  # (the store's history could not be read)
                chains.prediction_failed(c.edge, exc)
                continue
            if window is not None:
                by_model.setdefault(id(item.model), []).append((i, *window))
        for group in by_model.values():
            model = done[group[0][0]].model
            values: list[np.ndarray | None]
            try:
                values = list(model.predict_many([stacked for _, stacked, _ in group]))
            except Exception:  # each alone, to fail (and be counted) as the slow path would
                values = [None] * len(group)
            for (i, stacked, before), these in zip(group, values, strict=True):
                try:
                    found = model.predict(stacked) if these is None else these
                    out[i] = predictions_of(found[before:])
                except Exception as exc:
                    chains.prediction_failed(done[i].candidate.edge, exc)
        return out


@dataclass
class _Pass:
    """One batch's work: the chains' tips as the batch leaves them (stored ones, and frames
    decoded here), what it decodes and keeps waiting, and each candidate's outcome."""

    tips: dict[_Key, ChainTip | _Done]
    pending: set[_Key]  # the keys of the frames pending in the store
    stored: set[_Key] = field(default_factory=set)  # the keys of the stored tips
    taken: set[_Key] = field(default_factory=set)  # stored frames, and those decoded here
    waiting: dict[_Key, _Candidate] = field(default_factory=dict)  # kept pending (at -1: stored)
    unpended: list[_Key] = field(default_factory=list)  # pending in the store, decoded here
    done: list[_Done] = field(default_factory=list)  # decoded, in order
    outcomes: list[tuple[_Candidate, str]] = field(default_factory=list)
    cascaded: int = 0  # frames kept waiting here, then decoded after their predecessor


def _pending_row(c: _Candidate) -> PendingFrame:
    f = c.frame
    return PendingFrame(f.bd_seq, f.seq, f.count, chain_digest(f), c.topic, c.data, c.received_ms)


def _chain_frame(kind: str, payload: bytes) -> ChainFrame | None:
    """A version 3 DATA message's frame; None for any other message, or a malformed frame
    (refused by the slow path, with its reason)."""
    if kind.upper() != "DATA" or not is_chain_frame(payload):
        return None
    try:
        return decode_chain_frame(bytes(payload))
    except WireError:
        return None


def _key(c: _Candidate) -> _Key:
    return (c.edge, c.frame.bd_seq, c.frame.seq)


def _raw(done: Sequence[_Done]) -> list[np.ndarray]:
    """Each decoded frame's KPIs in raw units ([count, D]), converted model by model in one
    call each (at one measurement a frame the call, not the arithmetic, is the cost)."""
    out: list[np.ndarray | None] = [None] * len(done)
    by_model: dict[int, list[int]] = {}
    for i, item in enumerate(done):
        by_model.setdefault(id(item.model), []).append(i)
    for positions in by_model.values():
        codec = done[positions[0]].model.codec
        raw = codec.to_raw(np.concatenate([done[i].decoded.recon for i in positions]))
        at = 0
        for i in positions:
            n = len(done[i].decoded.recon)
            out[i] = raw[at : at + n]
            at += n
    return [r for r in out if r is not None]
