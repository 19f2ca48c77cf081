"""What `evaluate` scores on, for either codec: the sessions a run never saw, the data's names
for the model's columns, and the target scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...shared.errors import DataError, ModelMismatchError
from ...shared.kpi import parse_kpi_list, parse_sentinels
from ...shared.rundir import load_split, read_config
from ..data.datasets import Session, load_dataset, split_sessions
from .changepredictor import target_scores

__all__ = ["eval_sessions", "resolve_names", "target_scores"]


def resolve_names(
    model_kpis: Sequence[str],
    model_target: str,
    kpis: str | Sequence[str] | None,
    target: str | None,
) -> tuple[tuple[str, ...], str]:
    """The data's column names for the model's KPIs and target (defaults: the model's)."""
    names = parse_kpi_list(kpis) if isinstance(kpis, str) else tuple(kpis or model_kpis)
    if len(names) != len(model_kpis):
        raise ModelMismatchError(
            f"the model takes {len(model_kpis)} KPIs {list(model_kpis)}, got {list(names)}"
        )
    return names, target or model_target


def eval_sessions(
    run: Path, data: Path, kpis: tuple[str, ...], target: str, sentinels: str | None
) -> tuple[tuple[Session, ...], str]:
    """The sessions to evaluate on and the split name: "test" (the test sessions recorded in
    the run's split.json) on the training data, "all" on any other data."""
    config = read_config(run)
    if sentinels is None:
        sentinels = config.get("sentinels")
    ds = load_dataset(data, kpis, target, parse_sentinels(sentinels) if sentinels else None)
    split = load_split(run)
    if Path(data).resolve() != Path(split["data"]).resolve():
        return ds.sessions, "all"
    test = split_sessions(ds, seed=int(split["seed"]))[2]
    if [s.name for s in test.sessions] != list(split["test"]):
        raise DataError(f"{data} no longer splits into the test sessions recorded in {run}")
    return test.sessions, "test"
