"""The monitor page's accuracy panels: accuracy against sparsity (`sparsity_panel`) and the
error per KPI with its drift alerts (`kpi_panel`), from `cloud.monitor.dashboard.Dashboard.data`."""

from __future__ import annotations

import re
from html import escape
from typing import Any

from .htmlcells import num, table, td
from .svgplot import PALETTE, Series, chart

__all__ = ["KPI_ROWS", "kpi_panel", "sparsity_panel"]

KPI_ROWS = 12  # KPI table rows within their threshold shown, the closest first


_REFERENCES = (  # key, legend, colour of the target MAE chart's reference lines
    ("raw_target_mae", "raw-KPI ceiling", "#444"),
    ("persistence_target_mae", "persistence floor", "#999"),
)


def _points(
    name: str, rows: list[dict[str, Any]], metric: str, color: str, css: str, label: str = ""
) -> list[Series]:
    """`rows`' `metric` against their L as one series of markers (none when no row has it),
    each labelled with its `label` field (default: its model)."""
    known = [r for r in rows if r.get(metric) is not None]
    if not known:
        return []
    labels = [str(r[label or "model_ref"]) for r in known]
    points = [(r["L"], r[metric]) for r in known]
    return [Series(name, points, "points", color, css=css, labels=labels)]


def sparsity_panel(s: dict[str, Any]) -> str:
    charts = []
    for metric, chart_id, label, scale in (
        ("target_mae", "sparsity-mae", "target KPI MAE (its unit)", "linear"),
        ("nmse", "sparsity-nmse", "reconstruction NMSE", "log"),
    ):
        series: list[Series] = []
        for b_i, bench in enumerate(s["benchmarks"]):
            for m_i, (method, points) in enumerate(bench["methods"].items()):
                pts = [(p["L"], p[metric]) for p in points if p.get(metric) is not None]
                if pts:
                    series.append(
                        Series(
                            f"offline {method}",
                            pts,
                            color=PALETTE[(m_i + 2) % 8],
                            css="offline-curve",
                            dashed=b_i > 0,
                        )
                    )
            if metric == "target_mae":
                for key, name, color in _REFERENCES:
                    if bench.get(key) is not None:
                        series.append(
                            Series(name, [(0, bench[key])], "hline", color, css=key, dashed=True)
                        )
        offline = [m for m in s["offline_models"] if m.get(metric) is not None]
        series += _points("offline, deployed models", offline, metric, "#7f7f7f", "offline-model")
        if metric == "target_mae" and not s["benchmarks"]:
            for key, name, color in _REFERENCES:
                values = [(0, m[key]) for m in offline if m.get(key) is not None]
                if values:
                    series.append(Series(name, values, "hline", color, css=key, dashed=True))
        series += _points("live, per edge", s["edges"], metric, "#f4a3a3", "live-edge", "edge")
        series += _points("live, fleet", s["live"], metric, PALETTE[1], "live")
        ls = sorted({int(x) for ser in series if ser.kind != "hline" for x, _ in ser.points})
        charts.append(
            chart(
                chart_id,
                series,
                "L: nonzero codes per measurement (at most)",
                label,
                "log",
                scale,
                width=620,
                x_ticks=ls,
            )
        )
    rows = []
    for r in s["live"]:
        off = r.get("offline") or {}
        cells = [td("model_ref", r["model_ref"], r["model_ref"], "text")]
        cells += [
            td(k, r[k], num(r[k], spec))
            for k, spec in (("L", "d"), ("edges", "d"), ("audits", ",d"), ("nmse", ".4f"))
        ]
        cells.append(td("offline_nmse", off.get("nmse"), num(off.get("nmse"), ".4f")))
        cells.append(td("target_mae", r["target_mae"], num(r["target_mae"], ".4g")))
        for key in ("target_mae", "raw_target_mae", "persistence_target_mae"):
            cells.append(td(f"offline_{key}", off.get(key), num(off.get(key), ".4g")))
        rows.append(f"<tr data-model='{r['model_ref']}' data-L='{r['L']}'>{''.join(cells)}</tr>")
    head = (
        "model",
        "L",
        "edges",
        "audits",
        "live NMSE",
        "offline NMSE",
        "live target MAE",
        "offline target MAE",
        "raw ceiling MAE",
        "persistence MAE",
    )
    sources = ", ".join(escape(b["source"]) for b in s["benchmarks"]) or "none given (--benchmark)"
    return (
        "<h2>Accuracy against sparsity</h2><p class='muted'>Offline: benchmark curves (best "
        f"setting per L) from {sources}, and each model's own evaluation; live: the audit "
        "samples over the accuracy window.</p>"
        f"<div class='charts'>{''.join(charts)}</div>" + table("sparsity-table", head, rows)
    )


# -- per KPI -------------------------------------------------------------------------------


def _ratio(row: dict[str, Any]) -> float:
    """How close a KPI's recent error is to its drift threshold (0 without one)."""
    if row["mse"] is None or not row["threshold"]:
        return 0.0
    return float(row["mse"]) / float(row["threshold"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "kpi"


def kpi_panel(k: dict[str, Any], options: dict[str, Any]) -> str:
    out = [
        "<h2>Error per KPI</h2><p class='muted'>Live reconstruction error per minute: the MSE in "
        "the model's normalised space (squared training standard deviations), the worst edges "
        f"first. Drift: an edge's MSE on a KPI over the last {options['drift_window_s']:g} s "
        f"(at least {options['drift_min_values']} audited values) above "
        f"{options['drift_ratio']:g}x its model's offline MSE on that KPI (dashed line).</p>"
    ]
    if k["unreferenced_models"]:
        out.append(
            "<p class='muted' id='unreferenced'>No drift threshold for models without "
            "an evaluation (run <code>sparsetel evaluate</code>): "
            f"{escape(', '.join(k['unreferenced_models']))}</p>"
        )
    ranked = sorted(k["recent"], key=lambda r: (not r["alert"], -_ratio(r), r["edge"], r["kpi"]))
    shown = [r for r in ranked if r["alert"]]
    shown += [r for r in ranked if not r["alert"]][:KPI_ROWS]
    rows = [
        f"<tr class='{'alert' if r['alert'] else ''}' data-edge='{escape(r['edge'])}' "
        f"data-kpi='{escape(r['kpi'])}' data-alert='{int(r['alert'])}'>"
        + td("edge", r["edge"], r["edge"], "text")
        + td("kpi", r["kpi"], r["kpi"], "text")
        + td("model_ref", r["model_ref"], r["model_ref"], "text")
        + td("n", r["n"], str(r["n"]))
        + td("mse", r["mse"], num(r["mse"], ".4f"))
        + td("threshold", r["threshold"], num(r["threshold"], ".4f"))
        + td("rmse", r["rmse"], num(r["rmse"], ".4g"))
        + td("alert", int(r["alert"]), "DRIFT" if r["alert"] else "ok", "text")
        + "</tr>"
        for r in shown
    ]
    head = ("edge", "KPI", "model", "values", "recent MSE", "threshold", "RMSE (unit)", "state")
    hidden = len(ranked) - len(shown)
    if hidden:
        out.append(
            f"<p class='muted'>Every drifting edge and KPI, then the {KPI_ROWS} closest to "
            f"their threshold; {hidden} more are within theirs.</p>"
        )
    out.append(table("kpi-table", head, rows, texts=3))
    charts = []
    edges = sorted({line["edge"] for lines in k["series"].values() for line in lines})
    colour = {edge: PALETTE[i % len(PALETTE)] for i, edge in enumerate(edges)}  # same on each
    for kpi, lines in sorted(k["series"].items()):
        series = [
            Series(
                line["edge"],
                [tuple(p) for p in line["points"]],
                color=colour[line["edge"]],
                css="kpi-line",
                labels=[line["edge"]] * len(line["points"]),
            )
            for line in lines
        ]
        limits = {line["model_ref"]: line["threshold"] for line in lines if line["threshold"]}
        for ref, limit in sorted(limits.items()):
            series.append(
                Series(f"threshold {ref[:8]}", [(0, limit)], "hline", "#c62828", css="threshold",
                       dashed=True)
            )  # fmt: skip
        charts.append(
            f"<div><h3>{escape(kpi)}</h3>"
            + chart(
                f"kpi-{_slug(kpi)}",
                series,
                "time (UTC)",
                "MSE (normalised)",
                "time",
                "log",
                width=600,
                height=240,
            )
            + "</div>"
        )
    out.append(f"<div class='charts'>{''.join(charts)}</div>")
    return "".join(out)
