"""Golden version 3 frames: the bytes docs/wire-format.md shows, and the fields they decode to.

Byte-exact vectors for anyone who implements the format: `encode_chain_frame(g.frame)` is
`g.data`, `decode_chain_frame(g.data)` is `g.frame`, and `g.frame.times(g.period_ms,
g.prev_last_ms)` is `g.times_ms`. A chained frame does not carry its chain's period or its
predecessor's last time; the vector gives the values its chain would. The payloads are
arbitrary bytes: the frame does not interpret them.
"""

from __future__ import annotations

from typing import NamedTuple

from .chainframe import ChainFrame, ChainHead

__all__ = [
    "CHAINED_HEX",
    "GOLDEN_V3",
    "HISTORICAL_AUDIT_HEX",
    "KEY_HEX",
    "GoldenFrame",
]

_REF = bytes.fromhex("0123456789abcdef")


class GoldenFrame(NamedTuple):
    """One golden frame: its bytes (spaced hex, as the document shows them) and contents."""

    hex: str
    frame: ChainFrame  # what decode_chain_frame returns (NaN audit values compare unequal)
    period_ms: int  # the chain's period
    prev_last_ms: int | None  # the predecessor's last record time; None when not chained
    times_ms: tuple[int, ...]  # shape [count]: each record's time in ms

    @property
    def data(self) -> bytes:
        return bytes.fromhex(self.hex)


# A chain's first frame: three records at 1 Hz, a key at 0, regular times. 36 bytes.
KEY_HEX = """
53 54 03 00 07 2a 01 23 45 67 89 ab cd ef 80 d0
95 ff bc 31 e8 07 04 80 01 03 01 00 03 a5 3c 0f
56 20 4b ed
"""

# The next frame of that chain: one record, one period after the last, no key. 15 bytes.
CHAINED_HEX = """
53 54 03 08 07 2b 00 01 00 01 c3 db 4a 05 de
"""

# A replayed chained frame: gap 1250 ms, spacings 1000, 250, 2000 ms, a key at record 2,
# audits of records 0 and 2 (D=2, NaN = missing KPI). 45 bytes.
HISTORICAL_AUDIT_HEX = """
53 54 03 0f 06 09 f4 03 04 01 02 00 db 0b d0 0f
05 01 02 03 04 05 00 02 a0 c2 bf 00 00 7f c0 00
00 41 44 00 00 40 40 00 00 ce fd b8 4e
"""

GOLDEN_V3 = {
    "key": GoldenFrame(
        KEY_HEX,
        ChainFrame(7, 42, 3, (0,), b"\xa5\x3c\x0f", ChainHead(_REF, 1700000000000, 1000, 4, 128)),
        1000,
        None,
        (1700000000000, 1700000001000, 1700000002000),
    ),
    "chained": GoldenFrame(
        CHAINED_HEX,
        ChainFrame(7, 43, 1, (), b"\xc3", None),
        1000,
        1700000002000,
        (1700000003000,),
    ),
    "historical_audit": GoldenFrame(
        HISTORICAL_AUDIT_HEX,
        ChainFrame(
            6,
            9,
            4,
            (2,),
            b"\x01\x02\x03\x04\x05",
            None,
            gap=250,
            deltas=(0, -750, 1000),
            historical=True,
            audit=((-95.5, float("nan")), None, (12.25, 3.0), None),
        ),
        1000,
        1699999990000,
        (1699999991250, 1699999992250, 1699999992500, 1699999994500),
    ),
}
