"""What ``sparsetel monitor``'s dashboard shows, as one JSON-able dict: `Dashboard.data`.

- ``fleet``: `cloud.monitor.status.fleet_status` (edges online, model, rates, bytes, gaps, spool).
- ``sparsity``: accuracy against sparsity. Offline, from ``sparsetel benchmark`` results
  (``--benchmark``): per method, the best setting's target MAE and reconstruction NMSE at each
  L, with the raw-KPI ceiling and the persistence floor; and each known model's own offline
  point (its RUN/evaluation.json from ``sparsetel evaluate``). Live, from the audit samples
  over the accuracy window: per model and L over the fleet, and per edge.
- ``kpis``: per KPI, each edge's live error per minute, and drift alerts: an edge whose
  error on a KPI over the last `drift_window_s` (at least `drift_min_values` audited values)
  is above `drift_ratio` times its model's offline error on that KPI. The error is the MSE
  in the model's normalised space (squared training standard deviations; ``mse_per_kpi`` of
  ``sparsetel evaluate``), not the NMSE, which a KPI whose level shifted would dilute: the
  shift raises the true values' power as much as the error. A model without an evaluation
  has no threshold; the page says so. A pair is ``judged`` when it has a threshold and enough
  values; with none judged, ``not_judged`` says why, and the page shows no all-clear.
- ``codebook``: per model, what each code means -- the KPIs it decodes to on its own, in
  units -- and how often the edges send it (`Store.code_usage`).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...shared.errors import ConfigError
from ...shared.manifest import ModelManifest
from ...shared.rundir import CODEC_FILE, MANIFEST_FILE, read_evaluation
from ...shared.temporalcodec import TemporalCodec
from ..codec.wordnames import code_names
from ..store.database import Store
from .status import check_window, fleet_status

__all__ = ["Dashboard", "DashboardOptions", "ModelCatalogue", "load_benchmark"]

log = logging.getLogger(__name__)

SERIES_EDGES = 8  # per KPI chart: the edges with the highest recent error, at most
# Windows (seconds, as `status.check_window`) and the command-line flag that sets each.
_WINDOWS = {"accuracy_window_s": "--accuracy-window", "drift_window_s": "--drift-window"}


@dataclass(frozen=True)
class DashboardOptions:
    """Windows (seconds) and the drift rule; see the module docstring."""

    window_s: float = 60.0
    accuracy_window_s: float = 3600.0
    drift_window_s: float = 600.0
    drift_ratio: float = 3.0
    drift_min_values: int = 30
    usage_per_edge: int = 5000

    def __post_init__(self) -> None:
        check_window(self.window_s)  # the same check and message as `sparsetel status`
        for name, flag in _WINDOWS.items():
            value = getattr(self, name)
            if not isinstance(value, int | float):
                raise ConfigError(f"{flag} must be a number, got {value!r}")
            try:
                check_window(value, flag)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        ratio = self.drift_ratio
        if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0):
            raise ConfigError(f"--drift-ratio must be > 0, got {ratio}")
        if self.drift_min_values < 1 or self.usage_per_edge < 1:
            raise ConfigError("drift-min-values and usage-per-edge must be >= 1")


def load_benchmark(path: str | Path) -> dict[str, Any]:
    """The offline curves of one ``sparsetel benchmark`` result (its results.json, or the
    folder holding it): {"source", "methods": {method: [{"L", "target_mae", "nmse",
    "bits_per_measurement"}] by L}, "raw_target_mae", "persistence_target_mae"}.
    ConfigError when it is not such a file."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        rows, refs = doc["rows"], doc.get("references") or {}
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and "method" in r for r in rows
        ):
            raise ValueError("'rows' is not a list of result rows")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--benchmark {path}: not a sparsetel benchmark result: {exc}") from exc
    best: dict[str, dict[int, dict[str, float | None]]] = {}
    framing = rows[0].get("frame") if rows else None  # the run's first framing (frames of 50)
    for row in rows:
        L = row.get("L")
        if not isinstance(L, int) or isinstance(L, bool):
            continue  # lossless and fixed-rate codecs have no L
        if row.get("frame") != framing:
            continue  # the same codecs at another framing: other bits, not another point
        point = best.setdefault(str(row["method"]), {}).setdefault(L, {})
        for key in ("target_mae", "nmse", "bits_per_measurement"):
            value = row.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                point[key] = value if point.get(key) is None else min(point[key], value)  # type: ignore[type-var]
    return {
        "source": str(p),
        "methods": {
            m: [{"L": L, **v} for L, v in sorted(points.items())] for m, points in best.items()
        },
        "raw_target_mae": refs.get("raw_target_mae"),
        "persistence_target_mae": refs.get("persistence_target_mae"),
    }


@dataclass
class _Model:
    run: Path
    manifest: ModelManifest
    evaluation: dict[str, Any] | None


@dataclass
class ModelCatalogue:
    """The models the monitor knows: run directories given, and those under `models_dir`
    (looked at again on every call, so a new deployment shows up), and each model's code
    prototypes for the codebook."""

    runs: Sequence[Path] = ()
    models_dir: Path | None = None
    _prototypes: dict[str, np.ndarray] = field(default_factory=dict)
    _names: dict[str, Sequence[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def models(self) -> dict[str, _Model]:
        """model ref (hex) -> the model, its run and its offline evaluation."""
        dirs = list(self.runs)
        if self.models_dir is not None and self.models_dir.is_dir():
            dirs += sorted(p.parent for p in self.models_dir.glob(f"*/{MANIFEST_FILE}"))
        out: dict[str, _Model] = {}
        for run in dirs:
            try:
                manifest = ModelManifest.load(run / MANIFEST_FILE)
            except Exception as exc:  # a half-copied run must not take the page down
                log.warning("%s: no usable manifest, skipped: %s", run, exc)
                continue
            out.setdefault(manifest.model_ref.hex(), _Model(run, manifest, read_evaluation(run)))
        return out

    def word_names(self, ref: str, model: _Model) -> Sequence[str] | None:
        """A temporal codec's code names ("RSRP +1 dB", key words after the K words), read
        once per model; None for a memoryless model (its codes read through prototypes)."""
        path = model.run / CODEC_FILE
        if not path.exists():
            return None
        with self._lock:
            if ref not in self._names:
                codec = TemporalCodec.from_json(path.read_text(encoding="utf-8"))
                self._names[ref] = code_names(codec)
            return self._names[ref]

    def prototypes(self, ref: str, model: _Model) -> np.ndarray:
        """What each of the model's K codes decodes to on its own, in units ([K, D]).
        Decoded once per model (they never change), on first use: torch loads then."""
        with self._lock:
            if ref not in self._prototypes:
                from ..codec.decoder import CloudCodec

                codec = CloudCodec.load(model.run)
                K = model.manifest.K
                self._prototypes[ref] = codec.decode([[k] for k in range(K)])
            return self._prototypes[ref]


class Dashboard:
    """Builds the dashboard's data from the store, the models and the benchmark results."""

    def __init__(
        self,
        store: Store,
        catalogue: ModelCatalogue | None = None,
        benchmarks: Sequence[dict[str, Any]] = (),
        options: DashboardOptions | None = None,
    ) -> None:
        self.store = store
        self.catalogue = catalogue or ModelCatalogue()
        self.benchmarks = list(benchmarks)
        self.options = options or DashboardOptions()

    def data(self, now_ms: int | None = None) -> dict[str, Any]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        o = self.options
        models = self.catalogue.models()
        since = now_ms - int(o.accuracy_window_s * 1000)
        return {
            "now_ms": now_ms,
            "options": {k: getattr(o, k) for k in o.__dataclass_fields__},
            "fleet": fleet_status(self.store, now_ms, o.window_s),
            "sparsity": self._sparsity(models, since),
            "kpis": self._kpis(models, since, now_ms),
            "codebook": self._codebook(models, since),
        }

    # -- accuracy against sparsity ---------------------------------------------------------

    def _sparsity(self, models: dict[str, _Model], since: int) -> dict[str, Any]:
        offline = {ref: m.evaluation for ref, m in models.items() if m.evaluation}
        fleet = self.store.accuracy(since_ms=since, by_edge=False)
        return {
            "benchmarks": self.benchmarks,
            "live": [
                {**row, "offline": _offline_point(offline.get(row["model_ref"]))}
                for row in sorted(fleet, key=lambda r: (r["L"], r["model_ref"]))
            ],
            "offline_models": [
                {"model_ref": ref, "L": models[ref].manifest.L, **_offline_point(e)}  # type: ignore[dict-item]
                for ref, e in sorted(offline.items())
            ],
            "edges": self.store.accuracy(since_ms=since),
        }

    # -- per KPI error over time and drift ------------------------------------------------

    def drift(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Each edge's error per model and KPI over the last `drift_window_s`, with its
        ``threshold`` (None without an offline reference), ``judged`` (a threshold and at
        least `drift_min_values` values) and ``alert``."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return self._drift(self._thresholds(self.catalogue.models()), now_ms)

    def _thresholds(self, models: dict[str, _Model]) -> dict[tuple[str, str], float]:
        out = {}
        for ref, m in models.items():
            per_kpi = (m.evaluation or {}).get("mse_per_kpi") or {}
            for kpi, reference in per_kpi.items():
                if isinstance(reference, int | float) and reference > 0:
                    out[(ref, kpi)] = self.options.drift_ratio * reference
        return out

    def _drift(self, thresholds: dict[tuple[str, str], float], now_ms: int) -> list[dict[str, Any]]:
        o = self.options
        recent = self.store.kpi_accuracy(now_ms - int(o.drift_window_s * 1000))
        for r in recent:
            limit = thresholds.get((r["model_ref"], r["kpi"]))
            r["threshold"] = limit
            r["judged"] = bool(
                limit is not None and r["mse"] is not None and r["n"] >= o.drift_min_values
            )
            r["alert"] = bool(r["judged"] and r["mse"] > limit)
        return recent

    def _not_judged(self, recent: list[dict[str, Any]]) -> str | None:
        """Why no edge and KPI could be judged for drift; None when some were."""
        o = self.options
        if any(r["judged"] for r in recent):
            return None
        if not recent:
            return f"no audited values arrived in the last {o.drift_window_s:g} s"
        if all(r["threshold"] is None for r in recent):
            return "no drift thresholds: no model of these edges has an offline evaluation"
        return (
            f"fewer than {o.drift_min_values} audited values per KPI "
            f"in the last {o.drift_window_s:g} s"
        )

    def _kpis(self, models: dict[str, _Model], since: int, now_ms: int) -> dict[str, Any]:
        thresholds = self._thresholds(models)
        recent = self._drift(thresholds, now_ms)
        latest = {(r["edge"], r["model_ref"], r["kpi"]): r["mse"] for r in recent}
        series: dict[str, list[dict[str, Any]]] = {}
        for r in self.store.kpi_accuracy(since, by_bucket=True):
            key = (r["edge"], r["model_ref"], r["kpi"])
            lines = series.setdefault(r["kpi"], [])
            if not lines or (lines[-1]["edge"], lines[-1]["model_ref"]) != key[:2]:
                lines.append({
                    "edge": r["edge"], "model_ref": r["model_ref"], "points": [],
                    "recent_mse": latest.get(key),
                    "threshold": thresholds.get((r["model_ref"], r["kpi"])),
                })  # fmt: skip
            if r["mse"] is not None:
                lines[-1]["points"].append([r["bucket_ms"], r["mse"]])
        for kpi, lines in series.items():  # the worst edges first, at most SERIES_EDGES
            lines.sort(key=lambda s: -(s["recent_mse"] or 0.0))
            series[kpi] = lines[:SERIES_EDGES]
        return {
            "series": series,
            "recent": recent,
            "alerts": [r for r in recent if r["alert"]],
            "judged": sum(r["judged"] for r in recent),
            "not_judged": self._not_judged(recent),
            "unreferenced_models": sorted(
                ref for ref, m in models.items() if not (m.evaluation or {}).get("mse_per_kpi")
            ),
        }

    # -- codebook --------------------------------------------------------------------------

    def _codebook(self, models: dict[str, _Model], since: int) -> list[dict[str, Any]]:
        usage = self.store.code_usage(since, self.options.usage_per_edge)
        out = []
        for ref, m in sorted(models.items()):
            used = usage.get(ref, {"measurements": 0, "codes": {}})
            prototypes, reads = None, None
            try:
                reads = self.catalogue.word_names(ref, m)
                if reads is None:
                    prototypes = self.catalogue.prototypes(ref, m)
                    reads = _reads_as(prototypes, m.manifest.kpis)
            except Exception as exc:
                log.warning("model %s: its codes cannot be read: %s", ref, exc)
            n_codes = m.manifest.K if prototypes is not None or reads is None else len(reads)
            counts = [used["codes"].get(k, 0) for k in range(n_codes)]
            total = sum(counts)
            codes = [
                {
                    "code": k,
                    "count": n,
                    "share": n / total if total else 0.0,
                    "prototype": None if prototypes is None else _floats(prototypes[k]),
                    "reads_as": "" if reads is None else reads[k],
                }
                for k, n in enumerate(counts)
            ]
            codes.sort(key=lambda c: (-c["count"], c["code"]))
            out.append({
                "model_ref": ref, "L": m.manifest.L, "K": m.manifest.K,
                "kpis": list(m.manifest.kpis), "target": m.manifest.target,
                "measurements": used["measurements"], "codes_sent": total,
                "codes_used": sum(1 for c in codes if c["count"]), "codes": codes,
            })  # fmt: skip
        return out


def _offline_point(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    if not evaluation:
        return None
    keys = ("nmse", "target_mae", "raw_target_mae", "persistence_target_mae", "split", "data")
    return {k: evaluation.get(k) for k in keys}


def _reads_as(prototypes: Any, kpis: Sequence[str], most: int = 3) -> list[str]:
    """Per code, the KPIs its prototype sets apart from the other codes' (at least one
    standard deviation of the prototypes away from their mean), the farthest first:
    "Load high, SNR low"; "" when none stands out."""
    p = np.asarray(prototypes, dtype=np.float64)
    known = np.isfinite(p)
    n = np.maximum(known.sum(axis=0), 1)
    mean = np.where(known, p, 0.0).sum(axis=0) / n
    std = np.sqrt(np.where(known, (p - mean) ** 2, 0.0).sum(axis=0) / n)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(known & (std > 0), (p - mean) / std, 0.0)
    out = []
    for row in z:
        far = [j for j in np.argsort(-np.abs(row)) if abs(row[j]) >= 1.0][:most]
        out.append(", ".join(f"{kpis[j]} {'high' if row[j] > 0 else 'low'}" for j in far))
    return out


def _floats(values: Any) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]
