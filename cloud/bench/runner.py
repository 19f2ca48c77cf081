"""Run every codec on the same split and seeds: `run_benchmark(BenchOptions) -> rows`.

For each framing asked for (frames of 50, and the edge agent's default framing at the data's
pace, `agent_frame`: two measurements per frame at 1 Hz), each method (`classic_methods`,
`grid_methods`, `learned_methods`, `sdlgm_methods`, optionally filtered by family; at
framings after the first only the families of `AT_EVERY_FRAMING`) and each seed -- only the
first seed when ``method.seeded`` is False -- the method is fitted on the training sessions
(`TrainData` carrying the framing and the run's target weight), then codes the scored
sessions (`options.on`: test, or validation where choices are made) frame by frame, each
frame on its own. Per seed it gets, over observed entries in the normalised space,
``nmse = sum (x_hat - x)² / sum x²`` and ``snr_db = -10 log10 nmse``, the target KPI's
own ``target_snr_db``; ``bits_per_measurement`` = payload bits / measurements;
``target_r2``/``target_mae`` of that seed's KPI predictor fed the decoded stream
(`predict`); ``method.stats()`` when it has one; fit and code seconds. An unseeded method is
coded once and scored by every seed's predictor.

Wire bytes per measurement, frames as the agent publishes them: per frame the header and
CRC (`wire.FRAME_OVERHEAD`), no time deltas (records at a regular 1 Hz cost none:
FLAG_IRREGULAR stays unset), ceil(payload bits / 8), plus one QoS 1 MQTT PUBLISH to the DATA
topic of a typical edge, all over the frame's measurements. The JSON reference is what a naive
agent publishes: one compact JSON object ``{"ts": ms, kpi: value, ...}`` per measurement, one
PUBLISH each. `report.aggregate_rows` turns the per-seed records into one row per setting and
framing; the references (the predictor on raw KPIs, persistence, JSON, the agent's frame
size) and the run's wall time go beside the rows in results.json. Every seed sees the same
session split (`dataset`).

Fits run side by side in `options.jobs` worker processes (`workers`; 0: one per core); the
records come back in the order one process gives them.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from ...shared.errors import ConfigError
from ...shared.topics import data_topic
from ...shared.wire import FRAME_OVERHEAD, mqtt_publish_overhead, records_per_frame
from ..codec.fidelity import snr
from ..codec.normaliser import Windows
from ..training.codeusage import CHANGE_REGIMES, LEVEL_REGIMES, change_sizes, regime_report
from .dataset import BenchData, load_bench_data
from .method import Method, TrainData, frames
from .options import BenchOptions, BenchResult
from .predict import (
    QUICK_STEPS,
    STEPS,
    KpiPredictor,
    fit_predictor,
    reference_scores,
    score_stream,
    test_windows,
)
from .report import aggregate_rows, summarise_references, write_report
from .workers import Run, plan_tasks, run_tasks, worker_count

__all__ = [
    "AT_EVERY_FRAMING",
    "SOURCES",
    "TOPIC",
    "agent_frame",
    "codes_by_regime",
    "json_reference",
    "load_methods",
    "measure",
    "run_benchmark",
    "wire_bytes",
]

log = logging.getLogger(__name__)

# Where the methods come from: (module under this package, function), imported when run.
SOURCES = (
    ("classic", "classic_methods"),
    ("gridcode", "grid_methods"),
    ("learned", "learned_methods"),
    ("sdlgm", "sdlgm_methods"),
    ("supervised", "supervised_methods"),
)
# Sources whose families run only when `--methods` names them: the training-objective
# study trains the deployed codec once per objective, L and seed (minutes each on real data).
ON_REQUEST = frozenset({"supervised"})
# Families run at every framing asked for; the others only at the first (their payload per
# measurement does not depend on the frame, or they are ablations of sdlgm).
AT_EVERY_FRAMING = frozenset({
    "float32-zstd", "gorilla", "grid-lossless", "quant-zstd", "predictive-previous",
    "predictive-linear", "grid-predictive-previous", "grid-predictive-linear", "sdlgm",
})  # fmt: skip
TOPIC = data_topic("fleet", "edge-0001")  # a typical DATA topic, as `cloud.training.evaluate` uses
DELTA_BYTES_REGULAR = 0  # per record at regular 1 Hz timing (see shared/wire.py)


def load_methods(options: BenchOptions) -> tuple[list[Method], list[str]]:
    """(methods of the wanted families, sources that could not be imported). ConfigError
    when `options.methods` names a family no source has. Without `options.methods`, every
    family but those of the `ON_REQUEST` sources."""
    found: list[Method] = []
    missing: list[str] = []
    for module, name in SOURCES:
        if module in ON_REQUEST and not options.methods:
            continue
        try:
            source = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
            log.warning("%s.py is not there: its methods are left out", module)
            missing.append(module)
            continue
        found.extend(source(*_arguments(module, options)))
    return _select(found, options.methods), missing


def _arguments(module: str, options: BenchOptions) -> tuple[Any, ...]:
    """What each source's function takes: the classic sweep the Ls, the grid coders their
    sweep (the short one with --quick), the learned ones the Ls, K and whether to train
    briefly."""
    if module == "gridcode":  # --quick: the short sweep
        quick_steps = importlib.import_module(f"{__package__}.gridcode").QUICK_STEPS
        return (quick_steps,) if options.quick else ()
    return (options.Ls,) if module == "classic" else (options.Ls, options.K, options.quick)


def _select(methods: list[Method], families: Sequence[str]) -> list[Method]:
    if not families:
        return methods
    known = {m.family for m in methods}
    unknown = [f for f in families if f not in known]
    if unknown:
        raise ConfigError(
            f"unknown families {unknown}; known: {sorted(known)}", key="benchmark.methods"
        )
    return [m for m in methods if m.family in families]


def _frame_bytes(bits: int, records: int) -> int:
    """One published frame's size: header and CRC, time deltas, payload padded to whole bytes."""
    return FRAME_OVERHEAD + DELTA_BYTES_REGULAR * records + math.ceil(bits / 8)


def wire_bytes(frame_bits: Sequence[int], frame_sizes: Sequence[int]) -> tuple[float, float]:
    """(frame bytes, frame + MQTT PUBLISH bytes) per measurement for frames of `frame_sizes`
    measurements carrying `frame_bits` payload bits each."""
    sizes = [_frame_bytes(b, n) for b, n in zip(frame_bits, frame_sizes, strict=True)]
    mqtt = sum(mqtt_publish_overhead(TOPIC, s, qos=1) for s in sizes)
    n = sum(frame_sizes)
    return sum(sizes) / n, (sum(sizes) + mqtt) / n


def json_reference(data: BenchData) -> dict[str, float]:
    """Bytes per measurement of a naive agent: one compact JSON object per measurement
    (raw values as float32 text, null where missing) in its own QoS 1 PUBLISH."""
    payload = wire = 0
    for s in data.test:
        for t, row in zip(s.t_ms.tolist(), s.raw, strict=True):
            values = (None if np.isnan(v) else float(str(v)) for v in row)  # float32 text
            obj = {"ts": t, **dict(zip(data.kpis, values, strict=True))}
            size = len(json.dumps(obj, separators=(",", ":")).encode("utf-8"))
            payload += size
            wire += size + mqtt_publish_overhead(TOPIC, size, qos=1)
    n = max(1, data.test_rows)
    return {"json_bytes_per_measurement": payload / n, "json_wire_bytes_per_measurement": wire / n}


def _code_stream(
    method: Method, data: BenchData, frame: int
) -> tuple[np.ndarray, list[int], list[int]]:
    """Code every scored session in frames of `frame`: (recon stacked [R, D], bits and size
    per frame).
    A method with ``code_frames(pieces) -> list[Coded]`` codes all frames in one call (each
    still on its own), which is how a batched codec is fast."""
    pieces = [(s.x[cut], s.mask[cut]) for s in data.test for cut in frames(len(s), frame)]
    batched = getattr(method, "code_frames", None)
    coded = batched(pieces) if callable(batched) else [method.code_frame(*p) for p in pieces]
    recon, bits, sizes = [], [], []
    for (x, _), c in zip(pieces, coded, strict=True):
        if c.recon.shape != x.shape:
            raise RuntimeError(
                f"{method.family} {method.setting}: recon shape {c.recon.shape}, expected {x.shape}"
            )
        recon.append(np.asarray(c.recon, dtype=np.float64))
        bits.append(int(c.bits))
        sizes.append(len(x))
    return np.concatenate(recon), bits, sizes


def _distortion(data: BenchData, recon: np.ndarray) -> dict[str, float]:
    """nmse and SNR over every observed entry, and the target KPI's own SNR (its fidelity,
    which the target weighting buys) when it is one of the KPIs."""
    x = np.concatenate([s.x for s in data.test])
    mask = np.concatenate([s.mask for s in data.test])
    out = snr(x, recon, mask)
    j = data.target_index
    if j is not None:
        out["target_snr_db"] = snr(x[:, j], recon[:, j], mask[:, j])["snr_db"]
    return out


def _measure(
    method: Method, data: BenchData, train: TrainData, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit and code once: the seed-independent part of a record, and the decoded stream."""
    started = time.monotonic()
    method.fit(train, seed)
    fitted = time.monotonic()
    recon, bits, sizes = _code_stream(method, data, train.frame)
    coded = time.monotonic()
    frame_b, wire_b = wire_bytes(bits, sizes)
    record: dict[str, Any] = {
        **_distortion(data, recon),
        "bits_per_measurement": sum(bits) / sum(sizes),
        "frame_bytes_per_measurement": frame_b,
        "wire_bytes_per_measurement": wire_b,
        "fit_seconds": fitted - started,
        "code_seconds": coded - fitted,
    }
    stats = getattr(method, "stats", None)
    if callable(stats):
        record.update({k: float(v) for k, v in stats().items()})
    used = getattr(method, "nnz_per_measurement", None)
    if callable(used):
        record.update(codes_by_regime(data, np.asarray(used()), method.L))
    return record, recon


def codes_by_regime(
    data: BenchData, used: np.ndarray, L: int | None = None
) -> dict[str, float | None]:
    """Codes used per test measurement (shape: [R], the test sessions in order) by change
    regime (`codestats`: tertiles of the RMS change from the previous measurement) and by
    the target's level, with the Spearman correlations: whether busy, changing
    measurements get more codes than steady ones."""
    z = np.concatenate([np.where(s.mask, s.x, np.nan) for s in data.test])
    lengths = [len(s) for s in data.test]
    out: dict[str, float | None] = {}
    level = np.concatenate([s.target for s in data.test]).astype(np.float64)
    for key, values, names in (
        ("change", change_sizes(z, lengths), CHANGE_REGIMES),
        ("level", level, LEVEL_REGIMES),
    ):
        if not np.isfinite(values).any():
            continue
        report = regime_report(used, values, L or int(used.max(initial=0)), names)
        out[f"codes_{key}_spearman"] = report["spearman"]
        for name, regime in report["regimes"].items():
            out[f"codes_{key}_{name}"] = regime["mean_codes"]
    return out


def _records(
    method: Method,
    data: BenchData,
    train: TrainData,
    predictors: dict[int, KpiPredictor],
    windows: Windows,
) -> list[dict[str, Any]]:
    """Per-seed records of one method fitted on `train` and coding frames of `train.frame`
    (an unseeded method: coded once, scored by every seed)."""
    head = {"method": method.family, "setting": method.setting, "L": method.L}
    head.update(lossy=bool(method.lossy), frame=train.frame)
    seeds = list(predictors)
    bind, own = getattr(method, "bind", None), getattr(method, "own_scores", None)
    if callable(bind):  # a method that trains on the target too (`supervised`)
        bind(data, windows)
    out = []
    for fit_seed in seeds if method.seeded else seeds[:1]:
        record, recon = _measure(method, data, train, fit_seed)
        if callable(own):  # its own KPI predictor, beside the common one
            record.update(own(windows))
        for seed in [fit_seed] if method.seeded else seeds:
            scores = score_stream(predictors[seed], windows, recon)
            out.append({**head, "seed": seed, **record, **scores})
    return out


def _bar(options: BenchOptions, total: int) -> tqdm:
    show = sys.stderr.isatty() if options.progress is None else options.progress
    return tqdm(total=total, desc="benchmark", disable=not show, unit="fit", file=sys.stderr)


def agent_frame(data: BenchData) -> int:
    """Measurements per frame of an edge agent at its default framing fed the training
    sessions at their own pace (their median interval): `shared.wire.records_per_frame`."""
    gaps = np.concatenate([np.diff(s.t_ms) for s in data.parts[0].sessions] or [np.zeros(0)])
    gaps = gaps[gaps > 0]
    return records_per_frame(float(np.median(gaps)) / 1000.0 if gaps.size else 1.0)


def _framings(options: BenchOptions, data: BenchData) -> list[int]:
    """The frame sizes of the run, in order, each once ("agent": `agent_frame`)."""
    sizes = [agent_frame(data) if f == "agent" else int(f) for f in options.framings]
    return list(dict.fromkeys(sizes))


def measure(options: BenchOptions, methods: Sequence[Method] | None = None) -> BenchResult:
    """Run the benchmark (see the module docstring) without writing anything. Given
    `methods` run at the first framing only (they are fitted objects of one framing)."""
    started = time.monotonic()
    missing: list[str] = []
    data = load_bench_data(options.data, options.kpis, options.target, options.sentinels,
                           on=options.on)  # fmt: skip
    framings = _framings(options, data)
    plan: list[tuple[int, list[Method]]] = []
    for i, frame in enumerate(framings if methods is None else framings[:1]):
        if methods is not None:
            plan.append((frame, list(methods)))
            continue
        found, missing = load_methods(options)
        plan.append((frame, [m for m in found if i == 0 or m.family in AT_EVERY_FRAMING]))
    windows = test_windows(data, options.window, options.horizon)
    steps = QUICK_STEPS if options.quick else STEPS
    tasks = plan_tasks(plan, options.seeds)
    jobs = worker_count(options.jobs, len(tasks))
    with _bar(options, len(options.seeds) + len(tasks)) as bar:
        predictors = {}
        for seed in options.seeds:
            predictors[seed] = fit_predictor(data, options.window, options.horizon, seed, steps)
            bar.update()
        run = Run(_records, data, options.target_weight, predictors, windows)
        records = run_tasks(tasks, jobs, run, bar)
    references = summarise_references([reference_scores(p, windows) for p in predictors.values()])
    references.update(json_reference(data))
    references["agent_frame"] = agent_frame(data)
    timing = {"total_seconds": time.monotonic() - started, "test_rows": data.test_rows,
              "jobs": jobs}  # fmt: skip
    log.info("benchmark of %d fits done in %.1f s on %d jobs", len(tasks),
             timing["total_seconds"], jobs)  # fmt: skip
    rows = aggregate_rows(records)
    return BenchResult(options, rows, records, references, timing, data.split(), missing)


def run_benchmark(
    options: BenchOptions, methods: Sequence[Method] | None = None
) -> list[dict[str, Any]]:
    """Run the benchmark, write the report into `options.out` (when set) and return the
    JSON-ready rows, one per (method family, setting), means and spreads over the seeds."""
    result = measure(options, methods)
    if options.out is not None:
        write_report(result, options.out)
    return result.rows
