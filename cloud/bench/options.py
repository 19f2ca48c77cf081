"""What one `sparsetel benchmark` run is asked (`BenchOptions`) and what it gives the report
(`BenchResult`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...shared.errors import ConfigError
from ...shared.kpi import parse_kpi_list
from ..codec.temporal import TARGET_WEIGHT  # the target's precision, the same for every codec

__all__ = ["TARGET_WEIGHT", "BenchOptions", "BenchResult", "parse_framings", "parse_ints"]


@dataclass(frozen=True)
class BenchOptions:
    """One benchmark run. `methods`: the families to run (empty: all); `out`: where the
    report goes (None: nowhere); `progress`: None = a bar only when stderr is a terminal.
    `on`: the sessions scored, "test" or "validation" (where every choice is made);
    `framings`: frame sizes to code at, "agent" for the edge agent's default framing at the
    data's pace; `target_weight`: the target KPI's precision for every codec; `K`: the
    learned baselines' atoms (None: each its own, chosen on validation); `jobs`: fits
    run side by side in that many worker processes (0: one per CPU core this process may
    use; 1: all in this process), each its share of the cores' threads."""

    data: Path
    kpis: tuple[str, ...]
    target: str
    horizon: int = 1
    Ls: tuple[int, ...] = (1, 2, 4, 8)
    K: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    window: int = 8
    sentinels: str | None = None
    quick: bool = False
    out: Path | None = None
    methods: tuple[str, ...] = ()
    progress: bool | None = None
    on: str = "test"
    framings: tuple[str, ...] = ("50", "agent")
    target_weight: float = TARGET_WEIGHT
    jobs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        if isinstance(self.kpis, str):
            object.__setattr__(self, "kpis", parse_kpi_list(self.kpis))
        for key in ("kpis", "Ls", "seeds", "methods", "framings"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        checks = {
            "kpis": len(self.kpis) > 0,
            "target": bool(self.target),
            "horizon": self.horizon >= 0,
            "Ls": len(self.Ls) > 0 and all(1 <= L <= 255 for L in self.Ls),
            "K": self.K is None or 2 <= self.K <= 65535,
            "seeds": len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds),
            "window": self.window >= 1,
            "on": self.on in ("test", "validation"),
            "framings": len(self.framings) > 0
            and all(f == "agent" or (f.isdigit() and 1 <= int(f) <= 4096) for f in self.framings),
            "target_weight": self.target_weight > 0,
            "jobs": 0 <= self.jobs <= 256,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid value {getattr(self, key)!r}", key=f"benchmark.{key}")

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> BenchOptions:
        """Options from `sparsetel benchmark` flags; ConfigError on a missing or bad one."""
        for flag in ("kpis", "target"):
            if not getattr(args, flag):
                raise ConfigError(f"--{flag} is required", key=f"benchmark.{flag}")
        return cls(
            data=args.data,
            kpis=parse_kpi_list(args.kpis),
            target=args.target,
            horizon=1 if args.horizon is None else args.horizon,
            Ls=parse_ints(args.L, "L"),
            K=args.K,
            seeds=parse_ints(args.seeds, "seeds"),
            window=args.window,
            sentinels=args.sentinels,
            quick=bool(args.quick),
            out=args.out,
            methods=parse_kpi_list(args.methods) if args.methods else (),
            on=args.on,
            framings=parse_framings(args.framing),
            target_weight=TARGET_WEIGHT if args.target_weight is None else args.target_weight,
            jobs=args.jobs,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(data=str(self.data), out=None if self.out is None else str(self.out))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class BenchResult:
    """Everything a report needs: per-setting `rows`, per-seed `records`, references
    (ceiling, floor, JSON), timing, the split and the families that were not available."""

    options: BenchOptions
    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    references: dict[str, Any]
    timing: dict[str, float]
    split: dict[str, list[str]]
    missing: list[str] = field(default_factory=list)


def parse_ints(text: str, key: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); ConfigError naming `key` otherwise."""
    try:
        return tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise ConfigError(
            f"expected comma-separated integers, got {text!r}", key=f"benchmark.{key}"
        ) from None


def parse_framings(text: str) -> tuple[str, ...]:
    """``"50,agent"`` -> ("50", "agent"); checked by BenchOptions."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())
