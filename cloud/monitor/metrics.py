"""Prometheus metrics of the fleet, read from the decoder's store at each scrape.

`FleetCollector` turns `cloud.monitor.status.fleet_status` and the live accuracy of
`Store.accuracy` into metrics named ``sparsetel_*`` in base units (bytes, seconds, ratios).
``sparsetel monitor`` serves them at ``/metrics``:

- per edge (labels ``edge``, ``group``): ``sparsetel_edge_online``,
  ``sparsetel_edge_measurements_total``, ``sparsetel_edge_measurements_per_second``,
  ``sparsetel_edge_frames_per_second``, ``sparsetel_edge_wire_bytes_per_measurement``,
  ``sparsetel_edge_compression_ratio``, ``sparsetel_edge_missing_frames``,
  ``sparsetel_edge_rejected_measurements``, ``sparsetel_edge_spool_frames``,
  ``sparsetel_edge_heartbeat_age_seconds``, ``sparsetel_edge_pending_frames`` (temporal-codec
  frames waiting for their predecessor) and ``sparsetel_edge_undecodable_measurements``
  (a counter, label ``reason`` too: measurements given up, `cloud.ingest.chains`);
- per edge, model and L over the accuracy window: ``sparsetel_live_reconstruction_nmse``,
  ``sparsetel_live_target_mae`` (the target KPI's unit), ``sparsetel_live_audits``;
- per edge, model and KPI over the drift window (`cloud.monitor.dashboard`):
  ``sparsetel_live_kpi_mse`` (normalised space), ``sparsetel_kpi_drift_threshold_mse`` (where
  the model has an offline reference), ``sparsetel_kpi_drift_alert`` (1 while the edge's
  error on that KPI is above it), and ``sparsetel_kpi_drift_alerts``, their count, with
  ``sparsetel_kpi_drift_judged``: how many edge and KPI pairs were judged (a threshold and
  enough values). Zero alerts is an all-clear only when that is above zero.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..store.database import Store
from .dashboard import Dashboard
from .status import fleet_status

__all__ = ["FleetCollector"]

_EDGE_GAUGES = (
    ("online", "online", "1 while the edge's birth stands, 0 after its death"),
    ("measurements_per_second", "measurements_per_s", "measurements stored per second"),
    ("frames_per_second", "frames_per_s", "frames stored per second"),
    ("wire_bytes_per_measurement", "bytes_per_measurement", "frame payload bytes per measurement"),
    ("compression_ratio", "compression_ratio", "raw float32 bytes over wire bytes"),
    ("missing_frames", "gaps", "frames missing from the edge's sessions"),
    ("rejected_measurements", "edge_rejects", "measurements the edge rejected (heartbeat)"),
    ("spool_frames", "spool_depth", "frames in the edge's spool (heartbeat)"),
    ("heartbeat_age_seconds", "heartbeat_age_s", "seconds since the edge's last heartbeat"),
    ("pending_frames", "pending_frames", "chained frames waiting for their predecessor"),
)


class FleetCollector(Collector):
    """The fleet's metrics, computed from `store` when scraped (rates over `window_s`,
    accuracy over the last `accuracy_window_s`)."""

    def __init__(
        self,
        store: Store,
        window_s: float = 60.0,
        accuracy_window_s: float = 3600.0,
        dashboard: Dashboard | None = None,
    ):
        self.store = store
        self.window_s = window_s
        self.accuracy_window_s = accuracy_window_s
        self.dashboard = dashboard

    def collect(self) -> Iterator[Metric]:
        now_ms = int(time.time() * 1000)
        status = fleet_status(self.store, now_ms, self.window_s)
        labels = ["edge", "group"]
        total = CounterMetricFamily(
            "sparsetel_edge_measurements", "measurements stored", labels=labels
        )
        gauges = {
            key: GaugeMetricFamily(f"sparsetel_edge_{name}", text, labels=labels)
            for name, key, text in _EDGE_GAUGES
        }
        undecodable = CounterMetricFamily(
            "sparsetel_edge_undecodable_measurements",
            "measurements given up as undecodable (temporal codec), by reason",
            labels=[*labels, "reason"],
        )
        for edge in status["edges"]:
            values = [edge["edge"], edge["group"] or ""]
            total.add_metric(values, edge["measurements"])
            for key, family in gauges.items():
                if edge[key] is not None:
                    family.add_metric(values, float(edge[key]))
            for reason, n in edge["undecodable"].items():
                undecodable.add_metric([*values, reason], n)
        yield total
        yield undecodable
        yield from gauges.values()
        yield from self._accuracy(now_ms)
        if self.dashboard is not None:
            yield from self._drift(self.dashboard.drift(now_ms))

    def _accuracy(self, now_ms: int) -> Iterable[Metric]:
        labels = ["edge", "model", "L"]
        families = {
            "nmse": GaugeMetricFamily(
                "sparsetel_live_reconstruction_nmse",
                "reconstruction NMSE of the audit samples, normalised space",
                labels=labels,
            ),
            "target_mae": GaugeMetricFamily(
                "sparsetel_live_target_mae",
                "mean absolute error of the target KPI's predictions, in its unit",
                labels=labels,
            ),
            "audits": GaugeMetricFamily(
                "sparsetel_live_audits", "audit samples in the accuracy window", labels=labels
            ),
        }
        since = now_ms - int(self.accuracy_window_s * 1000)
        for row in self.store.accuracy(since_ms=since):
            values = [row["edge"], row["model_ref"], str(row["L"])]
            for key, family in families.items():
                if row[key] is not None:
                    family.add_metric(values, float(row[key]))
        return families.values()

    def _drift(self, rows: list[dict[str, Any]]) -> Iterable[Metric]:
        labels = ["edge", "model", "kpi"]
        mse = GaugeMetricFamily(
            "sparsetel_live_kpi_mse",
            "reconstruction MSE of one KPI over the drift window, in squared training stds",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "sparsetel_kpi_drift_threshold_mse",
            "the MSE above which the KPI's error counts as drift",
            labels=labels,
        )
        alert = GaugeMetricFamily(
            "sparsetel_kpi_drift_alert",
            "1 while the KPI's error is above its threshold",
            labels=labels,
        )
        for r in rows:
            values = [r["edge"], r["model_ref"], r["kpi"]]
            if r["mse"] is not None:
                mse.add_metric(values, r["mse"])
            if r["threshold"] is not None:
                limit.add_metric(values, r["threshold"])
                alert.add_metric(values, float(r["alert"]))
        count = GaugeMetricFamily("sparsetel_kpi_drift_alerts", "edge and KPI pairs in drift now")
        count.add_metric([], float(sum(r["alert"] for r in rows)))
        judged = GaugeMetricFamily(
            "sparsetel_kpi_drift_judged",
            "edge and KPI pairs judged for drift now (a threshold and enough audited values); "
            "0 means no drift alert can fire",
        )
        judged.add_metric([], float(sum(r["judged"] for r in rows)))
        return (mse, limit, alert, count, judged)
