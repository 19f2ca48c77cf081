"""The multi-label benchmark of the SDLGM paper: `run_multilabel(MultilabelOptions) -> dict`.

"Learning Sparsity of Representations with Discrete Latent Variables" compares its
supervised SDLGMs with logistic, softmax and sparsemax classifiers on multi-label data by
micro and macro F1. This runs that comparison (`mlmodels`) on the data sets of `mldata`
("yeast": the classic gene-function set, "simulator": the network states behind windows of
simulated KPIs), every model once per seed and every SDLGM variant at every L of
``options.Ls`` with K codewords. Each fit keeps the epoch and the global threshold with the
best validation micro F1; the test part is scored with scikit-learn's ``f1_score``
(``average="micro"`` and ``"macro"``, ``zero_division=0``), and for SDLGMs the mean number of
codes per test instance (``nnz``, at most L). The data split is fixed by
``options.data_seed``; the seeds vary the models' initialisation, batches and noise.

`format_table` renders the results as the paper's table (models by rows, each data set's
micro and macro F1 as mean ± sample std over the seeds); with ``options.out`` the run writes
results.json and results.md there.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from tqdm import tqdm

from .mldata import MultilabelData, load_simulator, load_yeast
from .mlmodels import (
    BASELINES,
    MODELS,
    SDLGM_VARIANTS,
    FitConfig,
    SdlgmClassifier,
    build_classifier,
    fit_classifier,
)

__all__ = [
    "DATASETS",
    "MODELS",
    "MultilabelOptions",
    "format_table",
    "load_dataset",
    "multilabel_f1",
    "run_multilabel",
]

log = logging.getLogger(__name__)

DATASETS = ("yeast", "simulator")
# Linear models are cheap: long training, small batches. SDLGMs: the epochs that fit ~15
# minutes for the whole benchmark on one CPU thread (their best epoch comes well before).
BASELINE_FIT = FitConfig(epochs=200, patience=50, batch=64, lr=1e-3)
SDLGM_FIT = FitConfig(epochs=80, patience=25, batch=128, lr=1e-3)
QUICK: dict[str, Any] = {"epochs": 60, "patience": 60, "hidden": 64, "lr": 3e-3}
SIMULATOR = {"sessions": 60, "rows": 600, "window": 20, "stride": 10}
QUICK_SIMULATOR = {"sessions": 30, "rows": 300, "window": 20, "stride": 10}


@dataclass(frozen=True)
class MultilabelOptions:
    """What to run. `models` from `MODELS`; `Ls` and `K` apply to the SDLGM variants;
    `quick` shrinks the simulator set, the epochs and the hidden width (tests); `out`
    receives results.json and results.md; `progress` None shows a bar on a terminal."""

    datasets: tuple[str, ...] = DATASETS
    seeds: tuple[int, ...] = (0, 1, 2)
    Ls: tuple[int, ...] = (1, 2, 4, 8)
    K: int = 64
    models: tuple[str, ...] = MODELS
    quick: bool = False
    out: Path | None = None
    data_seed: int = 0
    kl_weight: float = SDLGM_FIT.kl_weight
    code_cost: float = 0.0
    progress: bool | None = None

    def __post_init__(self) -> None:
        for key in ("datasets", "seeds", "Ls", "models"):
            value = getattr(self, key)
            if not isinstance(value, str | bytes):  # a lone name is reported below
                object.__setattr__(self, key, tuple(value))
        checks = {
            "datasets": _pick_errors(self.datasets, DATASETS),
            "models": _pick_errors(self.models, MODELS),
            "seeds": _int_errors(self.seeds, 0),
            "Ls": _int_errors(self.Ls, 1),
        }
        if self.K < 2:
            checks["K"] = f"must be >= 2, got {self.K}"
        elif not checks["Ls"] and any(L > self.K for L in self.Ls):
            checks["Ls"] = f"every L must be <= K = {self.K}, got {self.Ls}"
        if self.data_seed < 0:
            checks["data_seed"] = f"must be >= 0, got {self.data_seed}"
        if not self.kl_weight >= 0:
            checks["kl_weight"] = f"must be >= 0, got {self.kl_weight}"
        if not self.code_cost >= 0:
            checks["code_cost"] = f"must be >= 0, got {self.code_cost}"
        bad = {k: v for k, v in checks.items() if v}
        if bad:
            key, why = next(iter(bad.items()))
            raise ValueError(f"MultilabelOptions.{key}: {why}")


def _pick_errors(chosen: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    """Why `chosen` is not a non-empty tuple of distinct names from `allowed` ('' if it is)."""
    if isinstance(chosen, str) or not chosen or len(set(chosen)) != len(chosen):
        return f"need distinct names from {allowed}, got {chosen!r}"
    unknown = [c for c in chosen if c not in allowed]
    return f"unknown {unknown}; choose from {allowed}" if unknown else ""


def _int_errors(values: tuple[int, ...], low: int) -> str:
    """Why `values` is not a non-empty tuple of distinct integers >= `low` ('' if it is)."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values)
    if not values or not ok or len(set(values)) != len(values):
        return f"need distinct integers >= {low}, got {values!r}"
    return ""


def load_dataset(name: str, quick: bool = False, seed: int = 0) -> MultilabelData:
    """The data set called `name` (one of `DATASETS`), split with `seed`."""
    if name == "yeast":
        return load_yeast(seed)
    if name == "simulator":
        return load_simulator(**(QUICK_SIMULATOR if quick else SIMULATOR), seed=seed)
    raise ValueError(f"unknown data set {name!r}; one of {DATASETS}")


def multilabel_f1(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Micro and macro F1 of predicted label sets `pred` against `y` (0/1, shape: [N, C])."""
    return {
        avg + "_f1": float(f1_score(y, pred, average=avg, zero_division=0))
        for avg in ("micro", "macro")
    }


def _settings(options: MultilabelOptions) -> list[tuple[str, int | None]]:
    """(model, L) pairs in table order: the baselines, then each variant at every L."""
    rows: list[tuple[str, int | None]] = [(m, None) for m in options.models if m in BASELINES]
    variants = [m for m in options.models if m in SDLGM_VARIANTS]
    return rows + [(m, L) for m in variants for L in options.Ls]


def _fit_config(options: MultilabelOptions, L: int | None) -> FitConfig:
    base = BASELINE_FIT if L is None else SDLGM_FIT
    cfg = replace(base, L=L or 1, K=options.K, kl_weight=options.kl_weight)
    cfg = replace(cfg, code_cost=options.code_cost)
    return replace(cfg, **QUICK) if options.quick else cfg


def _fit_and_score(
    data: MultilabelData, model: str, L: int | None, cfg: FitConfig, seed: int
) -> dict[str, Any]:
    """One model trained with `seed` and scored on the test part."""
    started = time.monotonic()
    tensors = [(torch.from_numpy(p.x), torch.from_numpy(p.y)) for p in (data.train, data.val)]
    torch.manual_seed(seed)
    net = build_classifier(model, data.train.x.shape[1], data.train.y.shape[1], cfg)
    fitted = fit_classifier(net, tensors[0], tensors[1], cfg, seed)
    x = torch.from_numpy(data.test.x)
    pred = net.probs(x).numpy() > fitted.threshold
    record = {"seed": seed, **multilabel_f1(data.test.y, pred)}
    if isinstance(net, SdlgmClassifier):
        record["nnz"] = float(net.counts(x).sum(-1).mean())
    record.update(
        threshold=fitted.threshold,
        best_epoch=fitted.epoch + 1,
        epochs_run=fitted.epochs_run,
        val_micro_f1=round(fitted.val_micro_f1, 6),
        fit_seconds=round(time.monotonic() - started, 2),
    )
    return record


def _aggregate(records: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """Mean and sample standard deviation (0 for one seed) of `key` over the seeds."""
    if key not in records[0]:
        return None
    values = np.array([r[key] for r in records], dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": round(float(values.mean()), 6), "std": round(std, 6)}


def run_multilabel(
    options: MultilabelOptions, loader: Callable[..., MultilabelData] = load_dataset
) -> dict[str, Any]:
    """Run every model and setting on every data set and seed; JSON-ready results (see the
    module doc). ``results["datasets"][name]["rows"]`` lists one row per (model, L) with the
    per-seed records and ``micro_f1``, ``macro_f1``, ``nnz`` (SDLGMs) as mean/std."""
    started = time.monotonic()
    settings = _settings(options)
    total = len(options.datasets) * len(settings) * len(options.seeds)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    results: dict[str, Any] = {"benchmark": "multilabel", "options": _jsonable(options)}
    results["datasets"] = {}
    with tqdm(total=total, desc="multilabel", disable=not show, unit="fit") as bar:
        for name in options.datasets:
            data = loader(name, quick=options.quick, seed=options.data_seed)
            rows = []
            for model, L in settings:
                cfg = _fit_config(options, L)
                records = []
                for seed in options.seeds:
                    records.append(_fit_and_score(data, model, L, cfg, seed))
                    log.info("%s %s L=%s seed %d: %s", name, model, L, seed, records[-1])
                    bar.update()
                keys = ("micro_f1", "macro_f1", "nnz")
                summary = {k: _aggregate(records, k) for k in keys}
                row: dict[str, Any] = {"model": model, "L": L, "K": options.K if L else None}
                rows.append({**row, **summary, "seeds": records})
            results["datasets"][name] = {**data.summary(), "rows": rows}
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    if options.out is not None:
        _write(results, Path(options.out))
    return results


def _jsonable(options: MultilabelOptions) -> dict[str, Any]:
    out = asdict(options)
    out["out"] = None if options.out is None else str(options.out)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(format_table(results) + "\n", encoding="utf-8")
    log.info("wrote %s and %s", out / "results.json", out / "results.md")


def _cell(stat: dict[str, float] | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_table(results: dict[str, Any]) -> str:
    """A markdown table: one row per model (and L), per data set its micro F1, macro F1
    and codes per instance (nnz, SDLGMs only), as mean ± std over the seeds."""
    datasets = results["datasets"]
    header = ["Model", "L"]
    for name in datasets:
        header += [f"{name} micro F1", f"{name} macro F1", f"{name} nnz"]
    order: dict[tuple[str, Any], dict[str, Any]] = {}
    for name, block in datasets.items():
        for row in block["rows"]:
            order.setdefault((row["model"], row["L"]), {})[name] = row
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, L), by_data in order.items():
        cells = [model, "—" if L is None else str(L)]
        for name in datasets:
            row = by_data.get(name, {})
            cells += [_cell(row.get("micro_f1")), _cell(row.get("macro_f1"))]
            cells.append(_cell(row.get("nnz"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(results["options"]["seeds"])
    lines.append("")
    lines.append(f"Mean ± sample std over {seeds} seed(s); nnz: codes per test instance.")
    return "\n".join(lines)
