"""What the codes say: how many each measurement uses, and how well they recover hidden states.

Sparsity learned per measurement (`sparsity_report`): the edge sends at most L codes, fewer
where the gates close, so the number used (``counts.sum(-1)``) is the model's own judgement of
how much a measurement needs. It is reported whole (histogram 0..L, mean, share at the cap L)
and per regime, regimes being defined from the data alone so that they exist on real traces:

- change: the RMS over the KPIs observed at both of ``z_t - z_{t-1}`` (normalised units, the
  previous measurement of the same session; none for a session's first row). An RMS rather
  than a norm so that a measurement with missing KPIs is not made to look steady. Split into
  tertiles of the data: "steady", "moderate", "changing";
- level: one column's value (by default the target, e.g. DL_bitrate), tertiles "low", "mid",
  "high";
- state: hidden labels where the data has them (the simulator's ``state`` column).

Each regime gets its rows, mean codes used and share at the cap; change and level also get the
Spearman correlation of the value with the codes used.

Identifiability (`state_recovery`): how well the codes recover known states. The clusters
are the measurements' whole code sets (`set_clusters`: equal count vectors); purity
(Σ_clusters max_state count / N), adjusted and normalised mutual information and the number of
clusters; and per-code purity (each codeword's occurrences: Σ_k max_s n_ks / Σ_k n_k).
Purity grows with the number of clusters, so compare it with `kmeans_baseline`, and with
`transfer_accuracy` / `vote_accuracy`, which learn each cluster's (or codeword's) majority
state on some sessions and score it on others, where many clusters no longer help.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from ...shared.errors import DataError
from ...shared.kpi import match_columns

__all__ = [
    "CHANGE_REGIMES",
    "LEVEL_REGIMES",
    "change_sizes",
    "clustering_scores",
    "code_purity",
    "count_histogram",
    "kmeans_baseline",
    "purity",
    "quantile_regimes",
    "read_labels",
    "regime_report",
    "set_clusters",
    "sparsity_report",
    "spearman",
    "state_recovery",
    "transfer_accuracy",
    "vote_accuracy",
]

CHANGE_REGIMES = ("steady", "moderate", "changing")
LEVEL_REGIMES = ("low", "mid", "high")


def _rows(name: str, a: np.ndarray, n: int | None = None) -> None:
    """ValueError unless `a` is non-empty (and has `n` rows when given)."""
    if len(a) == 0:
        raise ValueError(f"{name} is empty")
    if n is not None and len(a) != n:
        raise ValueError(f"{name} has {len(a)} rows, expected {n} (one per measurement)")


def _codes_used(counts: np.ndarray) -> np.ndarray:
    """Counts (shape: [N, K]) -> codes used per measurement (int64, shape: [N])."""
    c = np.asarray(counts)
    if c.ndim != 2:
        raise ValueError(f"counts must have shape [N, K], got {list(c.shape)}")
    _rows("counts", c)
    if np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError("counts must be non-negative integers")
    used: np.ndarray = c.sum(-1).astype(np.int64)
    return used


def count_histogram(used: np.ndarray, L: int) -> np.ndarray:
    """Codes used per measurement (int, shape: [N]) -> how many used 0..L (int64, [L + 1])."""
    u = np.asarray(used)
    _rows("used", u)
    if L < 1:
        raise ValueError(f"L must be at least 1, got {L}")
    if u.min() < 0 or u.max() > L:
        raise ValueError(f"codes used must lie in 0..L={L}, got {u.min()}..{u.max()}")
    return np.bincount(u.astype(np.int64), minlength=L + 1)


def _usage(used: np.ndarray, L: int) -> dict[str, Any]:
    """Rows, mean codes used, share at the cap L and the histogram of `used` ([N])."""
    if len(used) == 0:
        return {"rows": 0, "mean_codes": None, "at_cap_share": None, "histogram": [0] * (L + 1)}
    hist = count_histogram(used, L)
    return {
        "rows": len(used),
        "mean_codes": float(used.mean()),
        "at_cap_share": float(hist[L] / len(used)),
        "histogram": hist.tolist(),
    }


def change_sizes(z: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Normalised KPIs (shape: [N, D], NaN = missing) of sessions of `lengths` rows, in order
    -> RMS of z_t - z_{t-1} over the KPIs observed at both (float64, [N]); NaN on each
    session's first row and where no KPI is observed at both."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"z must have shape [N, D], got {list(z.shape)}")
    _rows("z", z)
    if any(n < 0 for n in lengths) or sum(lengths) != len(z):
        raise ValueError(f"session lengths sum to {sum(lengths)}, z has {len(z)} rows")
    sq = np.diff(z, axis=0) ** 2
    both = np.isfinite(sq)
    shared = both.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(np.where(both, sq, 0.0).sum(1) / shared)
    out = np.concatenate([[np.nan], np.where(shared > 0, rms, np.nan)])
    starts = np.cumsum(lengths)[:-1]
    out[starts[starts < len(z)]] = np.nan  # the first row of every later session
    return out


def quantile_regimes(values: np.ndarray, bins: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Split `values` (shape: [N], NaN = none) at their quantiles -> (regime per row, int64
    [N], 0 = lowest, -1 where NaN; the bins - 1 inner edges). Row i is in regime r when
    edge[r-1] < v <= edge[r], so ties at an edge go to the lower regime (one may be empty)."""
    v = np.asarray(values, dtype=np.float64)
    _rows("values", v)
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    seen = np.isfinite(v)
    if not seen.any():
        raise ValueError("values has no finite entry to take quantiles of")
    edges = np.quantile(v[seen], np.arange(1, bins) / bins)
    regime = np.full(len(v), -1, dtype=np.int64)
    regime[seen] = np.searchsorted(edges, v[seen], side="left")
    return regime, edges


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties) over rows where both are finite;
    None with fewer than 3 such rows or when either is constant there."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _rows("a", x)
    _rows("b", y, len(x))
    both = np.isfinite(x) & np.isfinite(y)
    if both.sum() < 3:
        return None
    rx, ry = (pd.Series(v[both]).rank().to_numpy() for v in (x, y))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def regime_report(
    used: np.ndarray, values: np.ndarray, L: int, names: Sequence[str] = CHANGE_REGIMES
) -> dict[str, Any]:
    """Codes used (shape: [N]) per quantile regime of `values` ([N], NaN = none): the edges,
    the Spearman correlation of value and codes used, the rows without a value and per
    regime (in `names` order, lowest first) rows, mean value, mean codes and share at L."""
    v = np.asarray(values, dtype=np.float64)
    _rows("values", v, len(used))
    regime, edges = quantile_regimes(v, len(names))
    per = {}
    for r, name in enumerate(names):
        inside = regime == r
        mean = float(v[inside].mean()) if inside.any() else None
        per[name] = {**_usage(used[inside], L), "mean_value": mean}
    return {
        "edges": edges.tolist(),
        "spearman": spearman(v, used),
        "rows_without_value": int((regime < 0).sum()),
        "regimes": per,
    }


def _by(used: np.ndarray, values: np.ndarray, L: int, names: Sequence[str]) -> dict[str, Any]:
    """`regime_report`, or no regimes when no row has a value (e.g. one-row sessions)."""
    if not np.isfinite(values).any():
        return {"edges": None, "spearman": None, "rows_without_value": len(values), "regimes": None}
    return regime_report(used, values, L, names)


def sparsity_report(
    counts: np.ndarray,
    L: int,
    z: np.ndarray,
    lengths: Sequence[int],
    *,
    level: np.ndarray | None = None,
    level_name: str | None = None,
    states: np.ndarray | None = None,
) -> dict[str, Any]:
    """The module docstring's sparsity measures, JSON-able. counts (shape: [N, K]): the codes
    sent; z ([N, D]): the normalised KPIs, NaN = missing, of sessions of `lengths` rows in
    order; `level` ([N]): the values of column `level_name`; `states` ([N]): hidden labels."""
    used = _codes_used(counts)
    out: dict[str, Any] = {"L": L, **_usage(used, L)}
    _rows("z", np.asarray(z), len(used))
    out["share"] = [h / len(used) for h in out["histogram"]]
    change = change_sizes(z, lengths)
    out["by_change"] = {"measure": "rms_normalised_change", **_by(used, change, L, CHANGE_REGIMES)}
    if level is not None:
        level = np.asarray(level, dtype=np.float64)
        _rows("level", level, len(used))
        out["by_level"] = {"column": level_name, **_by(used, level, L, LEVEL_REGIMES)}
    if states is not None:
        labels = np.asarray(states).astype(str)
        _rows("states", labels, len(used))
        out["by_state"] = {
            "states": {s: _usage(used[labels == s], L) for s in np.unique(labels).tolist()},
            "recovery": state_recovery(counts, labels),
        }
    return out


def set_clusters(rows: np.ndarray) -> np.ndarray:
    """One cluster per distinct row (a code set: counts [N, K], or codes [N, L] sorted and
    padded with K) -> cluster index per row (int64, [N])."""
    r = np.asarray(rows)
    if r.ndim != 2:
        raise ValueError(f"rows must have shape [N, K] or [N, L], got {list(r.shape)}")
    _rows("rows", r)
    return np.unique(r, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _contingency(clusters: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows in each (cluster, label) pair (int64, shape: [C, S])."""
    _rows("clusters", clusters)
    _rows("labels", labels, len(clusters))
    c = np.unique(clusters, return_inverse=True)[1].reshape(-1)
    s = np.unique(labels, return_inverse=True)[1].reshape(-1)
    table = np.zeros((c.max() + 1, s.max() + 1), dtype=np.int64)
    np.add.at(table, (c, s), 1)
    return table


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Σ over clusters of its most common label's rows / N (clusters, labels: [N])."""
    table = _contingency(np.asarray(clusters), np.asarray(labels))
    return float(table.max(1).sum() / table.sum())


def code_purity(counts: np.ndarray, labels: np.ndarray) -> float | None:
    """Σ_k max_s n_ks / Σ_k n_k, n_ks = occurrences of codeword k in rows labelled s
    (counts: [N, K], labels: [N]); None when no codeword is used."""
    c = np.asarray(counts, dtype=np.float64)
    lab = np.asarray(labels)
    _rows("counts", c)
    _rows("labels", lab, len(c))
    s = np.unique(lab, return_inverse=True)[1].reshape(-1)
    n_ks = np.zeros((s.max() + 1, c.shape[1]))
    np.add.at(n_ks, s, c)
    total = n_ks.sum()
    return float(n_ks.max(0).sum() / total) if total > 0 else None


def clustering_scores(clusters: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Clusters used, purity, AMI and NMI of `clusters` against `labels` (both [N]), and per
    label its recall: the share of its rows in clusters where it is the majority."""
    clusters, labels = np.asarray(clusters), np.asarray(labels).astype(str)
    table = _contingency(clusters, labels)
    names = np.unique(labels).tolist()
    majority = table.argmax(1)
    recall = {
        name: float(table[majority == j, j].sum() / table[:, j].sum())
        for j, name in enumerate(names)
    }
    return {
        "clusters": int(table.shape[0]),
        "purity": float(table.max(1).sum() / table.sum()),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "recall": recall,
    }


def state_recovery(counts: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Code sets as clusters (`clustering_scores`) and per-code purity, against `labels`
    (counts: [N, K], labels: [N])."""
    c = np.asarray(counts)
    return {
        "code_sets": clustering_scores(set_clusters(c), labels),
        "per_code": {
            "purity": code_purity(c, labels),
            "codewords_used": int((c.sum(0) > 0).sum()),
        },
    }


def kmeans_baseline(
    z: np.ndarray, labels: np.ndarray, n_clusters: int, seed: int = 0
) -> dict[str, Any]:
    """`clustering_scores` of k-means (sklearn, `n_clusters`, at most the distinct rows) on
    normalised KPIs (z: [N, D], NaN -> 0, the mean) against `labels` ([N])."""
    x = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)
    _rows("z", x, len(labels))
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    k = min(n_clusters, len(np.unique(x, axis=0)))
    found = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    return clustering_scores(found, labels)


def transfer_accuracy(
    fit_keys: np.ndarray, fit_labels: np.ndarray, keys: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Each cluster's majority label on (fit_keys, fit_labels) predicts `labels` from `keys`
    (cluster ids [N] or code sets [N, L]; a cluster unseen in fitting gets the most common
    label): the accuracy and the share of rows whose cluster was seen."""
    _rows("fit_keys", fit_keys)
    _rows("keys", keys)
    _rows("labels", labels, len(keys))
    _rows("fit_labels", fit_labels, len(fit_keys))
    flat = [np.asarray(k).reshape(len(k), -1) for k in (fit_keys, keys)]
    ids = set_clusters(np.concatenate(flat))
    fit = pd.DataFrame({"id": ids[: len(fit_keys)], "label": np.asarray(fit_labels).astype(str)})
    majority = fit.groupby("id")["label"].agg(lambda s: s.value_counts().index[0])
    predicted = pd.Series(ids[len(fit_keys) :]).map(majority)
    seen = predicted.notna().to_numpy()
    guess = predicted.fillna(fit["label"].value_counts().index[0]).to_numpy(str)
    hit = guess == np.asarray(labels).astype(str)
    return {"accuracy": float(hit.mean()), "seen_share": float(seen.mean())}


def vote_accuracy(
    fit_counts: np.ndarray, fit_labels: np.ndarray, counts: np.ndarray, labels: np.ndarray
) -> float:
    """Per-code transfer: each row's codewords vote with their label shares n_ks / n_k on
    (fit_counts [M, K], fit_labels [M]); the accuracy of the winning label on `labels` ([N])
    of rows `counts` ([N, K]; a row without codes gets the most common label)."""
    fit_labels, labels = np.asarray(fit_labels).astype(str), np.asarray(labels).astype(str)
    _rows("fit_labels", fit_labels, len(fit_counts))
    _rows("labels", labels, len(counts))
    names, s = np.unique(fit_labels, return_inverse=True)
    n_ks = np.zeros((len(names), np.shape(fit_counts)[1]))
    np.add.at(n_ks, s.reshape(-1), np.asarray(fit_counts, dtype=np.float64))
    share = n_ks / np.maximum(n_ks.sum(0), 1.0)
    votes = np.asarray(counts, dtype=np.float64) @ share.T  # [N, S]
    guess = np.where(votes.sum(1) > 0, votes.argmax(1), np.bincount(s).argmax())
    return float((names[guess] == labels).mean())


def read_labels(
    data: str | Path, names: Sequence[str], column: str, lengths: Sequence[int]
) -> list[np.ndarray]:
    """Column `column` (text, object [T]) of each session file `names` (as `load_dataset`
    names them under the folder or file `data`), row for row; DataError when a file lacks
    the column or its rows do not match `lengths` (load_dataset keeps every data row)."""
    root = Path(data)
    out = []
    for name, n in zip(names, lengths, strict=True):
        file = root if root.is_file() else root / name
        try:
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, index_col=False)
            values = frame.iloc[:, match_columns(list(frame.columns), [column])[0]]
        except (OSError, ValueError, DataError) as exc:
            raise DataError(f"{file}: cannot read labels {column!r}: {exc}") from exc
        if len(values) != n:
            raise DataError(f"{file}: {len(values)} rows of {column!r}, the session has {n}")
        out.append(values.str.strip().to_numpy(object))
    return out
