"""Range coder: symbols with static integer frequency tables to bytes and back, pure Python.

Edge and cloud must write and read exactly the same bytes, so everything here is integer
arithmetic on Python ints; a C or Rust port with 64-bit `low` and 32-bit `range` matches it.

Tables. A `FrequencyTable` gives symbol ``s`` the integer frequency ``freq[s] >= 1``; the
frequencies sum to ``TOTAL = 2**PRECISION = 32768``, and ``start[s]`` is the sum of the
frequencies before ``s``. A one-symbol table (``freq[0] == TOTAL``) is not coded at all:
encoding or decoding with it touches neither the state nor the bytes.

Encoder. The state is an interval ``[low, low + range)`` of the 32-bit window that follows
the bytes already written; ``low = 0`` and ``range = 2**32 - 1`` at the start. Coding ``s``
sets ``r = range >> PRECISION``, ``low += r * start[s]``, ``range = r * freq[s]``. When
``low`` reaches ``2**32`` a carry is added to the bytes written (trailing 0xFF bytes become
0x00 and the byte before them goes up by one; read as a binary fraction, the message's
interval stays inside [0, 1), so the carry always stops inside the buffer) and ``low``
drops its bit 32. Then, while ``range < 2**24``, the top byte of ``low`` is written and
``low`` and ``range`` shift left by 8 bits (``low`` kept to 32 bits). Truncating
``range >> PRECISION`` wastes under ``2**-9`` of the range, so a symbol costs at most
``-log2(freq/TOTAL) + 0.00282`` bits.

Termination. After the last symbol the encoder writes the fewest bytes that pick a value V
of the 32-bit window inside the interval, counting on the decoder to read zeros past the
end: V = ``2**32`` when the interval holds it (a carry, no byte), V = 0 when ``low == 0``
(no byte), and otherwise V = ``low`` rounded up to a multiple of ``2**24`` (it is inside,
as ``range >= 2**24``), whose top byte, never zero, is the only flush byte. So the flush is
at most one byte and a message is at most ``ceil((ideal_bits + 0.00282 * n) / 8)`` bytes
for n coded symbols. No symbols at all give b"". Bytes already written are kept even when
they are zeros, which bounds what the decoder reads past the end.

Decoder. It mirrors the encoder with ``code = V - low``: it starts with ``range = 2**32 - 1``
and ``code`` = the first four bytes (big-endian), and for each symbol computes ``r``,
``value = code // r`` (an error when ``value >= TOTAL``, which no encoder writes), the
symbol whose ``[start, start + freq)`` holds ``value``, then ``code -= r * start[s]``,
``range = r * freq[s]`` and, while ``range < 2**24``, ``code = code << 8 | next byte``.
Past the end of the data it reads zero bytes, at most `MAX_OVERRUN` of them: a valid
message needs 3 (flush byte written) or 4 (none), as the decoder's final 4-byte window ends
with the 3 zero bytes of V. Hence the check for trailing bytes in `RangeDecoder.finish`: a
message is whole only when its decoder has read at least 3 bytes past its end. It accepts
exactly the payloads that spell a value inside the decoded symbols' interval with at most one
byte after the bytes due; so one appended byte goes unnoticed only on a message without a
flush byte, and the result is then still a valid (longer) encoding of what was decoded.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import WireError

__all__ = [
    "MAX_OVERRUN",
    "PRECISION",
    "TOTAL",
    "FrequencyTable",
    "RangeDecoder",
    "RangeEncoder",
]

PRECISION = 15
TOTAL = 1 << PRECISION  # every table's frequencies sum to this
MAX_OVERRUN = 4  # zero bytes the decoder may read past the end of its data
_WINDOW_BYTES = 4
_TOP = 1 << 24  # renormalise below this range
_MASK = (1 << 32) - 1


def _check_frequencies(freqs: Sequence[object]) -> None:
    """ValueError naming the first frequency that is not an int >= 1."""
    for symbol, freq in enumerate(freqs):
        if type(freq) is not int:
            raise ValueError(f"frequency of symbol {symbol} is not an int: {freq!r}")
        if freq < 1:
            raise ValueError(f"frequency of symbol {symbol} is {freq}, not >= 1")


@dataclass(frozen=True, slots=True)
class FrequencyTable:
    """Static integer frequencies of the symbols ``0 .. size - 1``, summing to `TOTAL`.

    `starts[s]` is the sum of the frequencies before `s`; equality and hashing are by
    `freqs` alone. ValueError when a frequency is not an int >= 1 or the sum is wrong.
    """

    freqs: tuple[int, ...]
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        freqs = self.freqs
        if not isinstance(freqs, tuple):
            raise ValueError(f"freqs must be a tuple, not {type(freqs).__name__}")
        if not 1 <= len(freqs) <= TOTAL:
            raise ValueError(f"a table has 1 to {TOTAL} symbols, not {len(freqs)}")
        _check_frequencies(freqs)
        if sum(freqs) != TOTAL:
            raise ValueError(f"frequencies sum to {sum(freqs)}, not {TOTAL}")
        starts = [0] * len(freqs)
        for symbol in range(1, len(freqs)):
            starts[symbol] = starts[symbol - 1] + freqs[symbol - 1]
        object.__setattr__(self, "starts", tuple(starts))
        object.__setattr__(self, "size", len(freqs))

    @classmethod
    def from_counts(cls, counts: Iterable[float], prior: float = 1.0) -> FrequencyTable:
        """The table closest to ``counts[s] + prior`` with every frequency >= 1.

        Exact arithmetic, so every machine gets the same table: symbols whose share of the
        budget is under one get frequency 1 (repeated until none is), the others get the
        floor of their share of what is left, and the units still missing go one each to
        the largest remainders, the lower symbol first on a tie. A larger count never gets
        a smaller frequency. ValueError for a negative or non-finite count or prior, more
        than `TOTAL` symbols, or weights that are all zero.
        """
        return cls(_quantise(_integer_weights(counts, prior)))

    @classmethod
    def uniform(cls, size: int) -> FrequencyTable:
        """`size` symbols of (nearly) equal frequency; the lower symbols get the extra units."""
        if not 1 <= size <= TOTAL:
            raise ValueError(f"a table has 1 to {TOTAL} symbols, not {size}")
        share, extra = divmod(TOTAL, size)
        return cls(tuple(share + 1 if s < extra else share for s in range(size)))

    @classmethod
    def from_list(cls, values: object) -> FrequencyTable:
        """The table of a JSON list of frequencies; ValueError, saying why, for anything else."""
        if not isinstance(values, list | tuple):
            raise ValueError(f"a frequency table is a list, not {type(values).__name__}")
        if len(values) > TOTAL:
            raise ValueError(f"a table has at most {TOTAL} symbols, not {len(values)}")
        _check_frequencies(values)  # before the table: a compiled one checks types first
        return cls(tuple(values))

    def to_list(self) -> list[int]:
        """The frequencies as a JSON-ready list."""
        return list(self.freqs)

    def bits(self, symbol: int) -> float:
        """The ideal cost of `symbol` in bits, ``-log2(freq / TOTAL)``."""
        if not 0 <= symbol < self.size:
            raise ValueError(f"symbol {symbol} is outside a table of {self.size} symbols")
        return PRECISION - math.log2(self.freqs[symbol])


def _exact(value: float, what: str) -> Fraction:
    """`value` as an exact non-negative fraction (an int or a float's exact binary value)."""
    try:
        exact = Fraction(operator.index(value))  # type: ignore[arg-type]
    except TypeError:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{what} must be finite, not {value!r}") from None
        exact = Fraction(number)
    if exact < 0:
        raise ValueError(f"{what} must be >= 0, not {value!r}")
    return exact


def _integer_weights(counts: Iterable[float], prior: float) -> list[int]:
    """``counts[s] + prior`` scaled by one common factor to exact non-negative ints."""
    extra = _exact(prior, "prior")
    weights = [_exact(count, f"count {s}") + extra for s, count in enumerate(counts)]
    if not 1 <= len(weights) <= TOTAL:
        raise ValueError(f"a table has 1 to {TOTAL} symbols, not {len(weights)}")
    if sum(weights) == 0:
        raise ValueError("counts and prior are all zero")
    scale = math.lcm(*(weight.denominator for weight in weights))
    return [weight.numerator * (scale // weight.denominator) for weight in weights]


def _quantise(weights: list[int]) -> tuple[int, ...]:
    """Frequencies >= 1 summing to `TOTAL`, proportional to `weights` (see `from_counts`)."""
    freqs = [1] * len(weights)
    rest = list(range(len(weights)))
    while True:  # fix at 1 the symbols whose share is under one unit, then share again
        budget = TOTAL - (len(weights) - len(rest))
        total = sum(weights[s] for s in rest)
        keep = [s for s in rest if budget * weights[s] >= total]
        if len(keep) == len(rest):
            break
        rest = keep
    remainders = {}
    for s in rest:
        freqs[s], remainders[s] = divmod(budget * weights[s], total)
    missing = budget - sum(freqs[s] for s in rest)
    for s in sorted(rest, key=lambda s: (-remainders[s], s))[:missing]:
        freqs[s] += 1
    return tuple(freqs)


def _add_carry(out: bytearray) -> None:
    """Add one to the number that `out` spells, big-endian; it never overflows (see above)."""
    i = len(out) - 1
    while out[i] == 0xFF:
        out[i] = 0
        i -= 1
    assert i >= 0, "range coder carry ran past the first byte"
    out[i] += 1


class RangeEncoder:
    """Codes symbols one at a time; `finish` gives the bytes of all symbols so far."""

    __slots__ = ("_low", "_out", "_range")

    def __init__(self) -> None:
        self._low = 0
        self._range = _MASK
        self._out = bytearray()

    def encode(self, symbol: int, table: FrequencyTable) -> None:
        """Code `symbol` (``0 <= symbol < table.size``) with `table`; ValueError otherwise."""
        if not 0 <= symbol < table.size:
            raise ValueError(f"symbol {symbol} is outside a table of {table.size} symbols")
        freq = table.freqs[symbol]
        if freq == TOTAL:
            return
        r = self._range >> PRECISION
        low = self._low + r * table.starts[symbol]
        rng = r * freq
        if low > _MASK:
            _add_carry(self._out)
            low &= _MASK
        while rng < _TOP:
            self._out.append(low >> 24)
            low = (low << 8) & _MASK
            rng <<= 8
        self._low = low
        self._range = rng

    def finish(self) -> bytes:
        """The message: the bytes written so far and at most one flush byte.

        The encoder is left as it was, so more symbols may follow and `finish` be called
        again (the bytes so far are a cheap size estimate for filling a frame).
        """
        out = bytearray(self._out)
        low = self._low
        if low + self._range > _MASK + 1:
            _add_carry(out)  # V = 2**32: the window is all zeros after the carry
        elif low != 0:
            out.append((low + _TOP - 1) >> 24)  # V = low rounded up to a multiple of 2**24
        return bytes(out)


class RangeDecoder:
    """Reads back the symbols of one `RangeEncoder` message, with the same tables in order.

    WireError with reason ``"payload_overrun"`` when decoding needs more than `MAX_OVERRUN`
    bytes past the end of `data`, ``"payload_invalid"`` for a value no encoder writes.
    """

    __slots__ = ("_code", "_data", "_end", "_pos", "_range", "_size")

    def __init__(self, data: bytes) -> None:
        self._size = len(data)
        self._data = bytes(data) + bytes(MAX_OVERRUN)
        self._end = len(self._data)
        self._range = _MASK
        self._pos = 0
        self._code = 0
        for _ in range(_WINDOW_BYTES):
            self._code = (self._code << 8) | self._data[self._pos]
            self._pos += 1

    def decode(self, table: FrequencyTable) -> int:
        """The next symbol, coded with `table`."""
        if table.size == 1:
            return 0
        r = self._range >> PRECISION
        code = self._code
        value = code // r
        if value >= TOTAL:
            raise WireError(
                "range-coded payload holds a value no encoder writes", "payload_invalid"
            )
        starts = table.starts
        symbol = bisect_right(starts, value) - 1
        code -= r * starts[symbol]
        rng = r * table.freqs[symbol]
        if rng < _TOP:
            data, pos = self._data, self._pos
            while rng < _TOP:
                if pos == self._end:
                    raise WireError("range-coded payload ends too early", "payload_overrun")
                code = (code << 8) | data[pos]
                pos += 1
                rng <<= 8
            self._pos = pos
        self._code = code
        self._range = rng
        return symbol

    @property
    def overrun(self) -> int:
        """How many zero bytes past the end of the data the decoder has read so far."""
        return max(0, self._pos - self._size)

    def finish(self) -> None:
        """WireError ``"payload_trailing"`` when the data holds bytes no symbol accounts for.

        A message is whole when the decoder has read at least 3 bytes past its end: the
        encoder never writes the 3 low bytes of its final window, which are zero.
        """
        if self.overrun < _WINDOW_BYTES - 1:
            unread = _WINDOW_BYTES - 1 - self.overrun
            raise WireError(
                f"range-coded payload has {unread} byte(s) after its last symbol",
                "payload_trailing",
            )
