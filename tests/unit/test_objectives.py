"""The training objectives (generative, discriminative, conditional), the adaptive sparsity
schedule and the price per sent code, on small simulated sessions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetel.cloud.bench.dataset import load_bench_data
from sparsetel.cloud.bench.options import BenchOptions
from sparsetel.cloud.bench.report import render_markdown
from sparsetel.cloud.bench.runner import measure
from sparsetel.cloud.bench.supervised import SupervisedCodec, supervised_methods
from sparsetel.cloud.codec.export import export_run
from sparsetel.cloud.codec.model import SDLGM, Checkpoint, EdgeEncoder, ModelConfig
from sparsetel.cloud.codec.normaliser import fit_normaliser, fit_target_scaler, make_windows
from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.training.loop import Trainer
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.shared.errors import ConfigError
from tests.quickrun import KPIS, TARGET


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("objectives") / "data"
    write_sessions(out, n_sessions=4, rows=300, seed=5)
    return out


def _train(data: Path, out: Path, **kw: object) -> Path:
    sizes = {"steps": 40, "finetune_steps": 10, "eval_every": 10, "K": 16, "L": 2}
    options = TrainOptions(
        codec="memoryless",
        data=data, kpis=KPIS, target=TARGET, out=out, quick=True, seed=0, progress=False,
        **{**sizes, **kw},  # type: ignore[arg-type]
    )  # fmt: skip
    return train_run(options)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["discriminative", "conditional"])
def test_each_objective_trains_and_exports_an_encoder_the_edge_runs(
    data: Path, tmp_path: Path, objective: str
) -> None:
    run = _train(data, tmp_path / objective, objective=objective)
    ckpt = Checkpoint.load(run / "checkpoint.pt")
    assert ckpt.cfg.objective == objective
    assert (ckpt.model.recognition is not None) == (objective == "conditional")
    assert _log(run)[-1]["val_target_r2"] > 0  # it learned to predict something
    manifest = export_run(run)  # verifies the ONNX codes against torch's on probe rows
    assert manifest.L == 2 and all(len(c) <= 2 for c in manifest.probe_codes)


def _trainer(objective: str, **kw: object) -> Trainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    y = x[:, 0] * 2 + rng.normal(size=300).astype(np.float32)
    norm, scaler = fit_normaliser(x, ["a", "b", "c"]), fit_target_scaler(y, "y")
    w = make_windows([x], [y], norm, window=4, horizon=1)
    opts = TrainOptions(
        codec="memoryless",
        data="d", kpis=("a", "b", "c"), target="y", out="o", L=2, K=8, window=4, quick=True,
        objective=objective, progress=False, **kw,  # type: ignore[arg-type]
    ).resolved()  # fmt: skip
    return Trainer(opts, norm, scaler, w, w)


def _encoder_grad(trainer: Trainer) -> float:
    trainer.step(0)
    return sum(float(p.grad.abs().sum()) for p in trainer.model.encoder.parameters())


def test_the_kpis_shape_the_codes_of_the_generative_objective_only() -> None:
    """With every target and rate term off, only the KPI likelihood is left: it moves the
    encoder of the generative objective and not that of the discriminative one."""
    off = {"pred_weight": 0.0, "nowcast_weight": 0.0, "kl_weight": 0.0, "usage_weight": 0.0}
    assert _encoder_grad(_trainer("generative", **off)) > 0
    assert _encoder_grad(_trainer("discriminative", **off)) == 0
    assert _encoder_grad(_trainer("discriminative")) > 0  # the target terms do move it


def test_conditional_kl_vanishes_when_the_recognition_encoder_ignores_the_target() -> None:
    torch.manual_seed(0)
    model = SDLGM(ModelConfig(D=3, L=2, K=8, hidden=16, objective="conditional"))
    assert model.recognition is not None
    with torch.no_grad():  # q(z | x, y) := p(z | x): same weights, zero weight on y
        for name, p in model.recognition.named_parameters():
            src = dict(model.encoder.named_parameters())[name]
            if p.shape == src.shape:
                p.copy_(src)
            else:  # the first layer reads [x, y, mask_x, mask_y]
                p.zero_()
                p[:, [0, 1, 2, 4, 5, 6]] = src
    z, mask = torch.randn(50, 3), torch.ones(50, 3)
    label = (torch.randn(50), torch.ones(50))
    terms = model.sample(z, mask, 1.0, 1.0, hard=True, label=label)
    assert terms.kl_code.abs().max() < 1e-5 and terms.kl_gate.abs().max() < 1e-5
    assert terms.prior_counts is not None and terms.prior_counts.sum(-1).max() <= 2
    moved = model.sample(z, mask, 1.0, 1.0, hard=True, label=(label[0] + 5, label[1]))
    assert torch.allclose(moved.kl_code, terms.kl_code, atol=1e-5)  # y has no say yet


def test_inference_keeps_the_L_gates_with_the_widest_margin() -> None:
    torch.manual_seed(2)
    model = SDLGM(ModelConfig(D=4, L=2, K=8, hidden=16, slots=6, gate_bias=3.0)).eval()
    z, mask = torch.randn(200, 4), torch.ones(200, 4)
    counts = model.hard_counts(z, mask)
    assert counts.sum(-1).max() == 2 and model.hard_counts(z, mask, 6).sum(-1).max() > 2
    alpha, beta = model.encoder(z, mask)
    margin = beta[..., 1] - beta[..., 0]
    top = margin.topk(2, dim=-1).indices  # the two widest margins of each row
    codes = torch.nn.functional.one_hot(alpha.argmax(-1).gather(1, top), 8)
    opened = (margin.gather(1, top) > 0).float()
    assert torch.equal(counts, (opened[..., None] * codes).sum(1).float())


def test_adaptive_schedule_tightens_the_budget_to_L_and_the_edge_sends_at_most_L(
    data: Path, tmp_path: Path
) -> None:
    run = _train(data, tmp_path / "adaptive", sparsity="adaptive", slots=8, steps=60)
    joint = [r for r in _log(run) if r["phase"] == "joint"]
    budgets = [r["budget"] for r in joint]
    assert budgets[0] == 8 and budgets[-1] == 2 and budgets == sorted(budgets, reverse=True)
    # once at L, training opens at most L gates too (the last rows are all at the budget)
    assert joint[-1]["gates_on"] <= 2 < joint[0]["gates_on"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] > max(r["step"] for r in _log(run) if r["budget"] > 2)
    manifest = export_run(run)
    ckpt = Checkpoint.load(run / "checkpoint.pt")
    assert ckpt.cfg.n_slots == 8 and manifest.L == 2
    probes = torch.from_numpy(ckpt.probe_inputs)
    codes, nnz = EdgeEncoder(ckpt.model, ckpt.normaliser)(probes)
    assert codes.shape == (len(probes), 2) and int(nnz.max()) <= 2


def test_a_price_per_code_closes_gates_where_codes_buy_little(data: Path, tmp_path: Path) -> None:
    free = _train(data, tmp_path / "free", L=4, steps=80, finetune_steps=0)
    priced = _train(data, tmp_path / "priced", L=4, steps=80, finetune_steps=0, code_cost=4.0)
    nnz = [json.loads((r / "summary.json").read_text())["val_nnz"] for r in (free, priced)]
    assert nnz[1] < nnz[0] - 1, nnz


@pytest.mark.parametrize(
    ("field", "value"),
    [("objective", "bayesian"), ("sparsity", "sometimes"), ("slots", 1), ("code_cost", -1.0)],
)
def test_train_options_reject_bad_objectives_and_schedules(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        TrainOptions(
            codec="memoryless", data="d", kpis=KPIS, target=TARGET, out="o", L=2, **{field: value}
        )  # type: ignore[arg-type]
    assert err.value.key == f"train.{field}"


def test_train_flags_choose_objective_schedule_and_price() -> None:
    args = argparse.Namespace(
        data=Path("d"), kpis="RSRP", target="RSRP", out=Path("o"), horizon=None, L=3, K=64,
        window=None, seed=None, steps=None, sentinels=None, quick=True, objective="conditional",
        sparsity="adaptive", slots=None, code_cost=0.5, codec="memoryless",
    )  # fmt: skip
    opts = TrainOptions.from_cli(args).resolved()
    assert (opts.objective, opts.sparsity, opts.slots, opts.code_cost) == (
        "conditional", "adaptive", 12, 0.5,
    )  # fmt: skip
    fixed = TrainOptions.from_cli(argparse.Namespace(**{**vars(args), "sparsity": None}))
    assert fixed.resolved().slots == 3


def test_the_benchmark_scores_each_objective_with_its_own_predictor(data: Path) -> None:
    options = BenchOptions(
        data=data, kpis=KPIS, target=TARGET, Ls=(2,), K=16, seeds=(0,), quick=True, jobs=1
    )
    methods = supervised_methods((2,), 16, quick=True)
    assert {m.family for m in methods} == {
        "sdlgm-generative", "sdlgm-discriminative", "sdlgm-conditional", "sdlgm-adaptive",
    }  # fmt: skip
    result = measure(options, methods[:1] + methods[-1:])
    for row in result.rows:
        assert row["own_target_r2"] > 0 and row["own_target_mae"] > 0
        shares = [row[f"nnz_share_{n}"] for n in range(3)]
        assert sum(shares) == pytest.approx(1.0) and row["max_nonzeros"] <= 2
        assert row["bits_per_measurement"] == pytest.approx(2 + row["mean_nonzeros"] * 4)
        regimes = [row[f"codes_change_{r}"] for r in ("steady", "moderate", "changing")]
        assert all(0 <= c <= 2 for c in regimes) and "codes_level_high" in row
    assert "## Training objectives" in render_markdown(result)


def test_a_supervised_codec_needs_the_runner_to_bind_its_data(data: Path) -> None:
    codec = SupervisedCodec("sdlgm-generative", 2, 16, quick=True)
    bench = load_bench_data(data, KPIS, TARGET)
    with pytest.raises(RuntimeError, match="bind"):
        codec.fit(bench.train, 0)
    with pytest.raises(ValueError, match="unknown family"):
        SupervisedCodec("sdlgm-bayesian", 2, 16)
