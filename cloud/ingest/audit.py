"""Live accuracy from audit samples: how well the stored KPIs and predictions match the raw
measurements the edges send beside a share of their codes (``sparsetel edge --audit-share``).

For each stored frame, the audited records give, per minute of measurement time (a bucket):

- the reconstruction error in the model's normalised space: the sum of squared errors and the
  sum of squared true values over the KPIs that were measured, so NMSE = se / ss for any span
  of buckets, the same figure as ``sparsetel evaluate``'s offline `nmse`;
- the target KPI's prediction error: for an audited measurement at time t, the prediction made
  h periods earlier for t (in this frame, or stored with an earlier one), as absolute and
  squared error in raw units.

- per KPI, the same reconstruction sums (``KpiError``: values, se, ss in the normalised space,
  and se in the KPI's raw unit), so each KPI's error is watched on its own (a KPI whose error
  drifts, `cloud.monitor.dashboard`).

Buckets are sums, so sliding windows are sums of buckets (`Store.accuracy`). They are written
in the transaction of their frame, so a repeated frame never counts twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ...shared.manifest import ModelManifest
from ...shared.wire import Frame
from ..store.rows import SUMS, AccuracyRow, KpiError

__all__ = ["BUCKET_MS", "Auditable", "audit_accuracy"]

BUCKET_MS = 60_000


class Auditable(Protocol):
    """What an audit needs of a model: a `registry.Decoder` or a `temporal.TemporalModel`."""

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def horizon(self) -> int: ...

    def normalise(self, x: np.ndarray) -> np.ndarray: ...


def audit_accuracy(
    edge: str,
    frame: Frame,
    codec: Auditable,
    kpis: np.ndarray,
    predictions: Sequence[float | None],
    earlier: Callable[[int, int], float | None],
) -> list[AccuracyRow]:
    """The buckets of `frame`'s audited records; `kpis` are its decoded KPIs ([N, D], raw
    units), `predictions` its stored predictions, `earlier(t_made, t_for)` the prediction
    stored with an earlier frame for time `t_for`, made at `t_made` (None when there is none)."""
    audited = [i for i, r in enumerate(frame.records) if r.audit is not None]
    if not audited:
        return []
    m = codec.manifest
    truth = np.array([frame.records[i].audit for i in audited], dtype=np.float64)
    z_true = np.asarray(codec.normalise(truth), dtype=np.float64)
    z_dec = np.asarray(codec.normalise(kpis[audited]), dtype=np.float64)
    seen = np.isfinite(z_true) & np.isfinite(z_dec)
    se_kpi = np.where(seen, (z_dec - z_true) ** 2, 0.0)
    ss_kpi = np.where(seen, z_true**2, 0.0)
    se_raw = np.where(seen, (kpis[audited] - truth) ** 2, 0.0)
    se, ss = se_kpi.sum(axis=1), ss_kpi.sum(axis=1)
    target = m.kpis.index(m.target) if m.target in m.kpis else None
    step = codec.horizon * frame.period_ms
    made = {
        r.t_ms + step: p for r, p in zip(frame.records, predictions, strict=True) if p is not None
    }
    sums: dict[int, dict[str, Any]] = {}  # counts stay ints (they start as int 0), sums float
    rows_of: dict[int, list[int]] = {}  # bucket -> rows of `audited` in it
    for row, i in enumerate(audited):
        t = frame.records[i].t_ms
        bucket = t - t % BUCKET_MS
        b = sums.setdefault(bucket, dict.fromkeys(SUMS, 0))
        rows_of.setdefault(bucket, []).append(row)
        b["audits"] += 1
        b["values_n"] += int(seen[row].sum())
        b["recon_se"] += float(se[row])
        b["recon_ss"] += float(ss[row])
        actual = truth[row, target] if target is not None else math.nan
        if not math.isfinite(actual) or step <= 0:
            continue
        predicted = made.get(t)
        if predicted is None:
            predicted = earlier(t - step, t)
        if predicted is not None and math.isfinite(predicted):
            b["target_n"] += 1
            b["target_ae"] += abs(predicted - actual)
            b["target_se"] += (predicted - actual) ** 2
    ref = frame.model_ref.hex()

    def per_kpi(rows: list[int]) -> tuple[KpiError, ...]:
        n, e, s, r = (a[rows].sum(axis=0) for a in (seen, se_kpi, ss_kpi, se_raw))
        return tuple(
            KpiError(k, int(n[j]), float(e[j]), float(s[j]), float(r[j]))
            for j, k in enumerate(m.kpis)
            if n[j]
        )

    return [
        AccuracyRow(edge, ref, frame.L, bucket, **v, kpis=per_kpi(rows_of[bucket]))
        for bucket, v in sorted(sums.items())
    ]
