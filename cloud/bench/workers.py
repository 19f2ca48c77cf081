"""The benchmark's fits side by side: tasks (`plan_tasks`) run in worker processes
(`run_tasks`), their records back in the order one process gives them.

A task is methods fitted together, the frame size they code at and the seeds that score
them. A seeded method gets one task per seed, so its fits spread over the workers; methods
that share learned models (a `cache` attribute, see `learned.FitCache`) stay in one task,
which is pickled whole, so they still share them. Tasks start longest first (`cost`), so
the last to finish are short. Each worker takes its share of the cores' threads and ends
with the run (Linux). Workers are spawned, not forked -- torch's thread pools do not
survive a fork -- so a script that runs a benchmark must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from ..codec.normaliser import Windows
from .dataset import BenchData
from .method import Method, TrainData
from .predict import KpiPredictor

__all__ = ["Run", "Task", "cost", "plan_tasks", "run_tasks", "worker_count"]

Record = dict[str, Any]
# (methods with their places in report order, frame size, seeds)
Task = tuple[tuple[tuple[int, Method], ...], int, tuple[int, ...]]
# The runner's records of one method: (method, data, train, predictors by seed, windows).
RecordsFn = Callable[[Method, BenchData, TrainData, dict[int, KpiPredictor], Windows], list[Record]]


@dataclass
class Run:
    """What every task of a run needs: the runner's `records` function and its inputs."""

    records: RecordsFn
    data: BenchData
    target_weight: float
    predictors: dict[int, KpiPredictor]
    windows: Windows
    trains: dict[int, TrainData] = field(default_factory=dict)  # by frame size, per process

    def train(self, frame: int) -> TrainData:
        """The training data at `frame`: the same object for every task of this process at
        that frame size, as `FitCache` keys on it."""
        if frame not in self.trains:
            self.trains[frame] = replace(
                self.data.train, frame=frame, target_weight=self.target_weight
            )
        return self.trains[frame]


_RUN: list[Run] = []  # a worker process's run, set by `_start_worker`


def plan_tasks(plan: Sequence[tuple[int, list[Method]]], seeds: Sequence[int]) -> list[Task]:
    """The plan's fits, (frame size, methods) in report order, as tasks (see the module
    docstring)."""
    tasks: list[Task] = []
    place = 0
    for frame, batch in plan:
        groups: dict[int, list[tuple[int, Method]]] = {}
        for method in batch:
            cache = getattr(method, "cache", None)
            key = id(method) if cache is None else id(cache)
            groups.setdefault(key, []).append((place, method))
            place += 1
        for group in groups.values():
            seeded = any(m.seeded for _, m in group)
            for g in [(s,) for s in seeds] if seeded else [tuple(seeds)]:
                tasks.append((tuple(group), frame, g))
    return tasks


def cost(task: Task) -> tuple[bool, int, int, bool, int]:
    """Sort key of a task, larger the longer it likely takes: SDLGM training, by L; fits
    shared by many settings; other seeded fits; then by how many frames it codes one by
    one."""
    methods, frame, _ = task
    first = methods[0][1]
    L = max(m.L or 0 for _, m in methods)
    return (first.family.startswith("sdlgm"), L, len(methods), first.seeded, -frame)


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(jobs: int, tasks: int) -> int:
    """Worker processes of a run asked for `jobs` (0: one per core), no more than tasks."""
    return max(1, min(jobs or cores(), tasks))


def run_tasks(tasks: Sequence[Task], jobs: int, run: Run, bar: tqdm) -> list[Record]:
    """Every task's records in report order (by method, then seed): in this process (`jobs`
    1) or in `jobs` worker processes. A task that fails stops the run with its error."""
    done: list[tuple[int, int, list[Record]]] = []  # method place, task, records

    def finished(t: int, results: list[tuple[int, list[Record]]]) -> None:
        done.extend((i, t, records) for i, records in results)
        bar.set_postfix_str(f"{tasks[t][0][0][1].family} frame {tasks[t][1]} done")
        bar.update()

    if jobs <= 1:
        for t, task in enumerate(tasks):
            finished(t, _run_task(task, run))
    else:
        pool = ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(run, max(1, cores() // jobs)),
        )  # fmt: skip
        try:
            order = sorted(range(len(tasks)), key=lambda t: cost(tasks[t]), reverse=True)
            futures = {pool.submit(_run_in_worker, tasks[t]): t for t in order}
            for future in as_completed(futures):
                finished(futures[future], future.result())
        finally:
            pool.shutdown(cancel_futures=True)
    return [r for _, _, records in sorted(done, key=lambda d: d[:2]) for r in records]


def _run_task(task: Task, run: Run) -> list[tuple[int, list[Record]]]:
    """One task's records: per method its place and records."""
    methods, frame, seeds = task
    own = {s: run.predictors[s] for s in seeds}
    train = run.train(frame)
    return [(i, run.records(m, run.data, train, own, run.windows)) for i, m in methods]


def _start_worker(run: Run, threads: int) -> None:
    """A worker's set-up: the run, once; its share of the cores' threads; its end with the
    run."""
    import torch

    torch.set_num_threads(threads)
    die_with_parent()
    _RUN[:] = [run]


def _run_in_worker(task: Task) -> list[tuple[int, list[Record]]]:
    return _run_task(task, _RUN[0])


def die_with_parent() -> None:
    """On Linux, this process ends when the one that started it does (PR_SET_PDEATHSIG),
    so a killed run leaves no worker computing for nobody; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
