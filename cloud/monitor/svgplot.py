"""Small inline SVG charts for the monitor's page: no JavaScript, no CDN, works offline.

`chart` draws lines, points and horizontal reference lines on linear, log or time axes.
Every point is a ``<circle>`` carrying its values (``data-x``, ``data-y``, ``data-label``)
and a ``<title>`` tooltip, so a browser test reads the plotted numbers off the page.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "Series", "chart"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_PAD = (58, 16, 26, 44)  # left, right (besides the legend's), top, bottom
_MINUTE = 60_000.0
_TIME_STEPS = tuple(m * _MINUTE for m in (1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440))


@dataclass(frozen=True)
class Series:
    """`kind`: "line" (joined points), "points" (markers only) or "hline" (one y across)."""

    name: str
    points: Sequence[tuple[float, float]]
    kind: str = "line"
    color: str = PALETTE[0]
    css: str = ""
    dashed: bool = False
    labels: Sequence[str] = ()  # one per point: data-label (an edge, a model)


class _Axis:
    def __init__(self, values: Sequence[float], lo_px: float, hi_px: float, scale: str) -> None:
        self.scale = scale
        vals = [v for v in values if math.isfinite(v) and (scale != "log" or v > 0)]
        lo, hi = (min(vals), max(vals)) if vals else (1.0, 10.0)
        if scale == "log":
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            half = 60_000.0 if scale == "time" else 0.5
            lo, hi = lo - half, hi + half
        margin = (hi - lo) * 0.06
        self.lo, self.hi = lo - margin, hi + margin
        self.lo_px, self.hi_px = lo_px, hi_px

    def px(self, v: float) -> float:
        u = math.log10(v) if self.scale == "log" else v
        return self.lo_px + (u - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ok(self, v: float) -> bool:
        return math.isfinite(v) and (self.scale != "log" or v > 0)

    def ticks(self) -> list[tuple[float, str]]:
        if self.scale == "log":
            out = []
            for e in range(math.floor(self.lo), math.ceil(self.hi) + 1):
                for m in (1, 2, 5):
                    v = m * 10.0**e
                    if self.lo <= math.log10(v) <= self.hi:
                        out.append((v, f"{v:g}"))
            return out if len(out) <= 9 else [t for t in out if t[1].startswith("1")]
        raw = (self.hi - self.lo) / 5
        if self.scale == "time":
            step = next((s for s in _TIME_STEPS if s >= raw), _TIME_STEPS[-1])
        else:
            step = _nice_step(raw)
        first = math.ceil(self.lo / step) * step
        values = [first + i * step for i in range(int((self.hi - first) / step) + 1)]
        if self.scale == "time":
            return [(v, time.strftime("%H:%M", time.gmtime(v / 1000))) for v in values]
        return [(v, f"{v:g}") for v in values]


def _nice_step(raw: float) -> float:
    exp = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 5, 10):
        if raw <= m * exp:
            return m * exp
    return 10 * exp


def chart(
    chart_id: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    x_scale: str = "linear",
    y_scale: str = "linear",
    width: int = 560,
    height: int = 300,
    x_ticks: Sequence[float] = (),
) -> str:
    """One SVG chart; `x_scale`/`y_scale` are "linear", "log" or "time" (x only, epoch ms).
    `x_ticks`, if given, replaces the automatic ticks of x (the L of a sparsity sweep)."""
    left, right, top, bottom = _PAD
    names = [s.name for s in series]
    legend_w = min(190, 30 + 6 * max(map(len, names))) if names else 0
    right += legend_w
    xs = [x for s in series if s.kind != "hline" for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x = _Axis([*xs, *x_ticks], left, width - right, x_scale)
    y = _Axis(ys, height - bottom, top, y_scale)
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" class="plot-area"/>',
    ]
    ticks = [(v, f"{v:g}") for v in x_ticks] if x_ticks else x.ticks()
    for v, text in ticks:
        px = x.px(v)
        parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{height - bottom}" '
            'class="grid"/>'
            f'<text x="{px:.1f}" y="{height - bottom + 14}" class="tick" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    for v, text in y.ticks():
        py = y.px(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{py:.1f}" y2="{py:.1f}" '
            'class="grid"/>'
            f'<text x="{left - 4}" y="{py + 4:.1f}" class="tick" '
            f'text-anchor="end">{escape(text)}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="axis-label" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="12" y="{(top + height - bottom) / 2}" class="axis-label" '
        f'text-anchor="middle" transform="rotate(-90 12 {(top + height - bottom) / 2})">'
        f"{escape(y_label)}</text>"
    )
    for s in series:
        parts.extend(_draw(s, x, y, left, width - right))
    parts.append(_legend(series, width - legend_w + 4, top + 2))
    parts.append("</svg>")
    return "\n".join(parts)


def _draw(s: Series, x: _Axis, y: _Axis, x0: float, x1: float) -> list[str]:
    dash = ' stroke-dasharray="6 4"' if s.dashed else ""
    name = escape(s.name)
    css = escape(f"series {s.css}".strip())
    if s.kind == "hline":
        out = []
        for _, v in s.points:
            if y.ok(v):
                py = y.px(v)
                out.append(
                    f'<line x1="{x0}" x2="{x1}" y1="{py:.1f}" y2="{py:.1f}" class="{css}" '
                    f'data-y="{v:.6g}" stroke="{s.color}" stroke-width="1.5"{dash}>'
                    f"<title>{name}: {v:.4g}</title></line>"
                )
        return out
    pts = [(px, py) for px, py in s.points if x.ok(px) and y.ok(py)]
    labels = list(s.labels) if len(s.labels) == len(s.points) else [""] * len(s.points)
    out = []
    if s.kind == "line" and len(pts) > 1:
        coords = " ".join(f"{x.px(a):.1f},{y.px(b):.1f}" for a, b in pts)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{s.color}" '
            f'stroke-width="1.8" class="{css}" data-name="{name}"{dash}/>'
        )
    radius = 2.5 if s.kind == "line" else 5
    for (a, b), label in zip(s.points, labels, strict=True):
        if not (x.ok(a) and y.ok(b)):
            continue
        tip = f"{name}{' ' + escape(label) if label else ''}: x={a:g}, y={b:.4g}"
        out.append(
            f'<circle cx="{x.px(a):.1f}" cy="{y.px(b):.1f}" r="{radius}" '
            f'fill="{s.color}" class="{css}" data-x="{a:.6g}" data-y="{b:.6g}" '
            f'data-label="{escape(label)}"><title>{tip}</title></circle>'
        )
    return out


def _legend(series: Sequence[Series], left: float, top: float) -> str:
    """One line per distinct series, beside the plot (right of it), marker then name."""
    names = list(dict.fromkeys((s.name, s.color, s.kind, s.dashed) for s in series))
    out = ['<g class="legend">']
    for i, (name, color, kind, dashed) in enumerate(names):
        y = top + 14 * i
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        if kind == "points":
            mark = f'<circle cx="{left + 8}" cy="{y + 4}" r="4" fill="{color}"/>'
        else:
            mark = (
                f'<line x1="{left}" x2="{left + 16}" y1="{y + 4}" y2="{y + 4}" '
                f'stroke="{color}" stroke-width="2"{dash}/>'
            )
        out.append(
            f'{mark}<text x="{left + 20}" y="{y + 8}" class="legend-text">{escape(name)}</text>'
        )
    out.append("</g>")
    return "".join(out)
