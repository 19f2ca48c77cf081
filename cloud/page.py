"""The monitor's web page, rendered on the server from `Dashboard.data`: one HTML document
with its CSS and SVG charts inline (no script, no CDN), refreshed by the browser every
`refresh_s` seconds. Tables and chart elements carry ids and ``data-*`` attributes with the
numbers they show, for people's tools and for the browser test alike."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from html import escape
from typing import Any

from .svgplot import PALETTE, Series, chart

__all__ = ["render_page"]

CODEBOOK_ROWS = 16  # codes shown per model, the most used first
KPI_ROWS = 12  # KPI table rows within their threshold shown, the closest first

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;background:#fafafa}
h1{font-size:20px;margin:16px 0 4px}
h2{font-size:17px;margin:26px 0 6px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:14px 0 4px}.muted{color:#666}.charts{display:flex;flex-wrap:wrap;gap:16px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 8px;border-bottom:1px solid #e3e3e3;
text-align:right;white-space:nowrap}th{background:#eee}td.text,th.text{text-align:left}
.offline-no{color:#b00}.online-yes{color:#080}.alert{background:#fde2e1}
#alert-banner{background:#c62828;color:#fff;padding:8px 12px;margin:8px 0;font-weight:600}
#ok-banner{background:#2e7d32;color:#fff;padding:8px 12px;margin:8px 0}
.chart{background:#fff;border:1px solid #ddd}.plot-area{fill:#fff;stroke:#bbb}
.grid{stroke:#eee}.tick{font-size:10px;fill:#555}.axis-label{font-size:11px;fill:#333}
.legend-text{font-size:10px;fill:#333}.above{color:#b00}.below{color:#06c}
"""


def render_page(data: dict[str, Any], refresh_s: float = 15.0) -> str:
    """The dashboard page of `data` (`cloud.dashboard.Dashboard.data`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["now_ms"] / 1000))
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s > 0 else ""
    body = [
        f"<h1>sparsetel monitor</h1><p class='muted'>{when}; "
        f"{'refreshes every ' + format(refresh_s, 'g') + ' s; ' if refresh_s > 0 else ''}"
        "data as JSON at <a href='/api/dashboard'>/api/dashboard</a>, "
        "Prometheus metrics at <a href='/metrics'>/metrics</a></p>",
        _banner(data["kpis"]["alerts"]),
        _fleet(data["fleet"]),
        _sparsity(data["sparsity"]),
        _kpis(data["kpis"], data["options"]),
        _codebook(data["codebook"]),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>sparsetel monitor</title>{refresh}<style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )


def _banner(alerts: Sequence[dict[str, Any]]) -> str:
    if not alerts:
        return "<div id='ok-banner'>No KPI error drift.</div>"
    which = ", ".join(sorted({f"{a['edge']} ({a['kpi']})" for a in alerts}))
    return (
        f"<div id='alert-banner' data-alerts='{len(alerts)}'>{len(alerts)} drift "
        f"alert{'s' if len(alerts) != 1 else ''}: {escape(which)}</div>"
    )


def _num(value: Any, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{unit}"


def _table(table_id: str, head: Sequence[str], rows: Sequence[str], texts: int = 1) -> str:
    cells = "".join(
        f"<th class='{'text' if i < texts else ''}'>{escape(h)}</th>" for i, h in enumerate(head)
    )
    body = "".join(rows)
    return f"<table id='{table_id}'><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _td(key: str, value: Any, shown: str, css: str = "") -> str:
    raw = "" if value is None else escape(str(value), quote=True)
    return f"<td data-key='{key}' data-value='{raw}' class='{css}'>{escape(shown)}</td>"


# -- fleet ----------------------------------------------------------------------------------


_FLEET_NUMBERS = (  # key, format, unit of the fleet table's numeric columns
    ("L", "d", ""),
    ("frames_per_s", ".2f", ""),
    ("measurements_per_s", ".1f", ""),
    ("bytes_per_measurement", ".2f", ""),
    ("compression_ratio", ".1f", "x"),
    ("measurements", ",d", ""),
    ("gaps", "d", ""),
    ("edge_rejects", "d", ""),
    ("spool_depth", "d", ""),
    ("heartbeat_age_s", ".0f", " s"),
)


def _fleet(fleet: dict[str, Any]) -> str:
    t = fleet["totals"]
    rows = []
    for e in fleet["edges"]:
        online = "yes" if e["online"] else "no"
        cells = [
            _td("edge", e["edge"], e["edge"], "text"),
            _td("online", int(e["online"]), online, f"text online-{online}"),
            _td("model", e["model_sha256"], (e["model_sha256"] or "-")[:12], "text"),
        ]
        for key, spec, unit in _FLEET_NUMBERS:
            cells.append(_td(key, e[key], _num(e[key], spec, unit)))
        rows.append(f"<tr data-edge='{escape(e['edge'])}'>{''.join(cells)}</tr>")
    head = (
        "edge",
        "online",
        "model",
        "L",
        "frames/s",
        "meas./s",
        "bytes/meas.",
        "vs raw",
        "stored",
        "seq. gaps",
        "rejects",
        "spool",
        "heartbeat",
    )
    summary = (
        f"<p id='fleet-summary' data-online='{t['online']}' data-edges='{t['edges']}'>"
        f"{t['online']} of {t['edges']} edges online; {t['measurements']:,} measurements stored, "
        f"{t['measurements_per_s']:.1f}/s over the last {fleet['window_s']:g} s; "
        f"{t['gaps']} frames missing.</p>"
    )
    return "<h2>Fleet</h2>" + summary + _table("fleet", head, rows, texts=3)


# -- accuracy against sparsity ---------------------------------------------------------------


_REFERENCES = (  # key, legend, colour of the target MAE chart's reference lines
    ("raw_target_mae", "raw-KPI ceiling", "#444"),
    ("persistence_target_mae", "persistence floor", "#999"),
)


def _sparsity(s: dict[str, Any]) -> str:
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
        if offline:
            series.append(
                Series(
                    "offline, deployed models",
                    [(m["L"], m[metric]) for m in offline],
                    "points",
                    "#7f7f7f",
                    css="offline-model",
                    labels=[m["model_ref"] for m in offline],
                )
            )
        if metric == "target_mae" and not s["benchmarks"]:
            for key, name, color in _REFERENCES:
                values = [(0, m[key]) for m in offline if m.get(key) is not None]
                if values:
                    series.append(Series(name, values, "hline", color, css=key, dashed=True))
        edges = [r for r in s["edges"] if r.get(metric) is not None]
        if edges:
            series.append(
                Series(
                    "live, per edge",
                    [(r["L"], r[metric]) for r in edges],
                    "points",
                    "#f4a3a3",
                    css="live-edge",
                    labels=[r["edge"] for r in edges],
                )
            )
        live = [r for r in s["live"] if r.get(metric) is not None]
        if live:
            series.append(
                Series(
                    "live, fleet",
                    [(r["L"], r[metric]) for r in live],
                    "points",
                    PALETTE[1],
                    css="live",
                    labels=[r["model_ref"] for r in live],
                )
            )
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
        cells = [_td("model_ref", r["model_ref"], r["model_ref"], "text")]
        cells += [
            _td(k, r[k], _num(r[k], spec))
            for k, spec in (("L", "d"), ("edges", "d"), ("audits", ",d"), ("nmse", ".4f"))
        ]
        cells.append(_td("offline_nmse", off.get("nmse"), _num(off.get("nmse"), ".4f")))
        cells.append(_td("target_mae", r["target_mae"], _num(r["target_mae"], ".4g")))
        for key in ("target_mae", "raw_target_mae", "persistence_target_mae"):
            cells.append(_td(f"offline_{key}", off.get(key), _num(off.get(key), ".4g")))
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
        f"<div class='charts'>{''.join(charts)}</div>" + _table("sparsity-table", head, rows)
    )


# -- per KPI -------------------------------------------------------------------------------


def _ratio(row: dict[str, Any]) -> float:
    """How close a KPI's recent error is to its drift threshold (0 without one)."""
    if row["mse"] is None or not row["threshold"]:
        return 0.0
    return float(row["mse"]) / float(row["threshold"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "kpi"


def _kpis(k: dict[str, Any], options: dict[str, Any]) -> str:
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
        + _td("edge", r["edge"], r["edge"], "text")
        + _td("kpi", r["kpi"], r["kpi"], "text")
        + _td("model_ref", r["model_ref"], r["model_ref"], "text")
        + _td("n", r["n"], str(r["n"]))
        + _td("mse", r["mse"], _num(r["mse"], ".4f"))
        + _td("threshold", r["threshold"], _num(r["threshold"], ".4f"))
        + _td("rmse", r["rmse"], _num(r["rmse"], ".4g"))
        + _td("alert", int(r["alert"]), "DRIFT" if r["alert"] else "ok", "text")
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
    out.append(_table("kpi-table", head, rows, texts=3))
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


# -- codebook ------------------------------------------------------------------------------


def _codebook(models: Sequence[dict[str, Any]]) -> str:
    out = [
        "<h2>Codebook</h2><p class='muted'>What each code means: the KPIs it decodes to on "
        "its own, in units (red above, blue below the mean of the model's prototypes; "
        '"reads as": the KPIs at least one standard deviation of the prototypes away), and '
        "how often the edges sent it over their latest measurements. The most used codes "
        "first.</p>"
    ]
    for m in models:
        ref = m["model_ref"]
        protos = [c["prototype"] for c in m["codes"] if c["prototype"] is not None]
        means = [_mean([p[j] for p in protos]) for j in range(len(m["kpis"]))]
        rows = []
        for c in m["codes"][:CODEBOOK_ROWS]:
            cells = []
            for j, kpi in enumerate(m["kpis"]):
                v = c["prototype"][j] if c["prototype"] else None
                css = (
                    "" if v is None or means[j] is None else ("above" if v > means[j] else "below")
                )
                cells.append(_td(f"kpi:{kpi}", v, _num(v, ".4g"), css))
            rows.append(
                f"<tr data-code='{c['code']}'>"
                + _td("code", c["code"], str(c["code"]), "text")
                + _td("share", c["share"], f"{100 * c['share']:.1f}%")
                + _td("count", c["count"], f"{c['count']:,}")
                + _td("reads_as", c["reads_as"], c["reads_as"] or "-", "text")
                + "".join(cells)
                + "</tr>"
            )
        head = ("code", "share", "sent", "reads as", *m["kpis"])
        out.append(
            f"<h3>model {ref} (L={m['L']}, K={m['K']})</h3>"
            f"<p class='muted' id='codebook-{ref}-summary' data-used='{m['codes_used']}'>"
            f"{m['codes_used']} of {m['K']} codes used in {m['measurements']:,} measurements "
            f"({m['codes_sent']:,} codes sent).</p>" + _table(f"codebook-{ref}", head, rows)
        )
    if not models:
        out.append("<p class='muted'>No model known: give --model or --models-dir.</p>")
    return "".join(out)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
