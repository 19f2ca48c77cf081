"""What a temporal codec's codes do, in words an operator reads: `code_names`.

A lattice word moves one KPI by a whole number of units, so it reads as that move in the KPI's
own units: "RSRP +1 dB", "CQI -2". A KPI coded on a log scale (throughput) moves by a factor of
(1 + x): "DL_bitrate x1.3". Codes K and above are key words (a whole state, sent at a chain's
start): they read as "key" and the KPIs they start from.
"""

from __future__ import annotations

import math

from ...shared.temporalcodec import TemporalCodec

__all__ = ["UNITS", "code_names"]

# Units of the KPIs most 5G collectors name this way; any other KPI reads without a unit.
UNITS = {
    "RSRP": "dB",
    "RSRQ": "dB",
    "SNR": "dB",
    "SINR": "dB",
    "RSSI": "dB",
    "NRxRSRP": "dB",
    "NRxRSRQ": "dB",
    "Speed": "km/h",
}


def _number(v: float) -> str:
    return f"{v:+.3g}" if abs(v) < 1000 else f"{v:+,.0f}"


def code_names(codec: TemporalCodec) -> list[str]:
    """One name per code id (K + number of key words of them): what the code does."""
    names = []
    for k in range(codec.K):
        j = int(codec.group[k])
        kpi, move = codec.kpis[j], float(codec.delta[k] * codec.unit[j] * codec.std[j])
        if codec.log[j]:
            names.append(f"{kpi} x{math.exp(move):.3g}")
        else:
            unit = UNITS.get(kpi)
            names.append(f"{kpi} {_number(move)}" + (f" {unit}" if unit else ""))
    raw = codec.to_raw(codec.value(codec.keys))
    for row in raw:
        parts = ", ".join(f"{kpi} {v:.4g}" for kpi, v in zip(codec.kpis, row, strict=True))
        names.append(f"key ({parts})")
    return names
