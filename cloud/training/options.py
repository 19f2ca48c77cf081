"""The options of one training run (`TrainOptions`), from `sparsetel train`'s flags or code,
and the sizes a run gets unless given (`DEFAULT`, `QUICK`)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ...shared.errors import ConfigError
from ...shared.kpi import parse_kpi_list
from ..codec.model import OBJECTIVES

__all__ = ["DEFAULT", "QUICK", "TrainOptions"]

# Sizes a run gets unless given: the default fits ~3 min on 2 CPU cores for the full
# uccmisl-5g traces; QUICK (demo, tests) trains in seconds on simulated sessions.
DEFAULT = {"steps": 2000, "finetune_steps": 500, "batch": 128, "hidden": 256, "eval_every": 250}
QUICK = {"steps": 600, "finetune_steps": 150, "batch": 64, "hidden": 128, "eval_every": 100}


# Flags of the memoryless (ONNX) codec only: the temporal codec's words come from the data.
MEMORYLESS_ONLY = ("K", "objective", "sparsity", "slots", "code_cost")


@dataclass(frozen=True)
class TrainOptions:
    """One training run; None means the DEFAULT (or, with `quick`, the QUICK) value."""

    data: Path
    kpis: tuple[str, ...]
    target: str
    out: Path
    horizon: int = 1
    L: int = 4
    K: int = 128
    window: int = 8
    seed: int = 0
    steps: int | None = None
    finetune_steps: int | None = None
    batch: int | None = None
    hidden: int | None = None
    eval_every: int | None = None
    quick: bool = False
    lr: float = 2e-3
    sentinels: str | None = None
    time_column: str | None = None
    device: str = "cpu"
    threads: int | None = None
    likelihood: Literal["gaussian", "student"] = "gaussian"
    hard: bool = True
    tau_start: float = 1.0
    tau_end: float = 0.1
    noise_end: float = 0.1
    kl_weight: float = 0.01
    kl_warmup: float = 0.3
    pred_weight: float = 1.0
    usage_weight: float = 1.0
    nowcast_weight: float = 10.0
    progress: bool | None = None
    objective: Literal["generative", "discriminative", "conditional"] = "generative"
    sparsity: Literal["fixed", "adaptive"] = "fixed"
    slots: int | None = None  # code slots of the adaptive schedule (None: 4 L, at most 255)
    budget_tolerance: float = 0.02
    # nats charged per sent code in training: the wire's price of a code, so a gate stays
    # open only where its code buys more likelihood and prediction than that
    code_cost: float = 0.0
    # Which codec: "temporal" (closed-loop lattice words, context across frames) or
    # "memoryless" (each measurement on its own, the ONNX encoder); and the temporal codec's
    # fidelity aimed at (None: the SNR validation chose for L) and key interval in training.
    codec: Literal["temporal", "memoryless"] = "temporal"
    snr_db: float | None = None
    key_interval: int = 50
    # The temporal codec without loss: every move sent (words past L as counted escapes), each
    # KPI on a native grid coming back exactly; --snr-db does not apply.
    lossless: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if isinstance(self.kpis, str):
            object.__setattr__(self, "kpis", parse_kpi_list(self.kpis))
        object.__setattr__(self, "kpis", tuple(self.kpis))
        checks = {
            "L": 1 <= self.L <= 255,
            "K": 2 <= self.K <= 65535,
            "window": self.window >= 1,
            "horizon": self.horizon >= 0,
            "likelihood": self.likelihood in ("gaussian", "student"),
            "tau_end": 0 < self.tau_end <= self.tau_start,
            "noise_end": 0 <= self.noise_end <= 1,
            "objective": self.objective in OBJECTIVES,
            "sparsity": self.sparsity in ("fixed", "adaptive"),
            "slots": self.slots is None or self.L <= self.slots <= 255,
            "budget_tolerance": self.budget_tolerance >= 0,
            "code_cost": self.code_cost >= 0,
            "codec": self.codec in ("temporal", "memoryless"),
            "snr_db": self.snr_db is None or 0 < self.snr_db <= 90,
            "key_interval": 1 <= self.key_interval <= 100_000,
            "lossless": isinstance(self.lossless, bool),
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid value {getattr(self, key)!r}", key=f"train.{key}")
        if not self.kpis:
            raise ConfigError("at least one KPI is needed", key="train.kpis")
        for key in ("steps", "finetune_steps", "batch", "hidden", "eval_every"):
            value = getattr(self, key)
            if value is not None and value < (0 if key == "finetune_steps" else 1):
                raise ConfigError(f"out of range: {value}", key=f"train.{key}")

    def resolved(self) -> TrainOptions:
        """The options with every None size replaced by its DEFAULT or QUICK value, and the
        slots the sparsity schedule trains with (L when fixed)."""
        preset = QUICK if self.quick else DEFAULT
        sizes: dict[str, Any] = {
            k: v if getattr(self, k) is None else getattr(self, k) for k, v in preset.items()
        }
        slots = self.L
        if self.sparsity == "adaptive":
            slots = self.slots if self.slots is not None else min(255, 4 * self.L)
        return replace(self, **sizes, slots=slots)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> TrainOptions:
        """Options from `sparsetel train` flags (flags left out keep their defaults)."""
        if not args.kpis:
            raise ConfigError("--kpis is required", key="train.kpis")
        if not args.target:
            raise ConfigError("--target is required", key="train.target")
        names = ("horizon", "L", "K", "window", "seed", "steps", "sentinels", "objective")
        more = ("sparsity", "slots", "code_cost", "codec", "snr_db", "key_interval", "lossless")
        given = {k: getattr(args, k, None) for k in (*names, *more)}
        codec = given["codec"] or cls.codec
        only = [k for k in MEMORYLESS_ONLY if given.get(k) is not None]
        if codec == "temporal" and only:
            flags = ", ".join("--" + k.replace("_", "-") for k in only)
            raise ConfigError(
                f"{flags} set the memoryless codec; add --codec memoryless or leave them out",
                key="train.codec",
            )
        if given["lossless"] and (codec == "memoryless" or given["snr_db"] is not None):
            raise ConfigError(
                "--lossless is a temporal codec's mode and takes no --snr-db",
                key="train.lossless",
            )
        return cls(
            data=args.data,
            kpis=parse_kpi_list(args.kpis),
            target=args.target,
            out=args.out,
            quick=bool(getattr(args, "quick", False)),
            **{k: v for k, v in given.items() if v is not None},
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data=str(self.data), out=str(self.out), kpis=list(self.kpis))
        return data
