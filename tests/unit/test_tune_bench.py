"""scripts/tune_bench.py: each choosing rule on hand-made rows whose answer is known, the full
run's wiring on a stand-in for `measure`, and a `--quick` run end to end on simulated sessions
that scores the validation sessions only."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch

from sparsetel.cloud.bench import runner
from sparsetel.cloud.bench.dataset import load_bench_data
from sparsetel.cloud.bench.gridcode import STEPS
from sparsetel.cloud.bench.options import BenchOptions
from sparsetel.cloud.bench.sdlgm import sdlgm_methods
from sparsetel.cloud.data.simulator import simulate_sessions

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tune_bench.py"
KPIS = "RSRP,RSRQ,SNR,CQI,RSSI,DL_bitrate,UL_bitrate,Speed"  # the simulator's, less Load
TABLES = ("static", "adaptive")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tune_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tune() -> ModuleType:
    return _load()


def _curve(factor: float, snrs: Sequence[float]) -> list[tuple[float, float]]:
    """(bits, SNR dB) points of a codec that needs `factor` times 2**(SNR / 6) bits."""
    return [(factor * 2.0 ** (s / 6.0), s) for s in snrs]


EVERY_5_DB = [15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]  # five points in 20-40 dB


# The rules on hand-made rows.


def test_lossless_rule_picks_the_fewest_bits(tune: ModuleType) -> None:
    bits = {("delta", "static"): 35.0, ("delta", "adaptive"): 34.1,
            ("linear", "static"): 33.9, ("linear", "adaptive"): 44.0}  # fmt: skip
    assert tune.pick_lossless(bits) == ("linear", "static")
    assert tune.pick_lossless({("delta", "static"): 3.0, ("linear", "static"): 3.0}) == (
        "delta", "static",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("adaptive", "table", "bd"),
    [(0.9, "adaptive", -10.0), (1.1, "static", 10.0), (1.0, "static", 0.0)],
)
def test_table_rule_picks_the_lower_bd_rate(
    tune: ModuleType, adaptive: float, table: str, bd: float
) -> None:
    curves = {"static": _curve(1.0, EVERY_5_DB), "adaptive": _curve(adaptive, EVERY_5_DB)}
    chosen, got = tune.pick_predictive_table(curves)
    assert chosen == table
    assert got == pytest.approx(bd, abs=1e-6)


def test_table_rule_falls_back_when_a_curve_has_too_few_points(tune: ModuleType) -> None:
    # Adaptive is half the bits, but only three of its points lie in 20-40 dB.
    curves = {"static": _curve(1.0, EVERY_5_DB), "adaptive": _curve(0.5, [10, 20, 30, 40, 50])}
    assert tune.pick_predictive_table(curves) == (tune.FALLBACK_TABLE, None)
    curves = {"static": [], "adaptive": _curve(0.5, EVERY_5_DB)}
    assert tune.pick_predictive_table(curves) == (tune.FALLBACK_TABLE, None)


def _weights(**rows: tuple[float | None, float | None]) -> dict[float, dict[str, Any]]:
    """{weight: row} from w<weight>=(overall SNR dB, target R²)."""
    return {float(k[1:]): {"snr_db": s, "target_r2": r2} for k, (s, r2) in rows.items()}


@pytest.mark.parametrize(
    ("found", "weight"),
    [
        # 8 has the best R² but loses 1.5 dB: among the rest, 4 has the best.
        (_weights(w1=(22.5, 0.75), w2=(22.2, 0.78), w4=(21.75, 0.80), w8=(21.0, 0.85)), 4.0),
        # Exactly 1 dB below weight 1 still counts.
        (_weights(w1=(22.5, 0.75), w2=(22.2, 0.78), w4=(21.75, 0.80), w8=(21.5, 0.85)), 8.0),
        # A higher SNR than weight 1's is no reason to pass a weight over.
        (_weights(w1=(22.5, 0.75), w2=(23.5, 0.70), w4=(24.0, 0.90), w8=(22.0, 0.80)), 4.0),
        # Weight 1 wins when no other raises the target's R².
        (_weights(w1=(22.5, 0.75), w2=(22.4, 0.74), w4=(22.3, 0.70), w8=(20.0, 0.95)), 1.0),
        # A tie goes to the smaller weight; a weight without R² or SNR never wins.
        (_weights(w1=(22.5, 0.70), w2=(22.4, 0.80), w4=(22.3, 0.80), w8=(22.5, None)), 2.0),
        (_weights(w1=(22.5, 0.70), w2=(None, 0.99), w4=(22.3, 0.71)), 4.0),
    ],
)
def test_weight_rule_takes_the_best_target_r2_within_1_db_of_weight_1(
    tune: ModuleType, found: dict[float, dict[str, Any]], weight: float
) -> None:
    assert tune.pick_weight(found) == weight


def test_weight_rule_has_no_answer_without_weight_1s_snr(tune: ModuleType) -> None:
    assert tune.pick_weight(_weights(w1=(None, 0.7), w2=(22.0, 0.8))) is None


def test_mapping_measures_mean_extra_bits_at_equal_snr(tune: ModuleType) -> None:
    reference = _curve(1.0, EVERY_5_DB)  # spans 15 to 45 dB
    rows = [
        {"bits_per_measurement": 0.8 * 2.0 ** (20 / 6), "snr_db": 20.0},  # -20 %
        {"bits_per_measurement": 0.9 * 2.0 ** (30 / 6), "snr_db": 30.0},  # -10 %
        {"bits_per_measurement": 1.0, "snr_db": 50.0},  # beyond the reference: not counted
        {"bits_per_measurement": 1.0, "snr_db": None},  # no SNR: not counted
    ]
    assert tune.extra_bits(rows, reference) == pytest.approx(-0.15)
    assert tune.extra_bits(rows[2:], reference) == math.inf
    assert tune.extra_bits(rows, []) == math.inf


@pytest.mark.parametrize(
    ("extra", "at_l1"),
    [
        ({10.0: -0.12, 15.0: 0.03, 20.0: 0.17}, 10.0),
        ({10.0: 0.05, 15.0: -0.02, 20.0: -0.01}, 15.0),
        ({10.0: math.inf, 15.0: 0.04, 20.0: 0.01}, 20.0),
        ({10.0: math.inf, 15.0: math.inf}, None),  # nothing to compare: the script falls back
    ],
)
def test_mapping_rule_takes_the_largest_mean_saving(
    tune: ModuleType, extra: dict[float, float], at_l1: float | None
) -> None:
    assert tune.pick_mapping(extra) == at_l1


# The full run, on a stand-in for `measure` whose rows make every answer known.

LOSSLESS_BITS = {"delta, static": 35.0, "delta, adaptive": 34.0,
                 "linear, static": 33.0, "linear, adaptive": 44.0}  # fmt: skip
WEIGHT_SNR_LOSS = {1.0: 0.0, 2.0: 0.3, 4.0: 0.9, 8.0: 1.5}  # dB below weight 1's
MAPPING_FACTOR = {10.0: 1.0, 15.0: 0.8, 20.0: 1.1}  # SDLGM's bits / the predictive coder's
# A learned baseline's bits / the predictive coder's, by family and K; by the SAE's rate;
# SDLGM's by its rate: each best at a candidate that is not the benchmark's default.
LEARNED_FACTOR = {
    ("topk-sae", 32): 1.6, ("topk-sae", 64): 1.5, ("topk-sae", 128): 1.4,
    ("topk-sae", 256): 1.2, ("omp-dict", 32): 1.2, ("omp-dict", 64): 1.1,
    ("omp-dict", 128): 1.3, ("omp-dict", 256): 1.6,
}  # fmt: skip
SAE_LR_FACTOR = {3e-3: 1.1, 1e-2: 1.0, 3e-2: 0.9}
SDLGM_LR_FACTOR = {3e-3: 0.95, 1e-2: 1.0, 3e-2: 1.05}
FULL_CHOICES = {
    "grid_lossless": {"predictor": "linear", "table": "static"},
    "grid_predictive_table": "adaptive",
    "target_weight": 4.0,
    "snr_at_L1": 15.0,
    "learned_K": {"topk-sae": 256, "omp-dict": 64},
    "sae_lr": 3e-2,
    "sdlgm_lr": 3e-3,
}


def _predictive_bits(snr: float) -> float:
    return 2.0 + snr / 3.0


def _fake_row(options: BenchOptions, method: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method.family, "setting": method.setting, "L": method.L}
    if method.family == "grid-lossless":
        return {**row, "bits_per_measurement": LOSSLESS_BITS[method.setting], "snr_db": None}
    if method.family == "grid-predictive-previous":
        snr = 20.0 - 20.0 * math.log10(float(method.setting.split(",")[0][len("step=") :]))
        factor = 0.9 if method.setting.endswith("adaptive") else 1.0
        return {**row, "bits_per_measurement": factor * _predictive_bits(snr), "snr_db": snr}
    if method.family in ("topk-sae", "omp-dict"):
        snr = 10.0 + 5.0 * method.L
        factor = LEARNED_FACTOR[(method.family, method.K)]
        if method.family == "topk-sae":
            factor *= SAE_LR_FACTOR[method._options[2]]  # (steps, batch, lr, ...)
        return {**row, "bits_per_measurement": factor * _predictive_bits(snr), "snr_db": snr}
    aim = float(method.setting.split(", ")[1].split(" dB")[0])  # "L=2, 17.5 dB lattice"
    at_l1 = aim - 7.5 * math.log2(method.L)
    snr = aim - WEIGHT_SNR_LOSS[options.target_weight]
    bits = MAPPING_FACTOR.get(at_l1, 1.0) * 0.9 * _predictive_bits(snr)
    bits *= SDLGM_LR_FACTOR[method._cfg["lr"]]
    r2 = 0.7 + 0.01 * options.target_weight
    return {**row, "bits_per_measurement": bits, "snr_db": snr, "target_snr_db": aim,
            "target_r2": r2}  # fmt: skip


@dataclass
class Calls:
    """What the script asked of `measure` and of the loader."""

    measured: list[tuple[BenchOptions, list[Any]]]
    scored: list[tuple[str, list[str], dict[str, list[str]]]]  # (on, scored names, split)


def _run(tune: ModuleType, argv: list[str]) -> tuple[dict[str, Any], str]:
    """main(argv): (the JSON it printed last, its stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert tune.main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1]), err.getvalue()


def _recording(calls: Calls, measure: Callable[..., Any]) -> Callable[..., Any]:
    def recorded(options: BenchOptions, methods: Sequence[Any]) -> Any:
        calls.measured.append((options, list(methods)))
        return measure(options, methods)

    return recorded


def test_full_run_makes_the_known_choices_over_the_full_candidates(
    tune: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls([], [])

    def fake(options: BenchOptions, methods: Sequence[Any]) -> Any:
        return SimpleNamespace(rows=[_fake_row(options, m) for m in methods])

    monkeypatch.setattr(tune, "measure", _recording(calls, fake))
    out = tmp_path / "validation.md"
    choices, err = _run(tune, ["--data", str(tmp_path), "--out", str(out)])
    assert choices == FULL_CHOICES, err
    assert "No choice" not in out.read_text(encoding="utf-8")
    options = [o for o, _ in calls.measured]
    assert {(o.on, o.quick, o.jobs, o.seeds, o.framings) for o in options} == {
        ("validation", False, BenchOptions.jobs, (0,), ("50",))
    }
    sdlgm = [(o.target_weight, m.L) for o, ms in calls.measured for m in ms if m.family == "sdlgm"]
    weights = [(w, 4) for w in (1.0, 2.0, 4.0, 8.0)]  # then the mappings, at the chosen weight
    mappings = [(4.0, L) for _ in (10, 15, 20) for L in (1, 2, 4, 8)]
    rates = [(4.0, L) for _ in (3e-3, 1e-2, 3e-2) for L in (1, 2, 4, 8)]  # at 15 dB
    assert sdlgm == weights + mappings + rates
    steps = [len(ms) for _, ms in calls.measured if ms[0].family == "grid-predictive-previous"]
    assert steps == [len(STEPS)] * 4  # static, adaptive, the chosen table's reference twice
    Ks = [{m.K for m in ms} for _, ms in calls.measured if ms[0].family in ("topk-sae", "omp-dict")]
    assert Ks == [{32}, {64}, {128}, {256}, {256}, {256}, {256}]  # then the SAE's rates at its K


def test_full_run_states_each_fallback(
    tune: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The predictive coder reaches 20 dB at best (its steps cut to the coarsest three), and
    # weight 1's SDLGM has no SNR: no rule but the lossless one can choose.
    def fake(options: BenchOptions, methods: Sequence[Any]) -> Any:
        rows = [_fake_row(options, m) for m in methods]
        for r in rows:
            if r["method"] == "sdlgm" and options.target_weight == 1.0:
                r["snr_db"] = None
        return SimpleNamespace(rows=rows)

    monkeypatch.setattr(tune, "measure", fake)
    monkeypatch.setattr(tune, "FULL", replace(tune.FULL, grid_steps=(1.0, 2.0, 4.0)))
    out = tmp_path / "validation.md"
    choices, err = _run(tune, ["--data", str(tmp_path), "--out", str(out)])
    assert choices["grid_predictive_table"] == tune.FALLBACK_TABLE
    assert choices["target_weight"] == tune.FALLBACK_WEIGHT
    assert choices["snr_at_L1"] == tune.FALLBACK_AT_L1
    report = out.read_text(encoding="utf-8")
    for what in ("predictive tables", "target weight", "L -> dB mapping"):
        assert f"No choice for the {what}" in err
        assert f"No choice for the {what}" in report


# --quick end to end: real fits on simulated sessions.


@dataclass
class QuickRun:
    choices: dict[str, Any]
    stderr: str
    report: str
    calls: Calls


@pytest.fixture(scope="module")
def quick_run(tune: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickRun]:
    folder = tmp_path_factory.mktemp("kpis")
    for i, frame in enumerate(simulate_sessions(n_sessions=4, rows=300, seed=5)):
        frame.drop(columns=["state"]).to_csv(folder / f"drive {i}.csv", index=False)
    out = folder.parent / "validation.md"
    calls = Calls([], [])

    def loading(*args: Any, **kwargs: Any) -> Any:
        data = load_bench_data(*args, **kwargs)
        calls.scored.append((kwargs.get("on", "test"), [s.name for s in data.test], data.split()))
        return data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: more threads only wait on each other (and on others)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "QUICK_STEPS", 40)  # the KPI predictor, briefer still
        mp.setattr(runner, "load_bench_data", loading)
        mp.setattr(tune, "measure", _recording(calls, runner.measure))
        argv = ["--data", str(folder), "--kpis", KPIS, "--out", str(out), "--quick"]
        try:
            choices, err = _run(tune, argv)
        finally:
            torch.set_num_threads(threads)
    yield QuickRun(choices, err, out.read_text(encoding="utf-8"), calls)


def test_quick_run_prints_a_valid_choice_for_each_rule(
    tune: ModuleType, quick_run: QuickRun
) -> None:
    choices = quick_run.choices
    assert set(choices) == {"grid_lossless", "grid_predictive_table", "target_weight",
                            "snr_at_L1", "learned_K", "sae_lr", "sdlgm_lr"}  # fmt: skip
    assert choices["grid_lossless"]["predictor"] in ("delta", "linear")
    assert choices["grid_lossless"]["table"] in TABLES
    assert choices["grid_predictive_table"] in TABLES
    assert choices["target_weight"] in tune.QUICK.weights
    assert choices["snr_at_L1"] in tune.QUICK.at_l1
    assert set(choices["learned_K"]) == {"topk-sae", "omp-dict"}
    assert set(choices["learned_K"].values()) <= {*tune.QUICK.learned_K, tune.LEARNED_K}
    assert choices["sae_lr"] in (*tune.QUICK.sae_lrs, tune.SAE_LR)
    assert choices["sdlgm_lr"] in (*tune.QUICK.sdlgm_lrs, tune.SDLGM_LR)


def test_quick_run_writes_the_report_with_its_tables_and_choices(
    tune: ModuleType, quick_run: QuickRun
) -> None:
    report = quick_run.report
    assert report.startswith("# The benchmark's choices, made on the validation sessions")
    assert "--quick" in report.splitlines()[2]
    headings = ("## 1. ", "## 2. ", "## 3. ", "## 4. ", "## 5. ", "## 6. ", "## 7. ", "## Choices")
    for heading in headings:
        assert sum(line.startswith(heading) for line in report.splitlines()) == 1, heading
    assert report.count("| delta | ") == 2 and report.count("| linear | ") == 2
    block = report.split("```json\n")[1].split("```")[0]
    assert json.loads(block) == quick_run.choices
    # The quick sweep gives the BD-rate its points on the simulator's sessions.
    assert "too few points" not in report.split("## 2. ")[1].split("## 3. ")[0]
    # Any fallback is stated in the report as on stderr.
    for line in quick_run.stderr.splitlines():
        if line.startswith("tune_bench: "):
            assert line.removeprefix("tune_bench: ") in report


def test_quick_run_scores_only_the_validation_sessions(
    tune: ModuleType, quick_run: QuickRun
) -> None:
    measured, scored = quick_run.calls.measured, quick_run.calls.scored
    # lossless, both tables, each weight, the mapping's reference and each mapping, the
    # reference again, each K, each SAE rate and each SDLGM rate
    q = tune.QUICK
    runs = 4 + len(q.weights) + len(q.at_l1) + 1 + len(q.learned_K) + len(q.sae_lrs)
    assert len(measured) == len(scored) == runs + len(q.sdlgm_lrs)
    for options, _ in measured:
        assert (options.on, options.quick, options.jobs) == ("validation", True, 1)
    for on, names, split in scored:
        assert on == "validation"
        assert names == split["val"] and names
        assert not set(names) & set(split["test"])


def test_quick_run_trains_sdlgm_briefly(tune: ModuleType, quick_run: QuickRun) -> None:
    sdlgm = [m for _, ms in quick_run.calls.measured for m in ms if m.family == "sdlgm"]
    assert sorted({m.L for m in sdlgm}) == sorted({tune.DEPLOYED_L, *tune.QUICK.Ls})
    # As the benchmark's --quick trains SDLGM (a codec keeps its training only in `_cfg`).
    quick = sdlgm_methods([1], 16, quick=True)[0]._cfg
    assert {(m._cfg["steps"], m._cfg["batch"]) for m in sdlgm} == {(quick["steps"], quick["batch"])}
