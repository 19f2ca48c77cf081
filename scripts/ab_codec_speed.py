#!/usr/bin/env python3
"""The temporal codec's speed against an earlier revision, measured in one process.

    .venv/bin/python scripts/ab_codec_speed.py --base REV [--model RUN] [--measurements N]
        [--rounds R] [--json]

The development machines are shared: the same code measured a few minutes apart can differ by
half. This script takes the earlier revision's `shared/` (and its `cloud/codec/payloaddecoder.py`
when it has one) out of git into a temporary package, and times both revisions' encoder
(`encode_payload`, frames that continue each other, a key every 60 measurements) and payload
decoder on the same codec and measurements, alternating base and current in every round, at 1
and 50 measurements a frame. It prints the median CPU microseconds per measurement of each
and their ratio; it also checks that both encoders write the same bytes, and that both
decoders read back the same states. `--model` names an exported temporal run (default: a
quick one trained here on simulated KPIs, as scripts/bench_edge.py trains it), `--data` a
folder of CSVs holding its KPIs (default: simulated sessions).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_edge import _rows, _temporal_model  # noqa: E402

from sparsetel.cloud.codec import payloaddecoder  # noqa: E402
from sparsetel.cloud.data.simulator import write_sessions  # noqa: E402
from sparsetel.shared import temporalcodec, temporalpayload  # noqa: E402
from sparsetel.shared.rundir import CODEC_FILE  # noqa: E402

KEY_EVERY = 60
PER_FRAME = (1, 50)
BASE_PACKAGE = "ab_base"


def _base_modules(rev: str, into: Path) -> dict[str, ModuleType]:
    """The revision's codec modules, imported as package `BASE_PACKAGE`."""
    wanted = ["shared", "cloud/codec/payloaddecoder.py"]
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev, *wanted],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, *listed],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    package = into / BASE_PACKAGE
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(package, filter="data")
    for folder in (package, package / "cloud", package / "cloud" / "codec"):
        folder.mkdir(exist_ok=True)
        (folder / "__init__.py").touch()
    sys.path.insert(0, str(into))
    modules = {
        "codec": importlib.import_module(f"{BASE_PACKAGE}.shared.temporalcodec"),
        "payload": importlib.import_module(f"{BASE_PACKAGE}.shared.temporalpayload"),
    }
    if hasattr(modules["payload"], "decode_payload"):
        modules["decoder"] = modules["payload"]
    else:
        modules["decoder"] = importlib.import_module(f"{BASE_PACKAGE}.cloud.codec.payloaddecoder")
    return modules


def _frames(encode: Callable[..., Any], codec: Any, x: np.ndarray, per: int) -> list[tuple]:
    """(payload, keys, state it continues, state it leaves) per frame."""
    out, state = [], None
    for start in range(0, len(x), per):
        part = x[start : start + per]
        due = state is None or any((start + i) % KEY_EVERY == 0 for i in range(len(part)))
        keys = [due and i == 0 for i in range(len(part))]
        payload, decoded = encode(codec, part, keys, None if keys[0] else state)
        out.append((payload, keys, None if keys[0] else state, decoded.state))
        state = decoded.state
    return out


def _plain(state: Any) -> tuple:
    """A chain state of either revision as plain tuples (their classes differ)."""
    return state.units, state.mask, state.moves


def _cpu_us(fn: Callable[[], object], n: int) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) / n * 1e6


def measure(
    base: str, model: Path | None, data: Path | None, measurements: int, rounds: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sparsetel-ab-"))
    run = model if model is not None else _temporal_model(work)
    text = (run / CODEC_FILE).read_text(encoding="utf-8")
    old = _base_modules(base, work)
    sides = {
        "base": (old["codec"].TemporalCodec.from_json(text), old["payload"], old["decoder"]),
        "current": (temporalcodec.TemporalCodec.from_json(text), temporalpayload, payloaddecoder),
    }
    codec = sides["current"][0]
    if data is None:
        data = work / "tdata"
        if not data.is_dir():
            write_sessions(data, n_sessions=6, rows=1200, seed=0)
    x = _rows(data, codec.kpis, measurements).astype(np.float64)
    result: dict[str, Any] = {"base": base, "measurements": len(x), "rounds": rounds}
    for per in PER_FRAME:
        frames = {
            name: _frames(payload.encode_payload, c, x, per)
            for name, (c, payload, _) in sides.items()
        }
        same_bytes = [f[0] for f in frames["base"]] == [f[0] for f in frames["current"]]
        times: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, (c, payload, decoder) in sides.items():

                def encode(c: Any = c, payload: ModuleType = payload, per: int = per) -> None:
                    _frames(payload.encode_payload, c, x, per)

                def decode(
                    c: Any = c,
                    decoder: ModuleType = decoder,
                    own: list[tuple[Any, ...]] = frames[name],
                ) -> None:
                    for payload_bytes, keys, state, _ in own:
                        decoder.decode_payload(c, payload_bytes, keys, state)

                times.setdefault(f"{name}_encode", []).append(_cpu_us(encode, len(x)))
                times.setdefault(f"{name}_decode", []).append(_cpu_us(decode, len(x)))
        agree = all(
            _plain(sides[name][2].decode_payload(sides[name][0], p, k, s).state) == _plain(after)
            for name in sides
            for p, k, s, after in frames["current"][:200]
        )
        row = {name: statistics.median(values) for name, values in times.items()}
        row["encode_ratio"] = row["current_encode"] / row["base_encode"]
        row["decode_ratio"] = row["current_decode"] / row["base_decode"]
        row["same_payload_bytes"] = same_bytes
        row["decoders_agree"] = agree
        result[f"per_frame_{per}"] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="a git revision to compare with")
    parser.add_argument("--model", type=Path, help="an exported temporal run")
    parser.add_argument("--data", type=Path, help="a folder of CSVs with the model's KPIs")
    parser.add_argument("--measurements", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = measure(args.base, args.model, args.data, args.measurements, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"temporal codec, current tree against {args.base}: CPU µs per measurement, median of "
          f"{args.rounds} alternating rounds, {result['measurements']:,} measurements")  # fmt: skip
    for per in PER_FRAME:
        row = result[f"per_frame_{per}"]
        print(f"  {per} a frame: encode {row['base_encode']:.1f} -> {row['current_encode']:.1f} "
              f"({row['encode_ratio']:.2f}x the time); decode {row['base_decode']:.1f} -> "
              f"{row['current_decode']:.1f} ({row['decode_ratio']:.2f}x); same bytes "
              f"{row['same_payload_bytes']}, decoders agree {row['decoders_agree']}")  # fmt: skip


if __name__ == "__main__":
    main()
