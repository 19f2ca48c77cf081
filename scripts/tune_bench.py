"""Make the benchmark's choices on the validation sessions, never the test ones.

Every method is fitted on the training sessions and scored on the validation sessions
(`BenchOptions(on="validation")`, frames of 50, seed 0); the test sessions are not read. It
chooses, in this order, each with the rule written beside it:

1. the grid-aware lossless coder's predictor and table kind: the fewest bits;
2. the grid-aware predictive coder's table kind: the lower Bjøntegaard delta rate of one
   against the other over 20-40 dB;
3. the target weight every codec gives the target KPI, among 1, 2, 4 and 8: the highest
   target R² of SDLGM at the deployed L = 4 among the weights that keep its overall SNR
   within 1 dB of weight 1's (a weight buys the target's fidelity with the other KPIs');
4. SDLGM's L -> dB mapping (the SNR aimed at with L = 1, 7.5 dB more per doubling), among
   10, 15 and 20 dB: the largest mean bit saving of its L = 1, 2, 4, 8 points against the
   grid-aware predictive coder's curve at the same SNR;
5. each learned baseline's K (TopK SAE, OMP), among 32, 64, 128 and 256; then
6. the TopK SAE's learning rate, among 3e-3, 1e-2 and 3e-2; and
7. SDLGM's learning rate, among the same: each the fewest bits against the predictive
   coder at equal SNR, over its points (`extra_bits`).

Where a rule has too little to go on (a curve with too few points in 20-40 dB, no SDLGM
point inside the predictive coder's SNR span, no SNR at weight 1), the script says so and
keeps a stated default (`FALLBACK_TABLE`, `FALLBACK_AT_L1`, `FALLBACK_WEIGHT`, and the
benchmark's own K and learning rates).

It writes a Markdown report (the tables and the choices) and prints the choices as JSON;
the benchmark's constants (`options.TARGET_WEIGHT`, `sdlgm.SNR_AT_L1`, `gridcode`'s
defaults) are set to them by hand, and its test run says which were chosen here.

    python scripts/tune_bench.py --data ../shared/data/uccmisl-5g/5G-production-dataset \\
        --out docs/benchmark/validation.md

`--quick` runs the same rules in seconds on a small data set (tests): SDLGM and the KPI
predictor trained as the benchmark's `--quick` trains them (SDLGM: 30 steps of 256), ten
grid steps, weights 1 and 8, 10 and 20 dB at L = 1 each tried at L = 1 and 2, and every fit
in this process (`QUICK`). Its choices check the script, not the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sparsetel.cloud.bench.bdrate import bd_rate, bits_at_snr
from sparsetel.cloud.bench.gridcode import QUICK_STEPS, GridLossless, grid_methods
from sparsetel.cloud.bench.learned import (
    LEARNED_K,
    SAE_LR,
    SAE_STEPS,
    SAE_STEPS_QUICK,
    FitCache,
    TopKSAE,
    learned_methods,
)
from sparsetel.cloud.bench.options import BenchOptions
from sparsetel.cloud.bench.runner import measure
from sparsetel.cloud.bench.sdlgm import LR as SDLGM_LR
from sparsetel.cloud.bench.sdlgm import SDLGMCodec, target_snr_db

KPIS = "RSRP,RSRQ,SNR,CQI,RSSI,NRxRSRP,NRxRSRQ,DL_bitrate,UL_bitrate,Speed"
DEPLOYED_L = 4
SNR_SLACK_DB = 1.0
# What a rule keeps when it has too little to go on: the simpler tables; the mapping the
# benchmark has used (its lowest candidate); no extra weight on the target.
FALLBACK_TABLE = "static"
FALLBACK_AT_L1 = 10.0
FALLBACK_WEIGHT = 1.0
Row = dict[str, Any]
RatePoint = tuple[float, float]  # (bits per measurement, SNR dB)


@dataclass(frozen=True)
class Sweep:
    """What one run measures: SDLGM's training (`steps` of `batch`), the candidate target
    `weights` (1 first: the others are held to its SNR), dB at L = 1 (`at_l1`) with the Ls
    each is tried at, and the grid-aware predictive coder's steps (None: `gridcode.STEPS`)."""

    steps: int
    batch: int
    weights: tuple[float, ...]
    at_l1: tuple[float, ...]
    Ls: tuple[int, ...]
    grid_steps: tuple[float, ...] | None = None
    learned_K: tuple[int, ...] = (32, 64, 128, 256)
    sae_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    sdlgm_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    quick: bool = False


# The full run: SDLGM trained as the benchmark's default run trains it.
FULL = Sweep(150, 512, (1.0, 2.0, 4.0, 8.0), (10.0, 15.0, 20.0), (1, 2, 4, 8))
# The quick run: the benchmark's `--quick` training, and ten steps from 0.05 to 1.6, where
# uccmisl's and the simulator's SNR crosses 20-40 dB, so that the BD-rate has its four
# points there where the data allows.
QUICK = Sweep(
    30, 256, (1.0, 8.0), (10.0, 20.0), (1, 2), QUICK_STEPS, (8, 16), (1e-2, 3e-2), (1e-2, 3e-2),
    True,
)  # fmt: skip


def _rows(options: BenchOptions, methods: list[Any]) -> list[Row]:
    return measure(options, methods).rows


def _points(rows: list[Row]) -> list[RatePoint]:
    return [(r["bits_per_measurement"], r["snr_db"]) for r in rows if r.get("snr_db")]


def _reference(rows: list[Row]) -> list[RatePoint]:
    return _points([r for r in rows if r["method"] == "grid-predictive-previous"])


def pick_lossless(bits: Mapping[tuple[str, str], float]) -> tuple[str, str]:
    """The (predictor, table) with the fewest bits per measurement; the first of a tie."""
    return min(bits, key=lambda c: bits[c])


def choose_lossless(options: BenchOptions) -> tuple[dict[str, str], list[str]]:
    candidates = [(p, t) for p in ("delta", "linear") for t in ("static", "adaptive")]
    methods = [GridLossless(predictor=p, table=t) for p, t in candidates]
    rows = _rows(options, methods)
    bits = {c: r["bits_per_measurement"] for c, r in zip(candidates, rows, strict=True)}
    predictor, table = pick_lossless(bits)
    lines = ["| predictor | table | bits/meas |", "|---|---|---|"]
    lines += [f"| {p} | {t} | {b:.2f} |" for (p, t), b in bits.items()]
    return {"predictor": predictor, "table": table}, lines


def pick_predictive_table(curves: Mapping[str, Sequence[RatePoint]]) -> tuple[str, float | None]:
    """The table kind whose curve (`curves["static"]`, `curves["adaptive"]`) needs fewer bits
    at equal SNR over 20-40 dB: "adaptive" when its BD-rate against "static" is below 0, else
    "static"; with that BD-rate, or `FALLBACK_TABLE` and None when a curve has too few
    points there to compare."""
    bd = bd_rate(curves["static"], curves["adaptive"])
    if bd is None:
        return FALLBACK_TABLE, None
    return ("adaptive" if bd < 0 else "static"), bd


def choose_predictive_table(options: BenchOptions, sweep: Sweep) -> tuple[str, list[str]]:
    curves = {}
    for table in ("static", "adaptive"):
        methods = _predictive(sweep, table)
        curves[table] = _reference(_rows(options, methods))
    chosen, bd = pick_predictive_table(curves)
    lines = [f"BD-rate of adaptive against static tables, 20-40 dB: {_pct(bd)}; chosen: {chosen}."]
    if bd is None:
        why = "a curve has too few points in 20-40 dB to compare"
        lines[0] += " " + _fell_back("predictive tables", why, chosen)
    for table, pts in curves.items():
        at = ", ".join(f"{_num(bits_at_snr(pts, s))} @ {s:g} dB" for s in (20, 30, 40))
        lines.append(f"- {table}: bits {at}")
    return chosen, lines


def pick_weight(found: Mapping[float, Row]) -> float | None:
    """Among the weights whose overall SNR is within SNR_SLACK_DB of weight 1's, the one with
    the highest target R² (the smaller of a tie; a weight without R² never wins). None when
    weight 1 has no SNR to hold the others to."""
    anchor = found[1.0].get("snr_db")
    if anchor is None:
        return None

    def held(r: Row) -> bool:
        return r.get("snr_db") is not None and r["snr_db"] >= anchor - SNR_SLACK_DB

    def score(w: float) -> tuple[float, float]:
        r2 = found[w].get("target_r2")
        return (-math.inf if r2 is None else r2, -w)

    return max((w for w, r in found.items() if held(r)), key=score)


def choose_weight(options: BenchOptions, sweep: Sweep) -> tuple[float, list[str]]:
    found: dict[float, Row] = {}
    for w in sweep.weights:
        codec = SDLGMCodec("sdlgm", DEPLOYED_L, sweep.steps, sweep.batch)
        found[w] = _rows(replace(options, target_weight=w), [codec])[0]
    picked = pick_weight(found)
    chosen = FALLBACK_WEIGHT if picked is None else picked
    lines = ["| weight | bits/meas | SNR dB | target SNR dB | target R² |", "|---|---|---|---|---|"]
    for w, r in found.items():
        lines.append(
            f"| {w:g} | {r['bits_per_measurement']:.2f} | {_num(r['snr_db'])} | "
            f"{_num(r.get('target_snr_db'))} | {_num(r.get('target_r2'), 4)} |"
        )
    if picked is None:
        lines += ["", _fell_back("target weight", "weight 1 has no SNR", f"{chosen:g}")]
    return chosen, lines


def extra_bits(rows: Sequence[Row], reference: Sequence[RatePoint]) -> float:
    """Mean of bits / the reference curve's bits at the same SNR, less 1, over the `rows`
    whose SNR the reference spans (negative: a saving); inf when it spans none of them."""
    ratios = []
    for r in rows:
        ref = None if r.get("snr_db") is None else bits_at_snr(reference, r["snr_db"])
        if ref is not None:
            ratios.append(r["bits_per_measurement"] / ref - 1.0)
    return sum(ratios) / len(ratios) if ratios else math.inf


def pick_mapping(extra: Mapping[float, float]) -> float | None:
    """The dB at L = 1 with the fewest extra bits (`extra_bits`; the first of a tie); None
    when no candidate has a point the reference spans."""
    return pick_cheapest(extra)


def pick_cheapest(extra: Mapping[Any, float]) -> Any | None:
    """The candidate with the fewest extra bits (`extra_bits`; the first of a tie); None
    when none has a point the reference spans."""
    best = min(extra, key=lambda a: extra[a])
    return best if math.isfinite(extra[best]) else None


def _cheapest(
    what: str, extra: Mapping[Any, float], default: Any, name: str = "{}"
) -> tuple[Any, list[str]]:
    """`pick_cheapest` of `extra` (its fallback `default`) and the report's lines."""
    picked = pick_cheapest(extra)
    lines = [f"| {what} | mean bits against the predictive coder at equal SNR |", "|---|---|"]
    lines += [f"| {name.format(c)} | {_pct(100 * e)} |" for c, e in extra.items()]
    if picked is None:
        why = "no point lies in the predictive coder's SNR span"
        lines += ["", _fell_back(what, why, name.format(default))]
    chosen = default if picked is None else picked
    return chosen, [*lines, "", f"Chosen: {name.format(chosen)}."]


def choose_learned_K(
    options: BenchOptions, reference: Sequence[RatePoint], sweep: Sweep
) -> tuple[dict[str, int], list[str]]:
    """Each learned baseline's K (TopK SAE, OMP): the fewest extra bits over its L and
    coefficient widths against the predictive coder."""
    extra: dict[str, dict[int, float]] = {"topk-sae": {}, "omp-dict": {}}
    for K in sweep.learned_K:
        rows = _rows(options, learned_methods(sweep.Ls, K, sweep.quick))
        for family, by_K in extra.items():
            by_K[K] = extra_bits([r for r in rows if r["method"] == family], reference)
    chosen, lines = {}, []
    for family, by_K in extra.items():
        chosen[family], more = _cheapest(f"{family} K", by_K, LEARNED_K, "K = {}")
        lines += [f"### {family}", "", *more, ""]
    return chosen, lines


def choose_sae_lr(
    options: BenchOptions, reference: Sequence[RatePoint], sweep: Sweep, K: int
) -> tuple[float, list[str]]:
    """The TopK SAE's learning rate at its K: the fewest extra bits."""
    steps = SAE_STEPS_QUICK if sweep.quick else SAE_STEPS
    extra = {}
    for lr in sweep.sae_lrs:
        cache = FitCache()
        sae = [TopKSAE(L, K, b, steps, cache=cache, lr=lr) for L in sweep.Ls for b in (4, 8)]
        extra[lr] = extra_bits(_rows(options, sae), reference)
    return _cheapest("TopK SAE learning rate", extra, SAE_LR, "{:g}")


def choose_sdlgm_lr(
    options: BenchOptions, reference: Sequence[RatePoint], sweep: Sweep, at_l1: float
) -> tuple[float, list[str]]:
    """SDLGM's learning rate at the chosen weight and mapping: the fewest extra bits over its
    Ls."""
    extra = {}
    for lr in sweep.sdlgm_lrs:
        codecs = [
            SDLGMCodec("sdlgm", L, sweep.steps, sweep.batch, target_snr_db(L, at_l1), lr=lr)
            for L in sweep.Ls
        ]
        extra[lr] = extra_bits(_rows(options, codecs), reference)
    return _cheapest("SDLGM learning rate", extra, SDLGM_LR, "{:g}")


def choose_mapping(options: BenchOptions, table: str, sweep: Sweep) -> tuple[float, list[str]]:
    reference = _reference(_rows(options, _predictive(sweep, table)))
    savings: dict[float, float] = {}
    lines = ["| dB at L=1 | L | aims at dB | bits/meas | SNR dB | predictive's bits there |"]
    lines.append("|---|---|---|---|---|---|")
    steps, batch, Ls = sweep.steps, sweep.batch, sweep.Ls
    for at in sweep.at_l1:
        codecs = [SDLGMCodec("sdlgm", L, steps, batch, target_snr_db(L, at)) for L in Ls]
        rows = _rows(options, codecs)
        for L, r in zip(Ls, rows, strict=True):
            ref = None if r["snr_db"] is None else bits_at_snr(reference, r["snr_db"])
            lines.append(
                f"| {at:g} | {L} | {target_snr_db(L, at):g} | {r['bits_per_measurement']:.2f} "
                f"| {_num(r['snr_db'])} | {_num(ref)} |"
            )
        savings[at] = extra_bits(rows, reference)
    picked = pick_mapping(savings)
    chosen = FALLBACK_AT_L1 if picked is None else picked
    lines.append("")
    lines.append("Mean bits against the predictive coder at equal SNR: " + ", ".join(
        f"{a:g} dB: {_pct(100 * savings[a])}" for a in sweep.at_l1))  # fmt: skip
    if picked is None:
        why = "no SDLGM point lies in the predictive coder's SNR span"
        lines += ["", _fell_back("L -> dB mapping", why, f"{chosen:g} dB")]
    return chosen, lines


def _predictive(sweep: Sweep, table: str) -> list[Any]:
    """The grid-aware predictive coder ("previous") with `table` at each of the sweep's steps."""
    methods = grid_methods(steps=sweep.grid_steps, table=table)
    return [m for m in methods if m.family == "grid-predictive-previous"]


def _fell_back(what: str, why: str, default: str) -> str:
    """Say on stderr, and return for the report, that `what` fell back to its `default`."""
    note = f"No choice for the {what}: {why}; falling back to the default, {default}."
    print(f"tune_bench: {note}", file=sys.stderr)
    return note


def _num(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "— (too few points)" if v is None or not math.isfinite(v) else f"{v:+.1f} %"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--kpis", default=KPIS)
    parser.add_argument("--target", default="DL_bitrate")
    parser.add_argument("--out", type=Path, help="the Markdown report (default: none)")
    parser.add_argument("--quick", action="store_true", help="seconds on a small data set (tests)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    sweep = QUICK if args.quick else FULL
    options = BenchOptions(
        data=args.data, kpis=args.kpis, target=args.target, seeds=(0,), on="validation",
        framings=("50",), progress=False,
    )  # fmt: skip
    if args.quick:  # worker processes would take longer to start than these fits take
        options = replace(options, quick=True, jobs=1)
    lossless, lossless_lines = choose_lossless(options)
    print(f"lossless: {lossless}", file=sys.stderr)
    table, table_lines = choose_predictive_table(options, sweep)
    print(f"predictive tables: {table}", file=sys.stderr)
    weight, weight_lines = choose_weight(options, sweep)
    print(f"target weight: {weight:g}", file=sys.stderr)
    weighted = replace(options, target_weight=weight)
    at_l1, mapping_lines = choose_mapping(weighted, table, sweep)
    print(f"dB at L = 1: {at_l1:g}", file=sys.stderr)
    reference = _reference(_rows(weighted, _predictive(sweep, table)))
    learned_K, K_lines = choose_learned_K(weighted, reference, sweep)
    print(f"learned baselines' K: {learned_K}", file=sys.stderr)
    sae_lr, sae_lines = choose_sae_lr(weighted, reference, sweep, learned_K["topk-sae"])
    sdlgm_lr, sdlgm_lines = choose_sdlgm_lr(weighted, reference, sweep, at_l1)
    choices = {"grid_lossless": lossless, "grid_predictive_table": table,
               "target_weight": weight, "snr_at_L1": at_l1, "learned_K": learned_K,
               "sae_lr": sae_lr, "sdlgm_lr": sdlgm_lr}  # fmt: skip
    took = time.monotonic() - started
    quick = " --quick" if args.quick else ""
    report = [
        "# The benchmark's choices, made on the validation sessions",
        "",
        f"`python scripts/tune_bench.py --data {args.data} --out {args.out}{quick}` (seed 0, "
        "frames of 50; the test "
        f"sessions are not read; {took:.0f} s). The rules are in the script's docstring. "
        "The KPI predictor keeps its best state by validation R², so R² here is a little "
        "optimistic; only the weight's rule reads it.",
        "",
        "## 1. Grid-aware lossless coder: predictor and table kind (fewest bits)",
        "",
        *lossless_lines,
        "",
        "## 2. Grid-aware predictive coder: table kind",
        "",
        *table_lines,
        "",
        "## 3. Target weight (SDLGM at L = 4)",
        "",
        *weight_lines,
        "",
        f"Chosen: {weight:g} (highest target R² within {SNR_SLACK_DB:g} dB of weight 1's SNR).",
        "",
        f"## 4. SDLGM's L -> dB mapping (at weight {weight:g})",
        "",
        *mapping_lines,
        "",
        f"Chosen: {at_l1:g} dB at L = 1.",
        "",
        f"## 5. The learned baselines' K (L = {', '.join(map(str, sweep.Ls))}, 4- and 8-bit "
        "coefficients)",
        "",
        *K_lines,
        f"## 6. The TopK SAE's learning rate (K = {learned_K['topk-sae']})",
        "",
        *sae_lines,
        "",
        f"## 7. SDLGM's learning rate ({at_l1:g} dB at L = 1)",
        "",
        *sdlgm_lines,
        "",
        "## Choices",
        "",
        "```json",
        json.dumps(choices, indent=2),
        "```",
        "",
    ]
    if args.out is not None:
        args.out.write_text("\n".join(report), encoding="utf-8")
    print(json.dumps(choices))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
