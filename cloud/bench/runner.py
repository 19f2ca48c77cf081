"""Run every codec on the same split and seeds: `run_benchmark(BenchOptions) -> rows`.

For each method (`classic_methods`, `learned_methods`, `sdlgm_methods`, optionally filtered
by family) and each seed -- only the first seed when ``method.seeded`` is False -- the method
is fitted on the training sessions, then codes the test stream frame by frame (`frames` of
`FRAME` per session, each frame on its own). Per seed it gets, over observed entries in the
normalised space, ``nmse = sum (x_hat - x)² / sum x²`` and ``snr_db = -10 log10 nmse``;
``bits_per_measurement`` = payload bits / measurements; ``target_r2``/``target_mae`` of that
seed's KPI predictor fed the decoded stream (`predict`); ``method.stats()`` when it has one;
fit and code seconds. An unseeded method is coded once and scored by every seed's predictor.

Wire bytes per measurement, frames as the agent publishes them: per frame the header and
CRC (`wire.FRAME_OVERHEAD`), no time deltas (records at a regular 1 Hz cost none:
FLAG_IRREGULAR stays unset), ceil(payload bits / 8), plus one QoS 1 MQTT PUBLISH to the DATA
topic of a typical edge, all over the frame's measurements. The JSON reference is what a naive
agent publishes: one compact JSON object ``{"ts": ms, kpi: value, ...}`` per measurement, one
PUBLISH each. `report.aggregate_rows` turns the per-seed records into one row per setting;
the references (the predictor on raw KPIs, persistence, JSON) and the run's wall time go
beside the rows in results.json. Every seed sees the same session split (`dataset`).
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
from ...shared.wire import FRAME_OVERHEAD, mqtt_publish_overhead
from ..codec.normaliser import Windows
from ..training.codeusage import CHANGE_REGIMES, LEVEL_REGIMES, change_sizes, regime_report
from .dataset import BenchData, load_bench_data
from .method import Method, frames
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

__all__ = [
    "SOURCES",
    "TOPIC",
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
    ("learned", "learned_methods"),
    ("sdlgm", "sdlgm_methods"),
    ("supervised", "supervised_methods"),
)
# Sources whose families run only when `--methods` names them: the training-objective
# study trains the deployed codec once per objective, L and seed (minutes each on real data).
ON_REQUEST = frozenset({"supervised"})
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
        args = (options.Ls,) if module == "classic" else (options.Ls, options.K, options.quick)
        found.extend(source(*args))
    return _select(found, options.methods), missing


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


def _code_stream(method: Method, data: BenchData) -> tuple[np.ndarray, list[int], list[int]]:
    """Code every test session frame by frame: (recon stacked [R, D], bits and size per frame).
    A method with ``code_frames(pieces) -> list[Coded]`` codes all frames in one call (each
    still on its own), which is how a batched codec is fast."""
    pieces = [(s.x[cut], s.mask[cut]) for s in data.test for cut in frames(len(s))]
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
    x = np.concatenate([s.x for s in data.test])
    mask = np.concatenate([s.mask for s in data.test])
    err = float(np.sum(np.where(mask, recon - x, 0.0) ** 2))
    power = float(np.sum(np.where(mask, x, 0.0) ** 2))
    nmse = err / power if power > 0 else float("nan")
    snr = -10 * math.log10(nmse) if nmse > 0 else float("inf")
    return {"nmse": nmse, "snr_db": snr}


def _measure(method: Method, data: BenchData, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Fit and code once: the seed-independent part of a record, and the decoded stream."""
    started = time.monotonic()
    method.fit(data.train, seed)
    fitted = time.monotonic()
    recon, bits, sizes = _code_stream(method, data)
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
    method: Method, data: BenchData, predictors: dict[int, KpiPredictor], windows: Windows
) -> list[dict[str, Any]]:
    """Per-seed records of one method (an unseeded one: coded once, scored by every seed)."""
    head = {"method": method.family, "setting": method.setting, "L": method.L}
    head["lossy"] = bool(method.lossy)
    seeds = list(predictors)
    bind, own = getattr(method, "bind", None), getattr(method, "own_scores", None)
    if callable(bind):  # a method that trains on the target too (`supervised`)
        bind(data, windows)
    out = []
    for fit_seed in seeds if method.seeded else seeds[:1]:
        record, recon = _measure(method, data, fit_seed)
        if callable(own):  # its own KPI predictor, beside the common one
            record.update(own(windows))
        for seed in [fit_seed] if method.seeded else seeds:
            scores = score_stream(predictors[seed], windows, recon)
            out.append({**head, "seed": seed, **record, **scores})
    return out


def _bar(options: BenchOptions, total: int) -> tqdm:
    show = sys.stderr.isatty() if options.progress is None else options.progress
    return tqdm(total=total, desc="benchmark", disable=not show, unit="fit", file=sys.stderr)


def measure(options: BenchOptions, methods: Sequence[Method] | None = None) -> BenchResult:
    """Run the benchmark (see the module docstring) without writing anything."""
    started = time.monotonic()
    missing: list[str] = []
    if methods is None:
        methods, missing = load_methods(options)
    data = load_bench_data(options.data, options.kpis, options.target, options.sentinels)
    windows = test_windows(data, options.window, options.horizon)
    steps = QUICK_STEPS if options.quick else STEPS
    records: list[dict[str, Any]] = []
    with _bar(options, len(options.seeds) + len(methods)) as bar:
        predictors = {}
        for seed in options.seeds:
            predictors[seed] = fit_predictor(data, options.window, options.horizon, seed, steps)
            bar.update()
        for method in methods:
            bar.set_postfix_str(f"{method.family} {method.setting}")
            records.extend(_records(method, data, predictors, windows))
            bar.update()
    references = summarise_references([reference_scores(p, windows) for p in predictors.values()])
    references.update(json_reference(data))
    timing = {"total_seconds": time.monotonic() - started, "test_rows": data.test_rows}
    log.info("benchmark of %d methods done in %.1f s", len(methods), timing["total_seconds"])
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
