"""The next version 3 frame, coded while its measurements come: `FrameAhead`.

The temporal codec's closed loop codes each measurement against the one before it, so it
need not wait for the frame: the frame loop hands each measurement to `arrived` as it takes
it from the intake (`edge.intake`), and when the frame is due `take` only ends the range
coder. A frame of 50 then costs its last measurement's step and a flush when it leaves, not
50 steps at once (the agent's latency goal is per measurement: under 1 ms at p99).

What it coded is used only if it is exactly what the frame loop would code at that moment:
the same encoder, the same chain state (or a key), the same measurements in the same order
(`take` codes the ones it has not seen, e.g. those drained at a stop). Anything else -- a
model switch or a chain cut between, a frame halved for its size, a measurement the encoder
refused -- and `take` returns None: the frame loop codes the frame itself, as it always did,
and reports what went wrong there. Coding ahead changes no byte of any frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..shared.temporalcodec import ChainState
from ..shared.temporalpayload import Decoded, PayloadEncoder
from .chain import FrameChain
from .heartbeat import EncodeClock
from .source import Measurement
from .temporalencoder import TemporalEncoder

__all__ = ["FrameAhead"]

log = logging.getLogger(__name__)


@dataclass
class _Open:
    """A frame being coded: its encoder, whether it keys, the state it continues, what it
    holds, and (for `FrameChain.due`) the measurements since the last key and that key's time."""

    encoder: TemporalEncoder
    key: bool
    state: ChainState | None
    payload: PayloadEncoder
    since_key: int
    key_ms: int
    sent: list[Measurement] = field(default_factory=list)
    closed: bool = False  # a key falls due: the frame ends before the next measurement


class FrameAhead:
    """The frame the next `take` is asked for, coded measurement by measurement."""

    def __init__(self, clock: EncodeClock | None = None) -> None:
        self.clock = clock  # each step's time, for the heartbeat's encode latency
        self._open: _Open | None = None
        self._broken = False  # a step failed: nothing more is coded until the next take
        self.used = 0  # frames taken as coded ahead
        self.missed = 0  # frames the loop had to code itself

    def arrived(
        self,
        encoder: TemporalEncoder,
        chain: FrameChain,
        m: Measurement,
        margin: float | None = None,
    ) -> None:
        """Code `m` into the open frame (opening one, keyed or not as `chain` says); a
        measurement outside the model's range by `margin` is left out, as the frame loop
        leaves it out."""
        if self._broken:
            return
        now = self._open
        if now is not None and (now.closed or now.encoder is not encoder):
            return
        if margin is not None and not encoder.valid_row(m.values, margin):
            return
        started = time.perf_counter()
        try:
            if now is None:
                key, since, key_ms = chain.opening(m.t_ms)
                state = None if key else chain.state
                coder = PayloadEncoder(encoder.codec, state)
                now = _Open(encoder, key, state, coder, since, key_ms)
                self._open = now
            elif chain.due(now.since_key, now.key_ms, m.t_ms):
                now.closed = True
                return
            now.payload.add(m.values, now.key and not now.sent)
        except Exception as exc:  # an optimisation only: the frame loop codes the frame itself
            log.debug("coding ahead stopped: %r", exc)  # and meets (and reports) this there
            self._broken, self._open = True, None
            return
        now.sent.append(m)
        now.since_key += 1
        if self.clock is not None:
            self.clock.record(time.perf_counter() - started, 1)

    def take(
        self,
        encoder: TemporalEncoder,
        key: bool,
        state: ChainState | None,
        sent: Sequence[Measurement],
    ) -> tuple[bytes, Decoded] | None:
        """The payload of a frame of `sent`, keyed or continuing `state`, if what was coded
        ahead is its beginning (the rest is coded now); else None. Either way the next
        measurement opens a new frame."""
        now, self._open, self._broken = self._open, None, False
        ahead = [] if now is None else now.sent
        fits = (
            now is not None
            and now.encoder is encoder
            and now.key == key
            and now.state is (None if key else state)
            and len(ahead) <= len(sent)
            and all(a is b for a, b in zip(ahead, sent, strict=False))
        )
        if not fits or now is None:
            self.missed += 1
            return None
        started = time.perf_counter()
        try:
            for m in sent[len(ahead) :]:
                now.payload.add(m.values, now.key and now.payload.count == 0)
            out = now.payload.finish()
        except Exception as exc:  # as in `arrived`
            log.debug("coding ahead failed at the end: %r", exc)
            self.missed += 1
            return None
        if self.clock is not None:
            self.clock.record(time.perf_counter() - started, len(sent) - len(ahead))
        self.used += 1
        return out
