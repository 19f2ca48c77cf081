"""The run directory: the name of every file `sparsetel train`, `export` and `evaluate` write
into a run, and the readers of the small ones. No torch and no pandas, so the monitor and the
edge can read it too.

    RUN/config.json       the training options (`read_config`)
    RUN/split.json        session names per part, the data path and the seed (`load_split`)
    RUN/train_log.jsonl   one line per validation pass during training
    RUN/checkpoint.pt     the trained memoryless codec (torch: `cloud.codec.model.Checkpoint`)
    RUN/codec.json        the trained temporal codec (`shared.temporalcodec.TemporalCodec`)
    RUN/predictor/        the temporal codec's KPI predictor (`cloud.training.changepredictor`)
    RUN/summary.json      training's final scores (`read_summary`)
    RUN/encoder.onnx      the edge's encoder, from `sparsetel export`
    RUN/manifest.json     what that encoder is (`shared.manifest.ModelManifest`)
    RUN/evaluation.json   the latest `sparsetel evaluate` result (`read_evaluation`)

A model bundle and an edge's model folder hold the last two of these under the same names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_FILE",
    "CODEC_FILE",
    "CONFIG_FILE",
    "ENCODER_FILE",
    "EVALUATION_FILE",
    "MANIFEST_FILE",
    "PREDICTOR_DIR",
    "SPLIT_FILE",
    "SUMMARY_FILE",
    "TRAIN_LOG_FILE",
    "load_split",
    "read_config",
    "read_evaluation",
    "read_summary",
    "write_json",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
TRAIN_LOG_FILE = "train_log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
CODEC_FILE = "codec.json"
PREDICTOR_DIR = "predictor"
SUMMARY_FILE = "summary.json"
ENCODER_FILE = "encoder.onnx"
MANIFEST_FILE = "manifest.json"
EVALUATION_FILE = "evaluation.json"


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, the way every JSON file of a run is written."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _read(run_dir: str | Path, name: str) -> dict[str, Any]:
    return dict(json.loads((Path(run_dir) / name).read_text(encoding="utf-8")))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json: the options it was trained with."""
    return _read(run_dir, CONFIG_FILE)


def load_split(run_dir: str | Path) -> dict[str, Any]:
    """The run's split.json: session names per part, data path and seed."""
    return _read(run_dir, SPLIT_FILE)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's summary.json: training's final scores."""
    return _read(run_dir, SUMMARY_FILE)


def read_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's latest `evaluate_run` result (RUN/evaluation.json), or None when it has none
    or it cannot be read (logged)."""
    path = Path(run_dir) / EVALUATION_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable, ignored: %s", path, exc)
        return None
