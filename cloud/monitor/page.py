"""The monitor's web page, rendered on the server from `Dashboard.data`: one HTML document
with its CSS and SVG charts inline (no script, no CDN), refreshed by the browser every
`refresh_s` seconds. Tables and chart elements carry ids and ``data-*`` attributes with the
numbers they show, for people's tools and for the browser test alike."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from .htmlcells import num, table, td
from .panels import kpi_panel, sparsity_panel

__all__ = ["render_page"]

CODEBOOK_ROWS = 16  # codes shown per model, the most used first

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
#unjudged-banner{background:#e0e0e0;color:#333;padding:8px 12px;margin:8px 0}
.chart{background:#fff;border:1px solid #ddd}.plot-area{fill:#fff;stroke:#bbb}
.grid{stroke:#eee}.tick{font-size:10px;fill:#555}.axis-label{font-size:11px;fill:#333}
.legend-text{font-size:10px;fill:#333}.above{color:#b00}.below{color:#06c}
"""


def render_page(data: dict[str, Any], refresh_s: float = 15.0) -> str:
    """The dashboard page of `data` (`cloud.monitor.dashboard.Dashboard.data`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["now_ms"] / 1000))
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s > 0 else ""
    body = [
        f"<h1>sparsetel monitor</h1><p class='muted'>{when}; "
        f"{'refreshes every ' + format(refresh_s, 'g') + ' s; ' if refresh_s > 0 else ''}"
        "data as JSON at <a href='/api/dashboard'>/api/dashboard</a>, "
        "Prometheus metrics at <a href='/metrics'>/metrics</a></p>",
        _banner(data["kpis"]),
        _fleet(data["fleet"]),
        sparsity_panel(data["sparsity"]),
        kpi_panel(data["kpis"], data["options"]),
        _codebook(data["codebook"]),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>sparsetel monitor</title>{refresh}<style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )


def _banner(kpis: dict[str, Any]) -> str:
    """Red with the drift alerts; green only when some edge and KPI were judged against a
    threshold; else grey, saying why drift was not judged (never an all-clear by default)."""
    alerts: Sequence[dict[str, Any]] = kpis["alerts"]
    if not alerts and kpis["not_judged"]:
        return (
            f"<div id='unjudged-banner' data-judged='0'>Drift not judged: "
            f"{escape(kpis['not_judged'])}.</div>"
        )
    if not alerts:
        judged = kpis["judged"]
        unjudged = len(kpis["recent"]) - judged
        rest = f"; {unjudged} more not judged (no threshold or too few values)" if unjudged else ""
        return (
            f"<div id='ok-banner' data-judged='{judged}'>No KPI error drift: {judged} edge and "
            f"KPI pair{'s' if judged != 1 else ''} within {'their' if judged != 1 else 'its'} "
            f"threshold{rest}.</div>"
        )
    which = ", ".join(sorted({f"{a['edge']} ({a['kpi']})" for a in alerts}))
    return (
        f"<div id='alert-banner' data-alerts='{len(alerts)}'>{len(alerts)} drift "
        f"alert{'s' if len(alerts) != 1 else ''}: {escape(which)}</div>"
    )


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
            td("edge", e["edge"], e["edge"], "text"),
            td("online", int(e["online"]), online, f"text online-{online}"),
            td("model", e["model_sha256"], (e["model_sha256"] or "-")[:12], "text"),
        ]
        for key, spec, unit in _FLEET_NUMBERS:
            cells.append(td(key, e[key], num(e[key], spec, unit)))
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
    return "<h2>Fleet</h2>" + summary + table("fleet", head, rows, texts=3)


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
                cells.append(td(f"kpi:{kpi}", v, num(v, ".4g"), css))
            rows.append(
                f"<tr data-code='{c['code']}'>"
                + td("code", c["code"], str(c["code"]), "text")
                + td("share", c["share"], f"{100 * c['share']:.1f}%")
                + td("count", c["count"], f"{c['count']:,}")
                + td("reads_as", c["reads_as"], c["reads_as"] or "-", "text")
                + "".join(cells)
                + "</tr>"
            )
        head = ("code", "share", "sent", "reads as", *m["kpis"])
        out.append(
            f"<h3>model {ref} (L={m['L']}, K={m['K']})</h3>"
            f"<p class='muted' id='codebook-{ref}-summary' data-used='{m['codes_used']}'>"
            f"{m['codes_used']} of {m['K']} codes used in {m['measurements']:,} measurements "
            f"({m['codes_sent']:,} codes sent).</p>" + table(f"codebook-{ref}", head, rows)
        )
    if not models:
        out.append("<p class='muted'>No model known: give --model or --models-dir.</p>")
    return "".join(out)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
