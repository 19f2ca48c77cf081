"""The edge agent as the integration tests run it: its config, its input, its process, and
what it published, for the edge `EDGE` running the tiny model (tests/tinymodel.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sparsetel.edge.agent import EdgeConfig
from sparsetel.shared.birth import EdgeState, parse_state
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import parse_topic
from sparsetel.shared.wire import Frame, decode_frame
from tests.mqttclients import Listener
from tests.processes import python

EDGE = "edge-1"


def write_csv(path: Path, n: int) -> np.ndarray:
    """n rows of the tiny model's KPIs (some missing) and, after the fourth, one more whose
    RSRP is not a number; all n + 1 rows as the agent reads them (that RSRP missing)."""
    rng = np.random.default_rng(7)
    rows = rng.integers(-20, 20, size=(n, 3)).astype(np.float32)
    rows[::6, 2] = np.nan
    lines = ["time,RSRP,RSRQ,SNR"]
    for i, row in enumerate(rows):
        lines.append(f"{i}," + ",".join("-" if np.isnan(v) else str(int(v)) for v in row))
        if i == 3:
            lines.append("x,12 dBm,1,2")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return np.insert(rows, 4, [np.nan, 1, 2], axis=0)


def agent_config(model_dir: Path, group: str, broker: BrokerConfig, **fields: Any) -> EdgeConfig:
    """The agent `EDGE` of `group`, its state beside `model_dir`, reading stdin; `fields`
    override any other setting."""
    base: dict[str, Any] = {
        "group": group,
        "edge_id": EDGE,
        "model": model_dir,
        "source": "-",
        "state_dir": model_dir.parent / "state",
        "broker": broker,
        "max_batch_delay_s": 30.0,
        "confirm": "broker",  # no decoder sends receipts here
    }
    base.update(fields)
    return EdgeConfig(**base)


def collect(listener: Listener, n_records: int) -> tuple[list[Frame], list[EdgeState]]:
    """Frames until `n_records` records have come, and live STATE messages until a death
    (a retained one is left over from an earlier run)."""
    frames: list[Frame] = []
    states: list[EdgeState] = []
    while sum(len(f.records) for f in frames) < n_records or not states or states[-1].online:
        message = listener.next(f"{n_records} records and a death")
        if message.retain:
            continue
        if parse_topic(message.topic).kind == "DATA":
            frames.append(decode_frame(bytes(message.payload)))
        elif message.payload:
            states.append(parse_state(bytes(message.payload)))
    return frames, states


AGENT_MAIN = """
import json, sys
from pathlib import Path
from sparsetel.edge.agent import EdgeConfig, run_agent
from sparsetel.shared.config import BrokerConfig
a = json.loads(sys.argv[1])
cfg = EdgeConfig(group=a["group"], edge_id=a["edge"], model=Path(a["model"]), source="-",
                 batch=2, max_batch_delay_s=60.0, state_dir=Path(a["state"]),
                 broker=BrokerConfig(url=a["url"]), confirm="broker")
raise SystemExit(run_agent(cfg, print_json=True))
"""


def agent_argv(script: str, model_dir: Path, group: str, url: str) -> list[str]:
    """`script` (AGENT_MAIN or a variant taking the same JSON) as the command line of an
    agent process of its own, its state beside `model_dir`, reading JSON lines from stdin."""
    args = {"group": group, "edge": EDGE, "model": str(model_dir), "url": url}
    args["state"] = str(model_dir.parent / "state")
    return python(script, json.dumps(args))
