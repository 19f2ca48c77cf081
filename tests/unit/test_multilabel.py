"""The multi-label benchmark: sparsemax by hand, the data sets, F1, a quick run of each model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparsetel.cloud.bench.mldata import (
    load_simulator,
    load_yeast,
    simulator_windows,
    window_features,
)
from sparsetel.cloud.bench.mlmodels import (
    MODELS,
    SDLGM_VARIANTS,
    FitConfig,
    SdlgmClassifier,
    build_classifier,
    choose_threshold,
    sparsemax_loss,
)
from sparsetel.cloud.bench.multilabel import (
    MultilabelOptions,
    format_table,
    load_dataset,
    multilabel_f1,
    run_multilabel,
)
from sparsetel.cloud.data.simulator import STATES, simulate_sessions
from tests.conftest import skip_or_fail


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_sparsemax_of_hand_cases() -> None:
    from entmax import sparsemax

    z = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.3, -1.0]])
    # Row 2: the support is {0, 1}, tau = (0.5 + 0.3 - 1) / 2 = -0.1.
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0]])
    assert torch.allclose(sparsemax(z, dim=-1), expected)


def test_sparsemax_loss_is_zero_when_the_scores_put_all_mass_right() -> None:
    z = torch.tensor([[1.0, 0.0, -1.0], [2.0, 2.0, -5.0]])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    assert torch.allclose(sparsemax_loss(z, q), torch.zeros(2), atol=1e-6)


def test_sparsemax_loss_matches_the_paper_and_its_gradient_is_p_minus_q() -> None:
    # z = [1, 0, -1] against q = e_2: support {0}, tau = 0, so
    # L = -q.z + 1/2 (1 - 0) + 1/2 ||q||^2 = 0 + 0.5 + 0.5 = 1.
    z = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0, 0.0]])
    loss = sparsemax_loss(z, q)
    loss.sum().backward()
    assert loss.item() == pytest.approx(1.0)
    assert z.grad is not None
    assert torch.allclose(z.grad, torch.tensor([[1.0, -1.0, 0.0]]))


def test_sparsemax_classifier_at_threshold_zero_predicts_its_support() -> None:
    net = build_classifier("sparsemax", 2, 3, FitConfig())
    with torch.no_grad():
        net.linear.weight.copy_(torch.eye(3, 2))
        net.linear.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    probs = net.probs(torch.tensor([[1.0, 0.0], [0.5, 0.3]]))
    assert (probs.numpy() > 0).tolist() == [[True, False, False], [True, True, False]]


def test_f1_of_a_tiny_known_case() -> None:
    y = np.array([[1, 0, 0], [1, 1, 0]])
    pred = np.array([[1, 1, 0], [0, 1, 0]])
    # tp = 2, fp = 1, fn = 1 -> micro 4/6; per label 2/3, 2/3 and 0 (no positives at all).
    scores = multilabel_f1(y, pred)
    assert scores["micro_f1"] == pytest.approx(2 / 3)
    assert scores["macro_f1"] == pytest.approx(4 / 9)


def test_choose_threshold_picks_the_best_micro_f1_on_the_grid() -> None:
    probs = np.array([[0.9, 0.35], [0.2, 0.6], [0.3, 0.1]])
    y = np.array([[1, 1], [0, 1], [0, 0]])
    threshold, f1 = choose_threshold(probs, y)
    assert 0.3 <= threshold < 0.35
    assert f1 == pytest.approx(1.0)


def test_simulator_labels_are_the_hidden_states_of_each_window() -> None:
    frames = simulate_sessions(3, 150, seed=4)
    kpis, y, sessions = simulator_windows(frames, window=20, stride=10)
    assert kpis.shape == (3 * 14, 20, 8) and y.shape == (3 * 14, len(STATES))
    for i, (labels, session) in enumerate(zip(y, sessions, strict=True)):
        start = (i % 14) * 10
        present = set(frames[session]["state"].iloc[start : start + 20])
        assert {STATES[j] for j in np.flatnonzero(labels)} == present
        assert session == i // 14
    assert (y.sum(1) >= 2).any(), "some window should span a transition"
    assert window_features(kpis).shape == (42, 5 * 8)


def test_simulator_split_never_shares_a_session() -> None:
    data = load_simulator(sessions=12, rows=120, seed=1)
    parts = [set(p.groups.tolist()) for p in (data.train, data.val, data.test)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(12))
    assert np.allclose(data.train.x.mean(0), 0.0, atol=1e-4)


def test_yeast_is_the_classic_set_split_70_10_20() -> None:
    if importlib.util.find_spec("river") is None:
        skip_or_fail("the Yeast data set ships with the river package: pip install river==0.26.1")
    data = load_yeast(seed=0)
    sizes = [len(p.x) for p in (data.train, data.val, data.test)]
    assert sum(sizes) == 2417 and sizes == [1692, 242, 483]
    assert data.train.x.shape[1] == 103 and len(data.labels) == 14
    rows = [set(p.groups.tolist()) for p in (data.train, data.val, data.test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert data.train.y.sum(1).mean() == pytest.approx(4.2, abs=0.2)  # Yeast's cardinality


@pytest.mark.parametrize("variant", sorted(SDLGM_VARIANTS))
def test_sdlgm_inference_never_uses_more_than_L_codes(variant: str) -> None:
    torch.manual_seed(0)
    net = build_classifier(variant, 6, 3, FitConfig(L=3, K=16, hidden=32))
    assert isinstance(net, SdlgmClassifier)
    x = torch.randn(200, 6) * 3
    counts = net.counts(x)
    assert counts.shape == (200, 16)
    assert (counts >= 0).all() and (counts == counts.round()).all()
    assert counts.sum(-1).max() <= 3
    with torch.no_grad():
        net.encoder.gates.bias.view(3, 2)[:, 0] += 100.0  # every gate closed
    assert net.counts(x).sum() == 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("multilabel")
    options = MultilabelOptions(datasets=("simulator",), seeds=(0,), Ls=(2,), quick=True, out=out)
    return run_multilabel(options), out


def test_every_model_beats_predicting_the_most_frequent_label_set(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    data = load_dataset("simulator", quick=True)
    sets, counts = np.unique(data.train.y, axis=0, return_counts=True)
    trivial = multilabel_f1(data.test.y, np.broadcast_to(sets[counts.argmax()], data.test.y.shape))
    rows = quick_run[0]["datasets"]["simulator"]["rows"]
    assert [r["model"] for r in rows] == list(MODELS)
    for row in rows:
        assert row["micro_f1"]["mean"] > trivial["micro_f1"], row["model"]
        assert row["macro_f1"]["mean"] > trivial["macro_f1"], row["model"]
        if row["L"] is not None:
            assert 0 <= row["nnz"]["mean"] <= row["L"]


def test_run_writes_results_json_and_markdown(quick_run: tuple[dict[str, Any], Path]) -> None:
    results, out = quick_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["datasets"]["simulator"]["rows"][0]["seeds"][0]["seed"] == 0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert table.strip() == format_table(results).strip()
    assert "| sdlgm-conditional | 2 |" in table and "simulator micro F1" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 1 + len(MODELS)


BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown data set": ({"datasets": ("mnist",)}, "datasets"),
    "no data set": ({"datasets": ()}, "datasets"),
    "unknown model": ({"models": ("svm",)}, "models"),
    "no seed": ({"seeds": ()}, "seeds"),
    "negative seed": ({"seeds": (-1,)}, "seeds"),
    "repeated seed": ({"seeds": (1, 1)}, "seeds"),
    "L of zero": ({"Ls": (0,)}, "Ls"),
    "L above K": ({"Ls": (4, 128)}, "Ls"),
    "K of one": ({"K": 1}, "K"),
    "negative KL weight": ({"kl_weight": -0.1}, "kl_weight"),
    "negative data seed": ({"data_seed": -3}, "data_seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_raise_value_error_naming_the_option(case: str) -> None:
    kwargs, key = BAD_OPTIONS[case]
    with pytest.raises(ValueError, match=f"MultilabelOptions.{key}:"):
        MultilabelOptions(**kwargs)


def test_unknown_model_or_data_set_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        build_classifier("svm", 3, 2, FitConfig())
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"epochs": 0}, "epochs = 0"), ({"K": 0}, "K = 0"), ({"L": 9, "K": 8}, "L <= K")],
)
def test_fit_config_rejects_impossible_sizes(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FitConfig(**kwargs)


def test_the_benchmark_command_runs_the_multilabel_task(tmp_path: Path) -> None:
    from sparsetel.cli import main

    argv = ["benchmark", "--task", "multilabel", "--datasets", "simulator", "--quick"]
    argv += ["--L", "2", "--K", "16", "--seeds", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["datasets"]["simulator"]["rows"]
    assert {r["model"] for r in rows} == set(MODELS)
    assert all(r["nnz"]["mean"] <= 2 for r in rows if r["L"] is not None)
    assert "sparsemax" in (tmp_path / "results.md").read_text()
    assert main([*argv[:4], "mnist", *argv[5:]]) == 2  # a bad data set: usage error


def test_a_price_per_code_is_an_option_of_the_multilabel_sdlgms() -> None:
    with pytest.raises(ValueError, match=r"MultilabelOptions\.code_cost:"):
        MultilabelOptions(code_cost=-1.0)
    assert FitConfig(code_cost=0.5).code_cost == 0.5
