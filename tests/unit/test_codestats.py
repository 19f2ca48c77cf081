"""`cloud.training.codeusage`: codes used per measurement and per regime, and state recovery
scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from sparsetel.cloud.data.datasets import load_dataset
from sparsetel.cloud.data.simulator import KPI_COLUMNS, simulate_sessions, write_sessions
from sparsetel.cloud.training.codeusage import (
    change_sizes,
    clustering_scores,
    code_purity,
    count_histogram,
    kmeans_baseline,
    purity,
    quantile_regimes,
    read_labels,
    regime_report,
    set_clusters,
    sparsity_report,
    spearman,
    transfer_accuracy,
    vote_accuracy,
)
from sparsetel.cloud.training.evaluate import evaluate_run
from sparsetel.shared.errors import DataError
from tests.quickrun import quick_run

STATES = np.array(["normal", "congestion", "idle", "handover"])


def _counts(rng: np.random.Generator, n: int, L: int, K: int) -> np.ndarray:
    """Random counts (shape: [n, K]) with at most L codes per row."""
    counts = np.zeros((n, K), np.int64)
    for i, used in enumerate(rng.integers(0, L + 1, n)):
        np.add.at(counts[i], rng.integers(0, K, used), 1)
    return counts


def test_a_perfect_clustering_scores_one_whatever_the_cluster_names() -> None:
    labels = np.random.default_rng(0).choice(STATES, 500)
    clusters = np.unique(labels, return_inverse=True)[1] * 7 + 3  # a relabelling
    scores = clustering_scores(clusters, labels)
    assert scores["purity"] == purity(clusters, labels) == 1.0
    assert scores["ami"] == pytest.approx(1.0) and scores["nmi"] == pytest.approx(1.0)
    assert scores["clusters"] == len(set(labels)) and set(scores["recall"].values()) == {1.0}


def test_a_random_clustering_has_ami_near_zero_and_purity_near_the_majority_share() -> None:
    rng = np.random.default_rng(1)
    labels = rng.choice(STATES, 4000, p=[0.55, 0.2, 0.15, 0.1])
    clusters = rng.integers(0, 8, 4000)
    scores = clustering_scores(clusters, labels)
    majority = max(np.mean(labels == s) for s in STATES)
    assert abs(scores["ami"]) < 0.01
    assert majority <= scores["purity"] < majority + 0.05


def test_purity_sums_the_majority_of_each_cluster() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array(["a", "a", "b", "b", "b", "a"])
    assert purity(clusters, labels) == pytest.approx((2 + 2 + 1) / 6)


def test_code_purity_counts_every_occurrence_of_each_codeword() -> None:
    counts = np.array([[2, 1, 0], [0, 1, 0], [0, 1, 1]])
    labels = np.array(["a", "b", "b"])
    # codeword 0: a 2; codeword 1: a 1, b 2; codeword 2: b 1 -> (2 + 2 + 1) / 6
    assert code_purity(counts, labels) == pytest.approx(5 / 6)
    assert code_purity(np.zeros((3, 3)), labels) is None


def test_equal_code_sets_share_a_cluster() -> None:
    K = 8
    codes = np.array([[1, 2, K, K], [1, 2, K, K], [1, 1, 2, K], [K, K, K, K]])
    ids = set_clusters(codes)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3


def test_the_histogram_counts_every_measurement_and_never_exceeds_L() -> None:
    L, K = 4, 16
    counts = _counts(np.random.default_rng(2), 300, L, K)
    z = np.random.default_rng(3).normal(size=(300, 3))
    report = sparsity_report(counts, L, z, [100, 200])
    used = counts.sum(1)
    assert len(report["histogram"]) == L + 1 and sum(report["histogram"]) == 300
    assert report["histogram"] == np.bincount(used, minlength=L + 1).tolist()
    assert report["mean_codes"] == pytest.approx(used.mean())
    assert report["at_cap_share"] == pytest.approx(np.mean(used == L))
    assert sum(report["share"]) == pytest.approx(1.0)
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match=r"0\.\.L=4"):
        count_histogram(np.array([0, 5]), L)


def test_change_is_the_rms_over_kpis_seen_at_both_rows_within_a_session() -> None:
    nan = np.nan
    z = np.array([[0, 0], [0, 0], [3, 4], [nan, 1], [nan, nan], [5, 5], [5, 6]], float)
    change = change_sizes(z, [5, 2])
    expected = [nan, 0.0, np.sqrt((9 + 16) / 2), 3.0, nan, nan, np.sqrt(1 / 2)]
    np.testing.assert_allclose(change, expected)  # row 5 starts the second session


def test_sessions_of_one_row_have_no_change_regimes_but_still_a_report() -> None:
    counts = np.array([[1, 1], [0, 1], [0, 0]])
    level = np.array([np.nan, np.nan, np.nan])
    report = sparsity_report(counts, 2, np.zeros((3, 2)), [1, 1, 1], level=level)
    assert report["by_change"]["regimes"] is None and report["by_change"]["rows_without_value"] == 3
    assert report["by_level"]["regimes"] is None and report["histogram"] == [1, 1, 1]


def test_tertiles_split_a_known_series_and_leave_missing_values_out() -> None:
    values = np.array([5.0, 1, 9, 2, np.nan, 8, 3, 7, 4, 6])
    regime, edges = quantile_regimes(values, 3)
    assert regime.tolist() == [1, 0, 2, 0, -1, 2, 0, 2, 1, 1]
    np.testing.assert_allclose(edges, np.quantile(values[~np.isnan(values)], [1 / 3, 2 / 3]))


def test_busier_measurements_using_more_codes_show_in_the_regimes_and_spearman() -> None:
    rng = np.random.default_rng(4)
    change = rng.exponential(size=600)
    used = np.clip(np.round(change * 1.5 + rng.normal(0, 0.5, 600)), 0, 4).astype(int)
    report = regime_report(used, change, 4)
    steady, changing = report["regimes"]["steady"], report["regimes"]["changing"]
    assert steady["rows"] == changing["rows"] == 200
    assert steady["mean_codes"] < changing["mean_codes"]
    assert steady["at_cap_share"] <= changing["at_cap_share"]
    assert report["spearman"] == pytest.approx(spearmanr(change, used).statistic)
    assert spearman(np.arange(5.0), np.ones(5)) is None  # constant: undefined


def test_codes_used_per_state_on_a_tiny_case() -> None:
    counts = np.array([[1, 0, 0], [2, 1, 0], [1, 1, 2], [0, 0, 0]])
    states = np.array(["busy", "calm", "busy", "calm"])
    report = sparsity_report(counts, 4, np.zeros((4, 2)), [4], states=states)
    per = report["by_state"]["states"]
    assert per["busy"]["mean_codes"] == 2.5 and per["busy"]["at_cap_share"] == 0.5
    assert per["calm"]["mean_codes"] == 1.5 and per["calm"]["histogram"] == [1, 0, 0, 1, 0]
    assert report["by_state"]["recovery"]["per_code"]["codewords_used"] == 3


def test_transfer_learns_the_majority_state_of_each_cluster_on_other_rows() -> None:
    fit = np.array([0, 0, 0, 1, 1, 2])
    fit_labels = np.array(["a", "a", "b", "b", "b", "b"])
    result = transfer_accuracy(fit, fit_labels, np.array([0, 1, 9]), np.array(["a", "a", "b"]))
    # 0 -> a (hit), 1 -> b (miss), 9 unseen -> the most common label b (hit)
    assert result == {"accuracy": pytest.approx(2 / 3), "seen_share": pytest.approx(2 / 3)}
    counts = np.array([[1, 0], [1, 0], [0, 1]])
    assert vote_accuracy(counts, ["a", "a", "b"], np.array([[0, 2], [3, 1]]), ["b", "a"]) == 1.0


def test_kmeans_separates_well_separated_blobs() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(["x", "y", "z"], 50)
    z = rng.normal(0, 0.1, (150, 2)) + np.repeat([[0, 0], [5, 0], [0, 5]], 50, axis=0)
    z[::7, 1] = np.nan  # missing -> 0 stays close enough to its blob for x and y
    scores = kmeans_baseline(z, labels, 3, seed=0)
    assert scores["clusters"] == 3 and scores["purity"] > 0.9


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: purity(np.array([0, 1]), np.array(["a"])), "labels has 1 rows, expected 2"),
        (lambda: purity(np.array([]), np.array([])), "clusters is empty"),
        (lambda: count_histogram(np.array([], int), 4), "used is empty"),
        (lambda: spearman(np.ones(3), np.ones(4)), "b has 4 rows, expected 3"),
        (lambda: change_sizes(np.zeros((4, 2)), [2, 1]), "sum to 3, z has 4 rows"),
        (lambda: quantile_regimes(np.array([np.nan, np.nan])), "no finite entry"),
        (lambda: sparsity_report(np.ones((3, 4)), 4, np.zeros((2, 1)), [2]), "z has 2 rows"),
        (lambda: sparsity_report(np.ones((2, 4)), 4, np.zeros((2, 1)), [2], states=["a"]),
         "states has 1 rows"),
        (lambda: sparsity_report(np.full((2, 4), 0.5), 4, np.zeros((2, 1)), [2]),
         "non-negative integers"),
        (lambda: sparsity_report(np.ones((2, 4)), 3, np.zeros((2, 1)), [2]), r"0\.\.L=3"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_value_error_saying_what_is_wrong(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_labels_are_read_row_for_row_as_load_dataset_keeps_them(tmp_path: Path) -> None:
    write_sessions(tmp_path, n_sessions=2, rows=60, seed=3)
    ds = load_dataset(tmp_path, KPI_COLUMNS, "DL_bitrate")
    lengths = [len(s) for s in ds.sessions]
    states = read_labels(tmp_path, [s.name for s in ds.sessions], "state", lengths)
    truth = simulate_sessions(2, 60, seed=3)
    assert [s.tolist() for s in states] == [f["state"].tolist() for f in truth]
    with pytest.raises(DataError, match="60 rows of 'state', the session has 59"):
        read_labels(tmp_path, [ds.sessions[0].name], "state", [59])
    with pytest.raises(DataError, match="cannot read labels 'mood'"):
        read_labels(tmp_path, [ds.sessions[0].name], "mood", [60])


def test_evaluate_reports_sparsity_per_regime_and_state(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    source = quick_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("evaluation.json"))
    data = source.parent / "data"
    result = evaluate_run(run, data, state_column="state", level_column="RSRP")
    sparsity = result["sparsity"]
    assert sum(sparsity["histogram"]) == result["rows"] and sparsity["L"] == result["L"]
    assert sparsity["mean_codes"] == pytest.approx(result["mean_nonzeros"])
    assert set(sparsity["by_change"]["regimes"]) == {"steady", "moderate", "changing"}
    assert sparsity["by_level"]["column"] == "RSRP"
    per_state = sparsity["by_state"]["states"]
    assert sum(v["rows"] for v in per_state.values()) == result["rows"]
    assert 0 < sparsity["by_state"]["recovery"]["code_sets"]["purity"] <= 1
    json.dumps(result, allow_nan=False)
    plain = evaluate_run(run, data)
    assert "by_state" not in plain["sparsity"]
    assert plain["sparsity"]["by_level"]["column"] == "DL_bitrate"


def test_evaluate_flags_print_codes_used_per_regime_and_state(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsetel.cli import main

    source = quick_run(tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("evaluation.json"))
    data = str(source.parent / "data")
    args = ["evaluate", "--model", str(run), "--data", data, "--state-column", "state"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "codes used per measurement" in out and "codes used by state" in out
    assert "codes used by change  steady" in out and "normal" in out
    assert main([*args[:-1], "mood"]) == 1  # a column the CSVs lack: a clear runtime error
    assert "mood" in capsys.readouterr().err
