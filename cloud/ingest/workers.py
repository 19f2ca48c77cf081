"""`sparsetel serve --workers N`: N decoder services, one process each, sharing the DATA stream.

Each worker is a `DecoderService` with ``shared=True``: MQTT 5, DATA through the shared
subscription ``$share/decoders/sparsetel/v1/{group}/DATA/+`` (the broker hands each frame to
one of them), STATE subscribed by every worker. They write to the same store; its key (edge,
bd_seq, seq) keeps any frame from landing twice, whichever worker it reached and however often.
Each worker's client id is the service's (configured, or derived from its group: see
`session`) with a ``-w<i>`` suffix, so each keeps a persistent session of its own; with
``metrics = "HOST:PORT"`` worker i serves its metrics on PORT+i. Separate hosts scale the same
way: run ``sparsetel serve`` with ``shared = true`` on each.

The parent starts the workers (spawned, so none inherits the parent's threads), forwards
SIGTERM/SIGINT to them, stops them all once `stop_after_records` are in the store, and sums
their counters. A worker sees only some frames of an edge, so sequence gaps are counted in the
store, and a worker continues an edge's prediction window from the frames that another worker
stored before (`FrameIngest._history`). Each worker gives torch its share of the cores (at least
one thread): N workers each running torch on every core would fight over them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from ...shared.signals import stop_on_signals
from ..store.database import Store, open_store
from .mqttsession import serve_client_id
from .servemetrics import parse_listen
from .service import ServeConfig, run_service_stats

__all__ = ["run_workers", "torch_threads", "worker_configs"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 20  # killed workers started again, in all, before giving up on restarting
_SUMMED = (
    *("messages", "frames_ok", "records_stored", "duplicates", "predictions", "parked"),
    *("acks", "queue_waits", "queue_full", "takeovers", "clones", "frames_v1", "unparked"),
)


def worker_configs(cfg: ServeConfig) -> list[ServeConfig]:
    """The configuration of each of the `cfg.workers` workers."""
    base = cfg.broker.client_id
    if base is None and not cfg.clean_session:  # a clean session keeps its random ids
        base = serve_client_id(None, cfg.group)
    out = []
    for i in range(cfg.workers):
        client_id = None if base is None else f"{base}-w{i}"
        broker = replace(cfg.broker, protocol="5", client_id=client_id)
        worker = replace(cfg, broker=broker, shared=True, workers=1, stop_after_records=None)
        if cfg.metrics is not None:
            worker = replace(worker, metrics=_worker_metrics(cfg.metrics, i))
        out.append(worker)
    return out


def _worker_metrics(listen: str, i: int) -> str:
    """Worker i's metrics address: PORT+i (port 0, any free port, stays 0)."""
    host, port = parse_listen(listen)
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + i if port else 0}"


def torch_threads(workers: int, cores: int | None = None) -> int:
    """Threads for torch in each of `workers` workers: their share of the cores, at least 1."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // max(1, workers))


def _worker(cfg: ServeConfig, results: mp.Queue[tuple[int, dict[str, Any]]], threads: int) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import torch  # the models' runtime: loaded in the worker anyway

    torch.set_num_threads(threads)
    code, stats = run_service_stats(cfg)
    results.put((code, stats))


def run_workers(cfg: ServeConfig, print_json: bool = True) -> int:
    """Run `cfg.workers` shared services until a signal, `stop_after_records` in the store,
    or every worker's end; print the summed counters. 0 when every worker ended cleanly.

    A worker killed by a signal (OOM killer, SIGKILL) is started again with its own client
    id: its persistent session still holds the frames it had taken but not acknowledged, and
    the broker hands them to it again. A worker that exits by itself is not restarted."""
    ctx = mp.get_context("spawn")
    results: mp.Queue[tuple[int, dict[str, Any]]] = ctx.Queue()
    configs = worker_configs(cfg)

    def start(c: ServeConfig) -> mp.process.BaseProcess:
        proc = ctx.Process(target=_worker, args=(c, results, torch_threads(cfg.workers)))
        proc.start()
        return proc

    stop = False

    def request_stop() -> None:
        nonlocal stop
        stop = True

    restarts = 0
    progress = _Progress(cfg)
    with stop_on_signals(request_stop):
        procs = [start(c) for c in configs]
        while not stop and not progress.enough():
            for i, proc in enumerate(procs):
                code = proc.exitcode
                if code is not None and code < 0 and restarts < MAX_RESTARTS:
                    log.warning("worker %d was killed (signal %d): starting it again", i, -code)
                    procs[i] = start(configs[i])
                    restarts += 1
            if not any(p.is_alive() for p in procs):
                break
            time.sleep(0.5)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker stores what it took and stops
        outcomes = _collect(results, procs)
        for proc in procs:
            proc.join(timeout=30)
    progress.close()
    summary = _summary(cfg, [stats for _, stats in outcomes])
    summary["restarts"] = restarts
    print(json.dumps(summary, sort_keys=True) if print_json else _line(summary), flush=True)
    # A worker our SIGTERM reached before it set up its handler was still starting: it had
    # not subscribed, so it took nothing and has nothing to report.
    early = sum(1 for p in procs if p.exitcode == -signal.SIGTERM)
    if early:
        log.info("%d worker(s) stopped while still starting", early)
    failed = len(outcomes) < len(procs) - early or any(code for code, _ in outcomes)
    return 1 if failed else 0


class _Progress:
    """Whether `stop_after_records` are in the store: one connection, opened once it can be
    (not a new one, and a migration check, every half second)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self._store: Store | None = None

    def enough(self) -> bool:
        limit = self.cfg.stop_after_records
        if limit is None:
            return False
        try:
            if self._store is None:
                self._store = open_store(self.cfg.db)
            return self._store.count_records() >= limit
        except Exception:  # busy, or not migrated yet: look again later
            return False

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _collect(
    results: mp.Queue[tuple[int, dict[str, Any]]], procs: list[mp.process.BaseProcess]
) -> list[tuple[int, dict[str, Any]]]:
    """The results the workers report as they stop: until each has, or none is left running
    (one killed by a signal reports nothing), 60 s at most."""
    outcomes: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 60
    while len(outcomes) < len(procs) and time.monotonic() < deadline:
        try:
            outcomes.append(results.get(timeout=0.5))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
    while len(outcomes) < len(procs):  # what exited workers left in the pipe
        try:
            outcomes.append(results.get(timeout=0.2))
        except queue.Empty:
            break
    if len(outcomes) < len(procs):
        log.warning("%d of %d workers reported no result", len(procs) - len(outcomes), len(procs))
    return outcomes


def _summary(cfg: ServeConfig, workers: list[dict[str, Any]]) -> dict[str, Any]:
    rejects: Counter[str] = Counter()
    for stats in workers:
        rejects.update(stats.get("rejects") or {})
    out: dict[str, Any] = {k: sum(int(s.get(k) or 0) for s in workers) for k in _SUMMED}
    out["rejects"] = dict(rejects)
    out["workers"] = workers
    try:
        with open_store(cfg.db) as store:
            out["gaps"] = store.sequence_gaps()
    except Exception as exc:
        log.warning("cannot count sequence gaps: %r", exc)
    return out


def _line(summary: dict[str, Any]) -> str:
    return (
        f"sparsetel serve: {len(summary['workers'])} workers stored "
        f"{summary['records_stored']} measurements in {summary['frames_ok']} frames; "
        f"{summary['duplicates']} duplicates, rejects {summary['rejects'] or 0}, "
        f"gaps {summary.get('gaps') or 0}"
    )
