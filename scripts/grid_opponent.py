"""What the grid-aware predictive coder needs for the SNR `sparsetel evaluate` reported: the
opponent of the temporal codec's rate bar, at the same framing and on the same sessions.

It fits `GridPredictive("previous")` (the benchmark's, with static and with adaptive tables) on
the training sessions at STEPS (a dense sweep where uccmisl crosses 27-34 dB), codes the test
sessions in frames of 50 (one key and one flush each, as `evaluate`'s `bits_per_measurement`),
scores them with the shared `fidelity.snr`, and reads each curve at `--snr-db` as the benchmark
does (`bdrate.bits_at_snr`: PCHIP over the lower envelope of its undominated points; the curve
is jagged, a KPI's step moving a whole grid step at a time). Prints one JSON object.

    python scripts/grid_opponent.py --data ../shared/data/uccmisl-5g/5G-production-dataset \\
        --kpis RSRP,RSRQ,SNR,CQI,RSSI,NRxRSRP,NRxRSRQ,DL_bitrate,UL_bitrate,Speed \\
        --target DL_bitrate --snr-db 29.92
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from sparsetel.cloud.bench.bdrate import bits_at_snr
from sparsetel.cloud.bench.dataset import load_bench_data
from sparsetel.cloud.bench.gridcode import GridPredictive
from sparsetel.cloud.codec.fidelity import snr
from sparsetel.cloud.codec.temporal import TARGET_WEIGHT

STEPS = tuple(np.geomspace(0.1, 0.2, 16).tolist())
FRAME = 50


def sweep(data: str, kpis: tuple[str, ...], target: str, table: str) -> list[tuple[float, float]]:
    """(SNR dB, bits per measurement) of the coder at each of STEPS on the test sessions."""
    bd = load_bench_data(data, kpis, target, on="test")
    train = replace(bd.train, target_weight=TARGET_WEIGHT)
    pieces = [
        (s.x[i : i + FRAME], s.mask[i : i + FRAME])
        for s in bd.test
        for i in range(0, len(s), FRAME)
    ]
    x = np.concatenate([p[0] for p in pieces])
    mask = np.concatenate([p[1] for p in pieces])
    out = []
    for step in STEPS:
        coder = GridPredictive("previous", step, table)
        coder.fit(train, 0)
        coded = coder.code_frames(pieces)
        recon = np.concatenate([c.recon for c in coded])
        out.append((snr(x, recon, mask)["snr_db"], sum(c.bits for c in coded) / len(x)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--kpis", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--snr-db", type=float, required=True)
    args = p.parse_args()
    kpis = tuple(args.kpis.split(","))
    result = {}
    for table in ("static", "adaptive"):
        points = sweep(args.data, kpis, args.target, table)
        result[table] = {
            "bits_at_snr": bits_at_snr([(b, s) for s, b in points], args.snr_db),
            "points": [{"snr_db": round(s, 3), "bits": round(b, 3)} for s, b in points],
        }
    print(json.dumps({"snr_db": args.snr_db, **result}, indent=1))


if __name__ == "__main__":
    main()
