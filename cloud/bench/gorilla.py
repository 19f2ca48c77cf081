"""Gorilla XOR compression of float32 series (Pelkonen et al., VLDB 2015, section 4.1.2).

Raw KPIs are published as float32, so this codes float32 bit patterns (32-bit words), not
the paper's float64. The value stream is the paper's, with the field widths adapted:

- the first value verbatim (32 bits);
- then each value XORed with the previous one:
  - ``0`` when the XOR is zero (a repeat);
  - ``10`` + the meaningful bits when they fit in the previous value's window (at least as
    many leading and trailing zeros as that window had), reusing its width;
  - ``11`` + 5 bits of leading zeros (0..31) + 5 bits of meaningful length minus one
    (1..32 stored as 0..31) + the meaningful bits; this sets the new window.

The paper's 64-bit layout uses 5 and 6 bits; for 32-bit words 5 bits carry every leading
count of a nonzero XOR and every length once it is stored minus one. No timestamps (the
wire sends those alike for every codec) and no header: the caller knows the count.
Bits are packed most significant first; the payload costs `bit_count` bits (the padding of
the last byte is not counted). NaN payloads, signed zeros and infinities round-trip
bit-exactly: the codec only ever sees the bit patterns.

No maintained Python package does this: PyPI ``gorilla`` is a monkey-patching tool, and
``gorillacompression`` returns its own dict format and is not a dependency of ours.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode", "encode"]

_WORD = 32
_LEAD_BITS = 5
_LEN_BITS = 5


def _leading_zeros(v: int) -> int:
    return _WORD - v.bit_length()


def _trailing_zeros(v: int) -> int:
    return (v & -v).bit_length() - 1


def _pieces(words: np.ndarray) -> list[str]:
    """The coded bits of `words` (uint32, shape: [n], n >= 1) as binary-digit strings."""
    out = [format(int(words[0]), "032b")]
    prev = int(words[0])
    lead, trail = -1, -1  # no window until the first '11' sets one
    for w in words[1:].tolist():
        x = w ^ prev
        prev = w
        if x == 0:
            out.append("0")
            continue
        lz, tz = _leading_zeros(x), _trailing_zeros(x)
        if lead >= 0 and lz >= lead and tz >= trail:
            width = _WORD - lead - trail
            out.append("10" + format(x >> trail, f"0{width}b"))
            continue
        lead, trail = lz, tz
        width = _WORD - lz - tz
        out.append(f"11{lz:05b}{width - 1:05b}" + format(x >> tz, f"0{width}b"))
    return out


def encode(values: np.ndarray) -> tuple[bytes, int]:
    """Code float32 `values` (shape: [n]). Returns the payload (``ceil(bit_count / 8)``
    bytes, zero-padded) and `bit_count`, the bits the stream really uses (0 when n = 0)."""
    v = np.asarray(values)
    if v.dtype != np.float32:
        raise ValueError(f"values must be float32, got {v.dtype}")
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if v.size == 0:
        return b"", 0
    bits = "".join(_pieces(v.view(np.uint32)))
    count = len(bits)
    padded = bits + "0" * (-count % 8)
    return int(padded, 2).to_bytes(len(padded) // 8, "big"), count


class _Reader:
    """Reads fields most significant bit first from a binary-digit string."""

    def __init__(self, bits: str) -> None:
        self.bits = bits
        self.pos = 0

    def take(self, width: int) -> int:
        end = self.pos + width
        if end > len(self.bits):
            raise ValueError(f"truncated Gorilla stream: needs bit {end}, has {len(self.bits)}")
        field = self.bits[self.pos : end]
        self.pos = end
        return int(field, 2)


def _read_words(reader: _Reader, n: int) -> list[int]:
    """The n words (ints) coded in the stream behind `reader`."""
    prev = reader.take(_WORD)
    out = [prev]
    lead, trail = -1, -1
    for _ in range(n - 1):
        if reader.take(1) == 1:
            if reader.take(1) == 1:
                lead = reader.take(_LEAD_BITS)
                trail = _WORD - lead - (reader.take(_LEN_BITS) + 1)
                if trail < 0:
                    raise ValueError("corrupt Gorilla stream: window wider than 32 bits")
            elif lead < 0:
                raise ValueError("corrupt Gorilla stream: window reused before it was set")
            prev ^= reader.take(_WORD - lead - trail) << trail
        out.append(prev)
    return out


def decode(data: bytes, n: int, bit_count: int | None = None) -> np.ndarray:
    """The n float32 values (shape: [n]) coded in `data`. With `bit_count`, also check the
    stream uses exactly that many bits. Raises ValueError on a truncated or corrupt stream."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    reader = _Reader("".join(format(b, "08b") for b in data))
    words = _read_words(reader, n)
    if bit_count is not None and reader.pos != bit_count:
        raise ValueError(f"Gorilla stream used {reader.pos} bits, expected {bit_count}")
    return np.array(words, dtype=np.uint32).view(np.float32)
