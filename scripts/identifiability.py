"""Do SDLGM's codes recover the simulator's hidden states? One row per (seed, K).

For each seed: simulate the default sessions (`write_sessions`: 6 x 1800 rows) into a temporary
folder, train a run on the 9 simulator KPIs (target DL_bitrate), encode every session with the
deterministic edge encoder and score the run's TEST sessions (split.json) against the hidden
``state`` column with `sparsetel.cloud.training.codeusage`:

- code sets as clusters: number used, purity, AMI, NMI, per-state recall;
- per-code purity; codes used per measurement;
- k-means on the normalised raw KPIs (missing -> 0) with as many clusters as code sets, and
  with K clusters: the baseline that says how much of the purity the cluster count alone buys;
- transfer accuracy: each code set's (k-means cluster's, codeword's) majority state learned
  on the training sessions, scored on the test sessions, where many clusters do not help;
- ceiling: a gradient-boosted classifier trained on the raw training measurements with their
  true states, scored on the test sessions: how separable the states are per measurement.

Prints a markdown table (per row and mean ± std) and writes every number as JSON (--out).
Usage: .venv/bin/python scripts/identifiability.py --seeds 0,1,2 --K 32 --quick --out ID.json
(--code-cost C charges C nats per sent code in training, so that gates can close.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.ensemble import HistGradientBoostingClassifier

from sparsetel.cloud.codec.export import encode_torch
from sparsetel.cloud.codec.model import Checkpoint
from sparsetel.cloud.data.datasets import load_dataset
from sparsetel.cloud.data.simulator import KPI_COLUMNS, write_sessions
from sparsetel.cloud.training.codeusage import (
    kmeans_baseline,
    read_labels,
    sparsity_report,
    transfer_accuracy,
    vote_accuracy,
)
from sparsetel.cloud.training.train import TrainOptions, train_run
from sparsetel.shared.rundir import CHECKPOINT_FILE, load_split

log = logging.getLogger("identifiability")

Part = dict[str, np.ndarray]  # one split part's arrays, see `_encode`

TARGET = "DL_bitrate"
COLUMNS = (  # (table header, key in a result row)
    ("seed", "seed"), ("K", "K"), ("codes used", "mean_codes"), ("code sets", "clusters"),
    ("purity", "purity"), ("AMI", "ami"), ("NMI", "nmi"), ("code purity", "code_purity"),
    ("k-means n purity", "kmeans_n_purity"), ("k-means n AMI", "kmeans_n_ami"),
    ("k-means K purity", "kmeans_k_purity"), ("k-means K AMI", "kmeans_k_ami"),
    ("set transfer acc", "set_transfer"), ("code vote acc", "code_vote"),
    ("k-means K transfer acc", "kmeans_k_transfer"), ("classifier acc", "ceiling"),
)  # fmt: skip


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated simulation/training seeds")
    p.add_argument("--L", type=int, default=4, help="at most L codes per measurement")
    p.add_argument("--K", default="32", help="comma-separated codebook sizes")
    p.add_argument("--quick", action="store_true", help="train with the QUICK sizes")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--code-cost", type=float, default=0.0, help="nats per sent code in training")
    p.add_argument("--sessions", type=int, default=6, help="simulated sessions per seed")
    p.add_argument("--rows", type=int, default=1800, help="measurements per session")
    p.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--out", type=Path, help="write every result as JSON here")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(v) for v in args.seeds.split(",")]
        args.K = [int(v) for v in args.K.split(",")]
    except ValueError:
        p.error("--seeds and --K take comma-separated integers")
    return args


def _train(args: argparse.Namespace, data: Path, out: Path, K: int, seed: int) -> Path:
    options = TrainOptions(
        codec="memoryless",
        data=data, kpis=KPI_COLUMNS, target=TARGET, out=out, L=args.L, K=K, seed=seed,
        quick=args.quick, steps=args.steps, code_cost=args.code_cost, threads=1, progress=False,
    )  # fmt: skip
    return Path(train_run(options))


def _encode(run: Path, data: Path) -> dict[str, Part]:
    """Per split part ("train", "test"): raw x [N, D], z [N, D], counts [N, K], codes [N, L],
    states [N], session lengths."""
    ckpt = Checkpoint.load(run / CHECKPOINT_FILE)
    split = load_split(run)
    ds = load_dataset(data, KPI_COLUMNS, TARGET)
    out = {}
    for part in ("train", "test"):
        sessions = [s for s in ds.sessions if s.name in set(split[part])]
        lengths = [len(s) for s in sessions]
        x = np.concatenate([s.kpis for s in sessions]).astype(np.float32)
        codes, _ = encode_torch(ckpt, x)
        K = ckpt.cfg.K
        counts = np.zeros((len(x), K + 1), np.int64)
        np.add.at(counts, (np.arange(len(x))[:, None], codes), 1)
        states = read_labels(data, [s.name for s in sessions], "state", lengths)
        out[part] = {
            "x": x, "z": ckpt.normaliser.transform(x), "counts": counts[:, :K], "codes": codes,
            "states": np.concatenate(states), "lengths": np.array(lengths),
        }  # fmt: skip
    return out


def _ceiling(train: Part, test: Part, seed: int) -> tuple[float, dict[str, float]]:
    """Test accuracy and per-state recall of a classifier trained on the raw training
    measurements with their true states: how separable the states are one row at a time."""
    model = HistGradientBoostingClassifier(random_state=seed, max_iter=200)
    model.fit(train["x"], train["states"])
    hit = model.predict(test["x"]) == test["states"]
    recall = {s: float(hit[test["states"] == s].mean()) for s in np.unique(test["states"])}
    return float(hit.mean()), recall


def _measure(parts: dict[str, Part], L: int, seed: int) -> dict[str, Any]:
    """Every measure of one trained run on its test sessions (see the module docstring)."""
    train, test = parts["train"], parts["test"]
    K = test["counts"].shape[1]
    report = sparsity_report(
        test["counts"], L, test["z"], test["lengths"].tolist(), states=test["states"]
    )
    sets = report["by_state"]["recovery"]["code_sets"]
    kmeans_n = kmeans_baseline(test["z"], test["states"], sets["clusters"], seed)
    kmeans_k = kmeans_baseline(test["z"], test["states"], K, seed)
    fitted = _kmeans_transfer(train, test, K, seed)
    ceiling, ceiling_recall = _ceiling(train, test, seed)
    pairs = (train["states"], test["states"])
    return {
        "rows": report["rows"],
        "mean_codes": report["mean_codes"],
        "at_cap_share": report["at_cap_share"],
        **{k: sets[k] for k in ("clusters", "purity", "ami", "nmi")},
        "code_purity": report["by_state"]["recovery"]["per_code"]["purity"],
        "kmeans_n_purity": kmeans_n["purity"],
        "kmeans_n_ami": kmeans_n["ami"],
        "kmeans_k_purity": kmeans_k["purity"],
        "kmeans_k_ami": kmeans_k["ami"],
        "set_transfer": transfer_accuracy(train["codes"], pairs[0], test["codes"], pairs[1])[
            "accuracy"
        ],
        "code_vote": vote_accuracy(train["counts"], pairs[0], test["counts"], pairs[1]),
        "kmeans_k_transfer": fitted,
        "ceiling": ceiling,
        "recall": sets["recall"],
        "kmeans_k_recall": kmeans_k["recall"],
        "ceiling_recall": ceiling_recall,
        "sparsity": report,
    }


def _kmeans_transfer(train: Part, test: Part, K: int, seed: int) -> float:
    """k-means with K clusters fitted on the training sessions; transfer accuracy on test."""
    fit = KMeans(n_clusters=K, n_init=3, random_state=seed).fit(np.nan_to_num(train["z"]))
    ids = fit.predict(np.nan_to_num(test["z"]))
    result = transfer_accuracy(fit.labels_, train["states"], ids, test["states"])
    return float(result["accuracy"])


def _run_seed(args: argparse.Namespace, root: Path, seed: int) -> list[dict[str, Any]]:
    data = root / f"seed{seed}" / "data"
    write_sessions(data, n_sessions=args.sessions, rows=args.rows, seed=seed)
    rows = []
    for K in args.K:
        started = time.monotonic()
        run = _train(args, data, root / f"seed{seed}" / f"run_L{args.L}_K{K}", K, seed)
        row = {"seed": seed, "L": args.L, "K": K, "code_cost": args.code_cost}
        row.update(_measure(_encode(run, data), args.L, seed))
        row["train_seconds"] = round(time.monotonic() - started, 1)
        log.info("seed %d K %d: purity %.3f ami %.3f", seed, K, row["purity"], row["ami"])
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per row, then mean ± std over seeds per K."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[k]) for _, k in COLUMNS) + " |" for r in rows]
    for K in sorted({r["K"] for r in rows}):
        group = [r for r in rows if r["K"] == K]
        cells = ["mean ± std", str(K)]
        for _, key in COLUMNS[2:]:
            v = np.array([r[key] for r in group], dtype=float)
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("sparsetel", "sparsetel.cloud"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="identifiability-") as tmp:
        root = args.workdir or Path(tmp)
        rows = [row for seed in args.seeds for row in _run_seed(args, root, seed)]
    print(format_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
