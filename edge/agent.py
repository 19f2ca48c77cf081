"""The edge agent: measure, encode, frame, publish; from start-up checks to a clean death.

`run_agent(cfg)` is what ``sparsetel edge`` runs. It fails fast, with a one-line reason,
before touching the network: ids are checked, the model's sha256, self-test and KPI schema
are verified and the source is opened (`edge.framer.Framer`); bdSeq (``state_dir/bdseq``)
is incremented and persisted, so every run has a new bdSeq even after a crash (a new state
directory, by default a per-user folder, starts at a random one; see `edge.statedir`). Then it
connects: a broker that does not answer within `connect_timeout_s` is retried in the
background (with jittered backoff) while the agent measures into its spool; one that refuses
it is fatal. At the end of the source, or on SIGTERM/SIGINT, it flushes the partial batch,
waits (bounded) for the broker's acknowledgements, publishes the death and disconnects.

The parts, each in its module:

- `edge.intake`: a reader thread fills a bounded queue, so a blocking source never holds
  back a due frame or a stop; `edge.source` and `edge.replay` are the sources.
- `edge.framer`: the frame loop (batch, range check, encode, frame).
- `edge.delivery` and `edge.spool`: every frame on disk before it is published, until the
  broker acknowledges it; leftovers of earlier runs first, flagged historical; a CSV replay
  resumes after the last spooled frame.
- `edge.updater` and `edge.modelslots`: signed model deployment, switch between two frames,
  automatic and commanded rollback.
- `edge.heartbeat`: heartbeats on HEALTH every `health_interval_s`.
- `edge.publisher`: the paho client (birth, death as last will, NCMD, QoS 1 frames).
"""

from __future__ import annotations

import json
import logging
import time
from typing import IO

from ..shared.errors import ConfigError, SparsetelError
from ..shared.signals import stop_on_signals
from .delivery import Delivery
from .framer import AgentStats, Framer
from .publisher import Publisher
from .settings import EdgeConfig
from .spool import Spool, SpoolLimits
from .statedir import BDSEQ_FILE, lock_state_dir, next_bd_seq
from .updater import Updater

__all__ = ["AgentStats", "EdgeConfig", "run_agent"]

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.db"


def _finish(agent: Framer, delivery: Delivery, stats: AgentStats) -> None:
    """Wait for acks (bounded), publish the death, disconnect; fill in the counters."""
    cfg, publisher = agent.cfg, delivery.publisher
    staged = agent.models.staged
    if staged is not None and agent.updater is not None:
        agent.updater.report(staged.deployment, "rejected", None, "the agent stopped first")
    delivery.resend()
    if not publisher.wait_for_acks(cfg.ack_timeout_s):
        log.warning("not every frame was acknowledged within %g s", cfg.ack_timeout_s)
    if not delivery.wait_for_receipts(cfg.ack_timeout_s):
        log.warning(
            "%d frames have no store receipt after %g s: kept in the spool for the next run",
            delivery.spool.depth,
            cfg.ack_timeout_s,
        )
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
    stats.invalid_cells.update(agent.source.stats.invalid_cells)
    spool = delivery.spool
    stats.replayed = delivery.stats.replayed
    stats.deferred = delivery.stats.deferred
    stats.resent = delivery.stats.resent + delivery.stats.unconfirmed_resent
    stats.receipts = delivery.stats.receipts
    stats.confirmed = spool.stats.confirmed
    key = agent.source.resume_key
    if key is not None and agent.intake.done and agent.intake.error is None:
        spool.clear_cursor(key)  # read to its end: a next run starts over
    stats.spool_depth = spool.depth
    # lost for good: beyond the spool's bounds, or damaged on its disk
    stats.spool_dropped = (
        spool.stats.dropped_full + spool.stats.dropped_age + delivery.stats.damaged
    )


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
            "edge %s: %s measurements in %s frames (%s bytes), %s acked, %s confirmed, "
            "%s deferred to the spool, %s dropped by the spool, %s left in it, rejects %s",
            cfg.edge_id,
            stats.measurements,
            stats.frames,
            stats.bytes_sent,
            stats.acked,
            stats.confirmed,
            stats.deferred,
            stats.spool_dropped,
            stats.spool_depth,
            dict(stats.rejects),
        )
    if print_json:
        print(json.dumps(stats.to_dict()), flush=True)
    return code


def _run(cfg: EdgeConfig, stats: AgentStats, stdin: IO[bytes] | None) -> int:
    try:
        agent = Framer(cfg, stats, stdin)
    except (ValueError, ConfigError) as exc:
        return _fail(stats, 2, exc)
    except (SparsetelError, OSError) as exc:
        return _fail(stats, 1, exc)
    state_dir = cfg.resolved_state_dir
    try:
        with lock_state_dir(state_dir):
            fresh = not (state_dir / BDSEQ_FILE).exists()
            agent.bd_seq = stats.bd_seq = next_bd_seq(state_dir)
            log.info(
                "edge %s: state dir %s (%s), bdSeq %s",
                cfg.edge_id,
                state_dir.resolve(),
                "new: bdSeq drawn at random" if fresh else "bdSeq carried on",
                agent.bd_seq,
            )
            agent.birth()  # a birth the broker would carry must be valid before we connect
            limits = SpoolLimits(cfg.spool_max_bytes, cfg.spool_max_age_s)
            spool = Spool(state_dir / SPOOL_FILE, limits)
            try:
                agent.resume(spool)
                delivery = _connect(agent, spool)
                try:
                    with stop_on_signals(agent.stop):
                        agent.run(delivery)
                finally:
                    _finish(agent, delivery, stats)
            finally:
                spool.close()
    except (SparsetelError, OSError, ValueError) as exc:  # ConnectionError is an OSError
        return _fail(stats, 1, exc)
    if agent.intake.error is not None:
        stats.error = agent.intake.error
        return 1
    return 0


def _connect(agent: Framer, spool: Spool) -> Delivery:
    """The publisher, the updater and the delivery of one run, connected (or offline: a
    broker that does not answer yet is retried in the background)."""
    cfg = agent.cfg
    confirm_wait = cfg.confirm_wait_s if cfg.confirm == "store" else None

    # paho calls these only once connected, when `delivery` exists
    def on_ack(tag: int) -> None:
        delivery.on_broker_ack(tag)

    def on_receipt(payload: bytes) -> None:
        delivery.on_receipt(payload)

    publisher = Publisher(
        cfg.broker,
        group=agent.group,
        edge=agent.edge,
        birth=agent.birth,
        death=agent.death,
        max_queued=cfg.max_queued_frames,
        on_frame_acked=on_ack,
        on_command=agent.submit,
        on_receipt=on_receipt if confirm_wait is not None else None,
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
    agent.delivery = delivery = Delivery(spool, publisher, cfg.batch, confirm_wait)
    online = publisher.connect(cfg.connect_timeout_s)
    state = "online" if online else "measuring offline into the spool"
    log.info("edge %s/%s %s, bdSeq %s", agent.group, agent.edge, state, agent.bd_seq)
    return agent.delivery


def _fail(stats: AgentStats, code: int, exc: BaseException) -> int:
    stats.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    log.error("edge agent cannot run: %s", stats.error)
    return code
