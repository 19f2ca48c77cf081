"""One small trained run on simulated sessions, shared by the model, export and evaluate tests.

Trained once per test session into pytest's base temporary folder (a few seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsetel.cloud.data.simulator import write_sessions
from sparsetel.cloud.training.train import TrainOptions, train_run

KPIS = ("RSRP", "RSRQ", "SNR", "CQI", "RSSI", "DL_bitrate", "UL_bitrate", "Speed", "Load")
TARGET = "DL_bitrate"


def quick_run(factory: pytest.TempPathFactory) -> Path:
    """A small trained run on simulated sessions, trained once per test session."""
    base = factory.getbasetemp() / "sparsetel-quick"
    run = base / "run"
    if not (run / "checkpoint.pt").exists():
        write_sessions(base / "data", n_sessions=6, rows=400, seed=0)
        options = TrainOptions(
            codec="memoryless",
            data=base / "data", kpis=KPIS, target=TARGET, out=run, L=4, K=32, quick=True,
            steps=150, finetune_steps=40, eval_every=50, seed=0, progress=False,
        )  # fmt: skip
        train_run(options)
    return run


def quick_exported_run(factory: pytest.TempPathFactory) -> Path:
    """`quick_run`, with its encoder exported to ONNX (once) for agents to load."""
    from sparsetel.cloud.codec.export import export_run

    run = quick_run(factory)
    if not (run / "encoder.onnx").exists():
        export_run(run)
    return run


def quick_temporal_run(factory: pytest.TempPathFactory) -> Path:
    """A small temporal-codec run on simulated sessions, trained and exported once per test
    session: codec.json, predictor/, manifest.json (`sparsetel train --codec temporal`)."""
    from sparsetel.cloud.codec.export import export_run

    base = factory.getbasetemp() / "sparsetel-quick-temporal"
    run = base / "run"
    if not (run / "manifest.json").exists():
        write_sessions(base / "data", n_sessions=6, rows=400, seed=0)
        options = TrainOptions(
            data=base / "data", kpis=KPIS, target=TARGET, out=run, L=4, quick=True,
            codec="temporal", steps=20, seed=0, progress=False,
        )  # fmt: skip
        train_run(options)
        export_run(run)
    return run
