"""Range coder: hand-derived and golden bytes, round trips over random tables, the length bound
(at most one byte over the ideal), hostile payloads, and the frequency tables' quantisation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetel.shared.errors import WireError
from sparsetel.shared.rangecoder import (
    MAX_OVERRUN,
    PRECISION,
    TOTAL,
    FrequencyTable,
    RangeDecoder,
    RangeEncoder,
)

# Bits a symbol may cost beyond its ideal: `range >> PRECISION` drops under 2**-9 of the range.
TRUNCATION_BITS = -math.log2(1 - 2**-9)
GOLDEN_TABLE = FrequencyTable((16000, 8000, 4000, 2000, 1000, 1000, 766, 2))
GOLDEN_SYMBOLS = [0, 1, 0, 0, 2, 7, 3, 0, 0, 1, 4, 5, 6, 0, 0, 0, 7, 7, 1, 2, 0, 3, 0, 0, 6, 5]
GOLDEN_SYMBOLS += [4, 0, 1, 0]


def _encode(pairs: list[tuple[int, FrequencyTable]]) -> bytes:
    encoder = RangeEncoder()
    for symbol, table in pairs:
        encoder.encode(symbol, table)
    return encoder.finish()


def _decode(data: bytes, tables: list[FrequencyTable]) -> list[int]:
    decoder = RangeDecoder(data)
    symbols = [decoder.decode(table) for table in tables]
    decoder.finish()
    return symbols


def _length_bound(pairs: list[tuple[int, FrequencyTable]]) -> int:
    """ceil((ideal bits + truncation loss) / 8): what the module docstring promises."""
    coded = [(s, t) for s, t in pairs if t.size > 1]
    ideal = sum(t.bits(s) for s, t in coded) + TRUNCATION_BITS * len(coded)
    return math.ceil(ideal / 8 + 1e-9)


@st.composite
def tables(draw: st.DrawFn, max_size: int = 300) -> FrequencyTable:
    """A table of random counts: flat, heavy-tailed or mostly zero (faster than drawn lists)."""
    size = draw(st.integers(1, max_size))
    rng = random.Random(draw(st.integers(0, 2**32)))
    shape = draw(st.sampled_from(["flat", "heavy", "sparse"]))
    if shape == "flat":
        counts = [rng.randint(0, 100) for _ in range(size)]
    elif shape == "heavy":
        counts = [int(rng.paretovariate(0.7)) for _ in range(size)]
    else:
        counts = [rng.randint(0, 10**6) if rng.random() < 0.05 else 0 for _ in range(size)]
    prior = draw(st.sampled_from([0.0, 0.5, 1.0]))
    if prior == 0 and sum(counts) == 0:
        counts[0] = 1
    return FrequencyTable.from_counts(counts, prior)


@st.composite
def messages(draw: st.DrawFn, max_symbols: int = 2000) -> list[tuple[int, FrequencyTable]]:
    """Symbols, each with one of a few tables, drawn in proportion to the table or uniformly."""
    pool = draw(st.lists(tables(), min_size=1, max_size=4))
    rng = random.Random(draw(st.integers(0, 2**32)))
    skewed = draw(st.booleans())
    pairs = []
    for _ in range(draw(st.integers(0, max_symbols))):
        table = rng.choice(pool)
        if skewed:  # draw in proportion to the table: the cumulative frequencies, then bisect
            ends = (*table.starts[1:], TOTAL)
            pairs.append((rng.choices(range(table.size), cum_weights=ends)[0], table))
        else:
            pairs.append((rng.randrange(table.size), table))
    return pairs


def test_a_fair_bit_codes_to_the_bytes_derived_by_hand() -> None:
    bit = FrequencyTable.uniform(2)
    # range 2**32-1, r = 0x1FFFF: symbol 1 leaves low = 0x7FFFC000, rounded up to 0x80000000.
    assert _encode([(1, bit)]) == b"\x80"
    assert _encode([(0, bit)]) == b""  # low = 0: nothing to write
    # then r = 0xFFFF: low = 0x3FFFC000, rounded up to 0x40000000 (binary 0.01)
    assert _encode([(0, bit), (1, bit)]) == b"\x40"
    assert _encode([(1, bit), (1, bit)]) == b"\xc0"


def test_the_flush_picks_the_value_with_the_fewest_bytes() -> None:
    # Bytes due b"\x00", then low = 0xBF1B3E00, range = 0xBF10CB00: the interval holds 2**32,
    # so the flush is a carry into the byte due and no byte (rounding up would write 0xC0).
    sevens = FrequencyTable.uniform(7)
    assert _encode([(0, sevens), (0, sevens), (1, sevens)]) == b"\x01"
    # Bytes due b"\x5f", then low = 0x7F000000 exactly: V = low, flush byte 0x7F.
    eights = FrequencyTable.uniform(8)
    assert _encode([(2, eights), (7, eights), (7, eights)]) == b"\x5f\x7f"
    assert _decode(b"\x5f\x7f", [eights] * 3) == [2, 7, 7]


def test_the_golden_message_codes_to_fixed_bytes() -> None:
    data = _encode([(s, GOLDEN_TABLE) for s in GOLDEN_SYMBOLS])
    assert data.hex() == "433fd185105e8496ffa9413ca66e"
    assert _decode(data, [GOLDEN_TABLE] * len(GOLDEN_SYMBOLS)) == GOLDEN_SYMBOLS


def test_from_counts_gives_fixed_tables() -> None:
    table = FrequencyTable.from_counts([50, 20, 10, 5, 3, 1, 0, 0])
    assert table.freqs == (17228, 7094, 3716, 2027, 1351, 676, 338, 338)
    assert FrequencyTable.from_counts([10**6, 3, 0, 0], prior=0).freqs == (32765, 1, 1, 1)
    assert FrequencyTable.from_counts([0.1, 0.2, 0.3], prior=0).freqs == (5461, 10923, 16384)


@settings(max_examples=150, deadline=None)
@given(messages())
def test_every_message_decodes_to_its_symbols(pairs: list[tuple[int, FrequencyTable]]) -> None:
    data = _encode(pairs)
    assert _decode(data, [table for _, table in pairs]) == [symbol for symbol, _ in pairs]


@settings(max_examples=300, deadline=None)
@given(messages(max_symbols=60))
def test_a_message_is_at_most_one_byte_over_its_ideal_size(
    pairs: list[tuple[int, FrequencyTable]],
) -> None:
    assert len(_encode(pairs)) <= _length_bound(pairs)


def test_a_long_skewed_message_stays_close_to_its_ideal_size() -> None:
    table = FrequencyTable.from_counts([1000, 300, 100, 30, 10, 3, 1], prior=0)
    rng = random.Random(7)
    pairs = [(s, table) for s in rng.choices(range(table.size), weights=table.freqs, k=5000)]
    ideal = sum(table.bits(s) for s, _ in pairs)
    data = _encode(pairs)
    assert len(data) <= _length_bound(pairs)
    assert len(data) * 8 <= ideal + 5000 * TRUNCATION_BITS + 8  # 14 bits of truncation loss


def test_no_symbols_give_no_bytes() -> None:
    assert RangeEncoder().finish() == b""
    RangeDecoder(b"").finish()


def test_a_one_symbol_table_writes_nothing() -> None:
    single, byte = FrequencyTable.uniform(1), FrequencyTable.uniform(256)
    assert single.bits(0) == 0.0
    assert _encode([(0, single)] * 100) == b""
    mixed = [(0, single), (200, byte), (0, single), (7, byte), (0, single)]
    assert _encode(mixed) == _encode([(200, byte), (7, byte)])
    assert _decode(_encode(mixed), [t for _, t in mixed]) == [0, 200, 0, 7, 0]


def test_zero_bytes_due_are_kept_so_the_decoder_stays_within_its_overrun() -> None:
    byte = FrequencyTable.uniform(256)
    assert _encode([(0, byte)] * 10) == bytes(10)
    assert _decode(bytes(10), [byte] * 10) == [0] * 10


def test_finish_leaves_the_encoder_as_it_was() -> None:
    encoder = RangeEncoder()
    for symbol in GOLDEN_SYMBOLS[:10]:
        encoder.encode(symbol, GOLDEN_TABLE)
    first = encoder.finish()
    assert encoder.finish() == first == _encode([(s, GOLDEN_TABLE) for s in GOLDEN_SYMBOLS[:10]])
    for symbol in GOLDEN_SYMBOLS[10:]:
        encoder.encode(symbol, GOLDEN_TABLE)
    assert encoder.finish() == _encode([(s, GOLDEN_TABLE) for s in GOLDEN_SYMBOLS])


@pytest.mark.parametrize("symbol", [-1, 8, 1000])
def test_encode_rejects_a_symbol_outside_the_table(symbol: int) -> None:
    with pytest.raises(ValueError, match="outside a table of 8 symbols"):
        RangeEncoder().encode(symbol, GOLDEN_TABLE)


def test_decoding_past_the_message_ends_in_an_overrun() -> None:
    byte = FrequencyTable.uniform(256)
    decoder = RangeDecoder(_encode([(9, byte), (250, byte)]))
    assert [decoder.decode(byte), decoder.decode(byte)] == [9, 250]
    with pytest.raises(WireError) as caught:
        for _ in range(MAX_OVERRUN + 1):
            decoder.decode(byte)
    assert caught.value.reason == "payload_overrun"


def test_a_value_no_encoder_writes_is_invalid() -> None:
    with pytest.raises(WireError) as caught:
        RangeDecoder(b"\xff\xff\xff\xff").decode(FrequencyTable.uniform(2))
    assert caught.value.reason == "payload_invalid"


@pytest.mark.parametrize("extra", [b"\x01", b"\x00", b"\x00\x00\x00\x00", b"\xff" * 9])
def test_bytes_after_the_last_symbol_are_trailing(extra: bytes) -> None:
    pairs = [(1, FrequencyTable.uniform(2))]  # b"\x80": ends with a flush byte
    with pytest.raises(WireError) as caught:
        _decode(_encode(pairs) + extra, [t for _, t in pairs])
    assert caught.value.reason == "payload_trailing"


@settings(max_examples=150, deadline=None)
@given(messages(max_symbols=200))
def test_every_cut_of_a_message_decodes_or_fails_with_a_wire_error(
    pairs: list[tuple[int, FrequencyTable]],
) -> None:
    data = _encode(pairs)
    for cut in range(len(data)):
        try:
            _decode(data[:cut], [t for _, t in pairs])
        except WireError as exc:
            assert exc.reason in {"payload_overrun", "payload_invalid", "payload_trailing"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.lists(tables(max_size=40), min_size=1, max_size=3))
def test_garbage_decodes_to_symbols_or_fails_with_a_wire_error(
    data: bytes, pool: list[FrequencyTable]
) -> None:
    decoder = RangeDecoder(data)
    try:
        for i in range(500):
            table = pool[i % len(pool)]
            assert 0 <= decoder.decode(table) < table.size
        decoder.finish()
    except WireError as exc:
        assert exc.reason in {"payload_overrun", "payload_invalid", "payload_trailing"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**9), min_size=1, max_size=400),
    st.sampled_from([0.0, 0.25, 1.0, 3]),
)
def test_from_counts_sums_to_total_and_orders_like_the_counts(
    counts: list[int], prior: float
) -> None:
    if prior == 0 and sum(counts) == 0:
        counts[0] = 1
    freqs = FrequencyTable.from_counts(counts, prior).freqs
    assert sum(freqs) == TOTAL and min(freqs) >= 1 and len(freqs) == len(counts)
    by_count = sorted(range(len(counts)), key=lambda s: (counts[s], -s))
    assert [freqs[s] for s in by_count] == sorted(freqs)  # equal counts: lower symbol first


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**4), min_size=2, max_size=60), st.data())
def test_a_larger_count_never_lowers_its_own_frequency(
    counts: list[int], data: st.DataObject
) -> None:
    symbol = data.draw(st.integers(0, len(counts) - 1))
    more = list(counts)
    more[symbol] += data.draw(st.integers(1, 10**4))
    before = FrequencyTable.from_counts(counts).freqs[symbol]
    assert FrequencyTable.from_counts(more).freqs[symbol] >= before


def test_from_counts_is_the_same_for_ints_floats_and_arrays() -> None:
    counts = [7, 0, 123, 4, 4, 1]
    table = FrequencyTable.from_counts(counts, prior=0.5)
    assert FrequencyTable.from_counts([float(c) for c in counts], prior=0.5) == table
    assert FrequencyTable.from_counts(np.array(counts, dtype=np.int64), prior=0.5) == table
    assert FrequencyTable.from_counts(np.array(counts, dtype=np.float32), prior=0.5) == table


def test_uniform_is_from_counts_of_equal_counts() -> None:
    for size in (1, 2, 3, 7, 300, 1000, TOTAL):
        table = FrequencyTable.uniform(size)
        assert table == FrequencyTable.from_counts([1] * size, prior=0)
        assert max(table.freqs) - min(table.freqs) <= 1
    assert FrequencyTable.uniform(2).bits(1) == 1.0


@pytest.mark.parametrize(
    ("counts", "prior"),
    [
        ([], 1.0),
        ([1, -1], 1.0),
        ([1.0, math.nan], 1.0),
        ([math.inf], 1.0),
        ([0, 0], 0.0),
        ([1], -0.5),
        ([1] * (TOTAL + 1), 0.0),
    ],
    ids=["empty", "negative", "nan", "inf", "all_zero", "negative_prior", "too_many"],
)
def test_from_counts_rejects_unusable_counts(counts: list[float], prior: float) -> None:
    with pytest.raises(ValueError):
        FrequencyTable.from_counts(counts, prior)


MALFORMED_LISTS = {
    "not_a_list": ({"0": TOTAL}, "is a list"),
    "a_string": ("32768", "is a list"),
    "empty": ([], "1 to 32768 symbols"),
    "too_long": ([1] * (TOTAL + 1), "at most 32768 symbols"),
    "sum_too_small": ([TOTAL // 2, TOTAL // 2 - 1], "sum to 32767"),
    "sum_too_large": ([TOTAL, 1], "sum to 32769"),
    "zero": ([TOTAL, 0], "symbol 1 is 0"),
    "negative": ([TOTAL + 1, -1], "symbol 1 is -1"),
    "float": ([TOTAL / 2, TOTAL / 2], "not an int"),
    "bool": ([TOTAL - 1, True], "not an int"),
    "string_item": ([TOTAL - 1, "1"], "not an int"),
    "null_item": ([None], "not an int"),
    "nested": ([[TOTAL]], "not an int"),
}


@pytest.mark.parametrize(("value", "message"), MALFORMED_LISTS.values(), ids=MALFORMED_LISTS)
def test_from_list_rejects_a_malformed_table(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrequencyTable.from_list(value)


def test_a_table_survives_json_and_compares_by_its_frequencies() -> None:
    table = FrequencyTable.from_list(GOLDEN_TABLE.to_list())
    assert table == GOLDEN_TABLE and hash(table) == hash(GOLDEN_TABLE)
    assert table.starts == (0, 16000, 24000, 28000, 30000, 31000, 32000, 32766)
    assert GOLDEN_TABLE.bits(0) == pytest.approx(PRECISION - math.log2(16000))
