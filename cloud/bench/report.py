"""The benchmark's report: rows aggregated over seeds, results.json, results.md and plots.

- `aggregate_rows`: one row per (method family, setting, framing) -- every numeric key
  averaged over the seeds, with its sample standard deviation as ``KEY_std`` and ``seeds``
  the count.
- `budget_table`: the operational rate-distortion curve -- for each bit budget, each
  family's best nmse among its settings with ``bits_per_measurement <= budget``, and the
  winner; a lossless family at b bits counts (nmse 0) against every budget of b or more.
- `rd_table`: each family's Bjøntegaard delta rate against the grid-aware predictive coder
  over 20-40 dB (`bdrate`) and the bits it needs for 20, 30 and 40 dB.
- `fidelity_table`: the target R² compared at equal target fidelity: per family, its cheapest
  setting whose target KPI reaches 20, 30 or 40 dB on its own.
- `write_report`: DIR/results.json, DIR/results.md, DIR/rd.png, DIR/r2_vs_L.png,
  DIR/r2_vs_bits.png (frames of the first framing) and DIR/rd_frameN.png for the others.
Every section of results.md is given per framing. Non-finite numbers (a lossless codec's SNR)
are written as null.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bdrate import bd_rate, bits_at_snr
from .options import BenchOptions, BenchResult
from .supervised import FAMILIES as OBJECTIVE_FAMILIES

__all__ = [
    "BUDGETS",
    "aggregate_rows",
    "budget_table",
    "command_line",
    "fidelity_table",
    "r2_table",
    "rd_table",
    "render_markdown",
    "summarise_references",
    "write_report",
]

BUDGETS = (8, 16, 24, 32, 48, 64)  # bits per measurement
SNR_LEVELS = (20.0, 30.0, 40.0)  # dB: where the bits are read off each curve
BD_RANGE = (20.0, 40.0)  # dB: the Bjøntegaard interval
BD_REFERENCE = "grid-predictive-previous"  # the opponent every BD-rate is taken against
REFERENCE_L = 4
_R2_FLOOR = -1.0  # R² plots show nothing below
_HEAD = ("method", "setting", "L", "lossy", "frame")
_SKIP = {"seed", *_HEAD}  # keys not averaged over seeds
_WIRE = "method|payload bits|frame B/meas|wire B/meas (MQTT)|× smaller than JSON"
_SCORES = ("nmse", "snr_db", "target_snr_db", "target_r2", "target_mae")
_MAIN = "method|setting|L|lossy|bits/meas|wire B/meas|nmse|SNR dB|target SNR dB|target R²"
_MAIN += "|target MAE|seeds|fit s|code s|chosen on validation"
# What of each family was chosen on the validation sessions (docs/benchmark/validation.md);
# every family also gets the run's target weight, chosen there.
CHOSEN = {
    "grid-lossless": "predictor, table kind",
    "grid-predictive-previous": "table kind",
    "grid-predictive-linear": "table kind",
    "sdlgm": "the L -> dB mapping, learning rate",
    "topk-sae": "K, learning rate",
    "omp-dict": "K",
}
Row = dict[str, Any]


def _finite(v: Any) -> Any:
    """`v`, or None when it is a non-finite float (JSON has no inf or NaN)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value) of `values`; NaN for no values."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate_rows(records: Sequence[Row]) -> list[Row]:
    """Per-seed records -> one JSON-ready row per (method, setting, frame), in first-seen
    order."""
    groups: dict[tuple[str, str, Any], list[Row]] = {}
    for r in records:
        groups.setdefault((r["method"], r["setting"], r.get("frame")), []).append(r)
    rows = []
    for group in groups.values():
        row: Row = {k: group[0].get(k) for k in _HEAD}
        row["seeds"] = len(group)
        stds = {}
        numeric = (k for r in group for k, v in r.items() if _is_number(v) and k not in _SKIP)
        for key in dict.fromkeys(numeric):
            vals = [r[key] for r in group if _is_number(r.get(key))]
            row[key], stds[f"{key}_std"] = _spread(vals)
        rows.append({k: _finite(v) for k, v in {**row, **stds}.items()})
    return rows


def summarise_references(per_seed: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """Mean and ``_std`` over seeds of each reference score (None stays None)."""
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in per_seed[0] if per_seed else ():
        vals = [v for d in per_seed if (v := d.get(key)) is not None]
        mean, std = _spread(vals)
        out[key], out[f"{key}_std"] = _finite(mean), _finite(std)
    return out


def _lossy_families(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r["lossy"] and r.get("nmse") is not None and r.get("bits_per_measurement") is not None:
            out.setdefault(r["method"], []).append(r)
    return out


def _lossless_bits(rows: Sequence[Row]) -> dict[str, float]:
    """Each lossless family's bits per measurement (its cheapest setting)."""
    out: dict[str, float] = {}
    for r in rows:
        bits = r.get("bits_per_measurement")
        if not r["lossy"] and bits is not None:
            out[r["method"]] = min(bits, out.get(r["method"], math.inf))
    return out


def budget_table(rows: Sequence[Row], budgets: Sequence[int] = BUDGETS) -> list[Row]:
    """Per budget: ``{"budget", "best": {family: nmse or None}, "winner": family or None}``;
    a lossless family within the budget scores 0 (ties: the fewer bits win)."""
    families = _lossy_families(rows)
    lossless = _lossless_bits(rows)
    table = []
    for budget in budgets:
        best: dict[str, float | None] = {}
        cost: dict[str, float] = {}
        for family, rs in families.items():
            fits = [r for r in rs if r["bits_per_measurement"] <= budget]
            top = min(fits, key=lambda r: (r["nmse"], r["bits_per_measurement"]), default=None)
            best[family] = None if top is None else top["nmse"]
            if top is not None:
                cost[family] = top["bits_per_measurement"]
        for family, bits in lossless.items():
            best[family] = 0.0 if bits <= budget else None
            cost[family] = bits
        scored = {f: v for f, v in best.items() if v is not None}
        winner = min(scored, key=lambda f: (scored[f], cost[f])) if scored else None
        table.append({"budget": budget, "best": best, "winner": winner})
    return table


def _frontier(
    points: Iterable[tuple[float, float]], lower: bool, per_x: bool = False
) -> list[tuple[float, float]]:
    """(x, y) by increasing x that beat every point of smaller x (`lower` y is better or
    not); with `per_x`, simply the best y at each x."""

    def better(a: float, b: float) -> bool:
        return a < b if lower else a > b

    best: dict[float, float] = {}
    for x, y in points:
        if x not in best or better(y, best[x]):
            best[x] = y
    out: list[tuple[float, float]] = []
    for x, y in sorted(best.items()):
        if per_x or not out or better(y, out[-1][1]):
            out.append((x, y))
    return out


def _curve(rows: Sequence[Row]) -> list[tuple[float, float]]:
    return [
        (r["bits_per_measurement"], r["snr_db"])
        for r in rows
        if r.get("snr_db") is not None and r.get("bits_per_measurement")
    ]


def rd_table(rows: Sequence[Row], reference: str = BD_REFERENCE) -> list[Row]:
    """Per family: ``{"method", "lossy", "bd_rate" (percent against `reference`, None when
    either curve has fewer than four points in BD_RANGE), "bits": {dB: bits or None}}``; a
    lossless family needs its bits at every level."""
    families = _lossy_families(rows)
    ref = _curve(families.get(reference, []))
    out: list[Row] = []
    for family, rs in families.items():
        points = _curve(rs)
        bd = bd_rate(ref, points, *BD_RANGE) if ref and family != reference else None
        bits = {level: bits_at_snr(points, level) if points else None for level in SNR_LEVELS}
        out.append({"method": family, "lossy": True, "bd_rate": bd, "bits": bits})
    for family, b in _lossless_bits(rows).items():
        out.append({"method": family, "lossy": False, "bd_rate": None,
                    "bits": dict.fromkeys(SNR_LEVELS, b)})  # fmt: skip
    return out


def fidelity_table(rows: Sequence[Row], levels: Sequence[float] = SNR_LEVELS) -> list[Row]:
    """Per family: ``{"method", "at": {dB: row or None}}``, its cheapest setting whose target
    KPI alone reaches that SNR (lossless: every level), for R² at equal target fidelity."""
    out: list[Row] = []
    for family in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == family and r.get("bits_per_measurement")]
        at: dict[float, Row | None] = {}
        for level in levels:
            fits = [
                r for r in rs if not r["lossy"] or (r.get("target_snr_db") or -math.inf) >= level
            ]
            at[level] = min(fits, key=lambda r: r["bits_per_measurement"], default=None)
        out.append({"method": family, "at": at})
    return out


def _reference_L(rows: Sequence[Row]) -> int | None:
    Ls = sorted({r["L"] for r in rows if r["L"] is not None})
    return REFERENCE_L if REFERENCE_L in Ls else (Ls[len(Ls) // 2] if Ls else None)


def _r2_entry(family: str, row: Row | None) -> Row:
    keys = ("setting", "bits_per_measurement", "target_r2", "target_r2_std")
    return {"method": family, **{k: row.get(k) if row else None for k in keys}}


def r2_table(rows: Sequence[Row]) -> tuple[int | None, float | None, list[Row]]:
    """(reference L, its sdlgm bits, entries): target R² at the reference L for every family
    with an L, and for the others their best setting with bits <= sdlgm's bits at that L (the
    largest bits of any family at that L without sdlgm; any bits when no family has an L)."""
    ref = _reference_L(rows)
    at_L = [r for r in rows if r["L"] is not None and r["L"] == ref]
    sdlgm = [r for r in at_L if r["method"] == "sdlgm"]
    pool = sdlgm or at_L
    ref_bits = max((r["bits_per_measurement"] for r in pool), default=None)
    entries = [_r2_entry(r["method"], r) for r in at_L]
    with_L = {r["method"] for r in rows if r["L"] is not None}
    for family in dict.fromkeys(r["method"] for r in rows if r["method"] not in with_L):
        fits = [
            r
            for r in rows
            if r["method"] == family
            and (ref_bits is None or r["bits_per_measurement"] <= ref_bits)
            and r.get("target_r2") is not None
        ]
        entries.append(_r2_entry(family, max(fits, key=lambda r: r["target_r2"], default=None)))
    return ref, ref_bits, entries


def _num(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _pm(row: Row, key: str, spec: str = ".3g") -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    return _num(mean, spec) if std is None or mean is None else f"{mean:{spec}} ± {std:{spec}}"


def _table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def _main_cells(r: Row) -> list[str]:
    cells = [r["method"], r["setting"], _num(r["L"]), "yes" if r["lossy"] else "no"]
    cells += [_num(r.get(k), ".2f") for k in ("bits_per_measurement", "wire_bytes_per_measurement")]
    cells += [_pm(r, k, ".1f" if k.endswith("snr_db") else ".3g") for k in _SCORES]
    seconds = [_num(r.get(k), ".1f") for k in ("fit_seconds", "code_seconds")]
    return [*cells, str(r["seeds"]), *seconds, CHOSEN.get(r["method"], "target weight")]


def _wire_table(rows: Sequence[Row], refs: dict[str, Any]) -> list[str]:
    json_wire = refs.get("json_wire_bytes_per_measurement")
    json_bytes = _num(refs.get("json_bytes_per_measurement"), ".1f")
    lines = [["JSON per measurement (reference)", "—", json_bytes, _num(json_wire, ".1f"), "1"]]
    for r in sorted(rows, key=lambda r: r.get("wire_bytes_per_measurement") or math.inf):
        wire = r.get("wire_bytes_per_measurement")
        cells = [f"{r['method']} {r['setting']}", _num(r.get("bits_per_measurement"), ".1f")]
        cells += [_num(r.get("frame_bytes_per_measurement"), ".2f"), _num(wire, ".2f")]
        lines.append([*cells, _num(json_wire / wire if json_wire and wire else None, ".0f")])
    return _table(_WIRE.split("|"), lines)


def _budget_lines(rows: Sequence[Row]) -> list[str]:
    table = budget_table(rows)
    families = [*_lossy_families(rows), *_lossless_bits(rows)]

    def cell(v: float | None) -> str:
        return "exact" if v == 0.0 else _num(v)

    lines = [
        (str(t["budget"]), *(cell(t["best"][f]) for f in families), t["winner"] or "—")
        for t in table
    ]
    return _table(("bits ≤", *families, "winner"), lines)


def _rd_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for e in rd_table(rows):
        bd = e["bd_rate"]
        if e["method"] == BD_REFERENCE:
            bd_cell = "reference"
        elif not e["lossy"]:
            bd_cell = "lossless"
        else:
            bd_cell = "— (< 4 points in range)" if bd is None else f"{bd:+.1f} %"
        bits = [_num(e["bits"][level], ".1f") for level in SNR_LEVELS]
        lines.append([e["method"], bd_cell, *bits])
    lo, hi = BD_RANGE
    head = ("method", f"BD-rate vs {BD_REFERENCE}", *(f"bits @ {v:g} dB" for v in SNR_LEVELS))
    return [
        f"Bjøntegaard delta rate over {lo:g}-{hi:g} dB (PCHIP on each curve's lower "
        "envelope; negative: fewer bits at equal SNR) and the bits each curve needs per "
        "measurement (a lossless codec: its bits at any SNR; — where the curve does not reach).",
        "",
        *_table(head, lines),
    ]


def _fidelity_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for e in fidelity_table(rows):
        cells = [e["method"]]
        for level in SNR_LEVELS:
            r = e["at"][level]
            bits = None if r is None else r["bits_per_measurement"]
            cells.append("—" if r is None else f"{bits:.1f} b, R² {_num(r.get('target_r2'))}")
        lines.append(cells)
    head = ("method", *(f"target ≥ {v:g} dB: bits, R²" for v in SNR_LEVELS))
    return [
        "### Target R² at equal target fidelity",
        "",
        "Each family's cheapest setting whose target KPI alone reaches the SNR (every codec "
        "weights the target alike).",
        "",
        *_table(head, lines),
    ]


def _r2_lines(rows: Sequence[Row], refs: dict[str, Any]) -> list[str]:
    ref_L, ref_bits, entries = r2_table(rows)
    lines = [
        [
            e["method"],
            e["setting"] or "—",
            _num(e["bits_per_measurement"], ".1f"),
            _pm(e, "target_r2"),
        ]
        for e in entries
    ]
    title = f"at L={ref_L} (others: best setting with bits ≤ {_num(ref_bits, '.1f')})"
    if ref_L is None:
        title = "(no method has an L: best setting of each family)"
    return [
        f"### Target R² {title}",
        "",
        *_table(("method", "setting", "bits", "target R²"), lines),
        "",
        f"Ceiling (the predictor on raw KPIs): R² {_pm(refs, 'raw_target_r2')}; "
        f"persistence floor: R² {_num(refs.get('persistence_target_r2'))}.",
    ]


_OBJECTIVES = (
    "family", "L", "own target MAE", "own target R²", "common R²", "nmse", "codes used",
    "at cap", "bits/meas",
)  # fmt: skip


def _objective_lines(rows: Sequence[Row]) -> list[str]:
    """The training-objective families (`supervised`): each at each L, own predictor first."""
    mine = [r for r in rows if r["method"] in OBJECTIVE_FAMILIES]
    if not mine:
        return []

    def cells(r: Row) -> list[str]:
        cap = r.get(f"nnz_share_{r['L']}")
        return [
            r["method"], str(r["L"]), _pm(r, "own_target_mae", ".4g"),
            _pm(r, "own_target_r2", ".3f"), _pm(r, "target_r2", ".3f"), _pm(r, "nmse", ".3f"),
            _pm(r, "mean_nonzeros", ".2f"), "—" if cap is None else f"{cap:.0%}",
            _pm(r, "bits_per_measurement", ".1f"),
        ]  # fmt: skip

    return [
        "## Training objectives and sparsity schedule (the deployed codec)",
        "",
        "Own: the code predictor trained with the model (what the cloud runs on its codes); "
        "common: the benchmark's predictor fed the decoded KPIs. sdlgm-adaptive starts with "
        "4 L slots and tightens to L: compare it with sdlgm-generative at the same L.",
        "",
        *_table(_OBJECTIVES, map(cells, sorted(mine, key=lambda r: (r["L"], r["method"])))),
    ]


def _framings(rows: Sequence[Row]) -> list[Any]:
    return list(dict.fromkeys(r.get("frame") for r in rows))


def _framing_title(frame: Any, refs: dict[str, Any]) -> str:
    agent = " (the edge agent's default framing at this data's pace)"
    return f"## Frames of {frame}{agent if frame == refs.get('agent_frame') else ''}"


def command_line(o: BenchOptions) -> str:
    """The `sparsetel benchmark` command that runs `o`, quoted for a shell (the report's
    header)."""
    q = shlex.quote
    parts = [
        f"sparsetel benchmark --data {q(str(o.data))} --kpis {q(','.join(o.kpis))}",
        f"--target {q(o.target)}",
        f"--horizon {o.horizon} --L {','.join(map(str, o.Ls))}"
        + ("" if o.K is None else f" --K {o.K}"),
        f"--seeds {','.join(map(str, o.seeds))} --framing {','.join(o.framings)} --on {o.on}",
        f"--target-weight {o.target_weight:g}",
    ]
    if o.methods:
        parts.append(f"--methods {q(','.join(o.methods))}")
    if o.quick:
        parts.append("--quick")
    if o.jobs:
        parts.append(f"--jobs {o.jobs}")
    return " \\\n  ".join(parts)


def render_markdown(result: BenchResult) -> str:
    """results.md: per framing the settings, matched budgets, BD-rates, target accuracy at
    equal bits and at equal target fidelity, and bytes on the wire."""
    rows, refs, o, timing = result.rows, result.references, result.options, result.timing
    intro = (
        f"Data `{o.data}`, KPIs {', '.join(o.kpis)}; target {o.target} at h={o.horizon}, "
        f"window {o.window}, weighted {o.target_weight:g}x by every codec; "
        f"K={o.K or 'each its own'}; seeds "
        f"{list(o.seeds)}; mean ± std over seeds. Scored on the {o.on} sessions "
        f"({timing['test_rows']} rows); every choice of every method was made on the "
        "validation sessions (docs/benchmark/validation.md; the last column says what). "
        f"Run time {timing['total_seconds']:.0f} s"
        + (f" on {timing['jobs']:.0f} worker processes." if timing.get("jobs") else ".")
    )
    sections = [["# sparsetel benchmark", "", intro, "", "```", command_line(o), "```"]]
    for frame in _framings(rows):
        mine = [r for r in rows if r.get("frame") == frame]
        framing = f"frames of {frame} at 1 Hz, one MQTT QoS 1 PUBLISH each"
        sections += [
            [_framing_title(frame, refs)],
            ["### Every setting", "", *_table(_MAIN.split("|"), map(_main_cells, mine))],
            ["### Matched budgets (best nmse with bits/meas ≤ budget)", "", *_budget_lines(mine)],
            ["### Rate at equal SNR", "", *_rd_lines(mine)],
            _r2_lines(mine, refs),
            _fidelity_lines(mine),
            [f"### Bytes on the wire per measurement ({framing})", "", *_wire_table(mine, refs)],
        ]
    objectives = _objective_lines(rows)
    if objectives:
        sections.append(objectives)
    if result.missing:
        sections.append([f"Not run (module absent): {', '.join(result.missing)}."])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"


@dataclass(frozen=True)
class _Panel:
    """One plot of `y` against `x` over the rows `keep` selects: every setting a marker with
    its seed spread; a family's line joins its frontier (the settings no cheaper one beats;
    `lower` y is better or not) or, with `per_x`, its best setting at each x."""

    name: str
    x: str
    y: str
    keep: Callable[[Row], bool]
    lower: bool = False
    per_x: bool = False
    log_y: bool = False


_PANELS = (
    _Panel("rd.png", "bits_per_measurement", "nmse", lambda r: r["lossy"], lower=True, log_y=True),
    _Panel("r2_vs_L.png", "L", "target_r2", lambda r: r["L"] is not None, per_x=True),
    _Panel("r2_vs_bits.png", "bits_per_measurement", "target_r2", lambda r: True),
)
_REFERENCE_LINES = (
    ("raw_target_r2", "--", "raw KPIs (ceiling)"),
    ("persistence_target_r2", ":", "persistence (floor)"),
)


def _plot(path: Path, rows: Sequence[Row], panel: _Panel, refs: dict[str, Any]) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, the Agg canvas
    from matplotlib.ticker import FormatStrFormatter

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    x, y = panel.x, panel.y
    for i, family in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = [
            (r[x], r[y], r.get(f"{y}_std") or 0.0)
            for r in rows
            if r["method"] == family
            and panel.keep(r)
            and r.get(x) is not None
            and r.get(y) is not None
            and (not panel.log_y or r[y] > 0)
        ]
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, fmt="o", color=f"C{i % 10}", alpha=0.6, capsize=3)
            line = _frontier(zip(xs, ys, strict=True), panel.lower, panel.per_x)
            ax.plot(*zip(*line, strict=True), color=f"C{i % 10}", label=family)
    if panel.y == "target_r2":
        for key, style, label in _REFERENCE_LINES:
            if refs.get(key) is not None:
                ax.axhline(refs[key], color="gray", linestyle=style, label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    if panel.y == "target_r2":  # one codec's R² of -1e6 must not flatten every other line
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, _R2_FLOOR), min(hi, 1.05))
    if panel.log_y:
        ax.set_yscale("log")
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(result: BenchResult, out: str | Path) -> list[Path]:
    """Write results.json, results.md, the three plots of the first framing and a
    rate-distortion plot per other framing into `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "options": result.options.to_dict(),
        "timing": result.timing,
        "split": result.split,
        "missing": result.missing,
        "references": result.references,
        "rows": result.rows,
        "records": [{k: _finite(v) for k, v in r.items()} for r in result.records],
    }
    paths = [out / "results.json", out / "results.md"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(result), encoding="utf-8")
    framings = _framings(result.rows) or [None]
    first = [r for r in result.rows if r.get("frame") == framings[0]]
    for panel in _PANELS:
        paths.append(out / panel.name)
        _plot(paths[-1], first, panel, result.references)
    for frame in framings[1:]:
        paths.append(out / f"rd_frame{frame}.png")
        mine = [r for r in result.rows if r.get("frame") == frame]
        _plot(paths[-1], mine, _PANELS[0], result.references)
    return paths
