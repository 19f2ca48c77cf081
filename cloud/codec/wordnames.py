"""What a temporal codec's codes do, in words an operator reads: `code_names`.

A word moves one group of KPIs by whole numbers of lattice steps, so it reads as those moves in
the KPIs' own units: "RSRP +1 dB, NRxRSRP +1 dB", "CQI -2". A KPI coded on a log scale
(throughput) moves by a factor: "DL_bitrate x1.3". A move past the words' reach (escaped: its
size follows the word) reads as "beyond": "DL_bitrate up x>2.1". Codes K and above are key words
(a whole state, sent at a chain's start): they read as "key" and the KPIs they start from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

from ...shared.temporalcodec import TemporalCodec
from ...shared.temporaltables import REACH

__all__ = ["UNITS", "CodeNames", "code_names"]

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


class CodeNames(Sequence[str]):
    """One name per code id (K words, then the key words), each made when it is read: a
    codec has thousands of word ids, of which a stream uses a few hundred."""

    def __init__(self, codec: TemporalCodec):
        self.codec = codec
        raw = codec.to_raw(codec.value(codec.keys))
        self._keys = [
            "key (" + ", ".join(f"{k} {v:.4g}" for k, v in zip(codec.kpis, row, strict=True)) + ")"
            for row in raw
        ]

    def __len__(self) -> int:
        return self.codec.K + len(self._keys)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"code {index} is outside 0..{len(self) - 1}")
        if index >= self.codec.K:
            return self._keys[index - self.codec.K]
        _, moves = self.codec.word_moves(index)
        parts = [self._move(j, q) for j, q in moves.items() if q != 0]
        return ", ".join(parts) if parts else "no move"

    def _move(self, j: int, q: int | None) -> str:
        """KPI j's move of q steps (None: escaped, past the digits' reach) in its units."""
        codec = self.codec
        kpi, size = codec.kpis[j], float(codec.steps[j] * codec.unit[j] * codec.std[j])
        unit = "" if codec.log[j] or kpi not in UNITS else f" {UNITS[kpi]}"
        if q is None:
            beyond = size * (REACH + 1)
            if codec.log[j]:
                return f"{kpi} moves x>{math.exp(beyond):.3g}"
            return f"{kpi} moves ±>{beyond:.3g}{unit}"
        if codec.log[j]:
            return f"{kpi} x{math.exp(size * q):.3g}"
        return f"{kpi} {_number(size * q)}{unit}"


def code_names(codec: TemporalCodec) -> CodeNames:
    """The names of `codec`'s codes (K words, then its key words)."""
    return CodeNames(codec)
