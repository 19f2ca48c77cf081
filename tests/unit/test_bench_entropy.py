"""The static-table range coder: round trips, per-symbol tables, honest bit counts."""

from __future__ import annotations

import numpy as np
import pytest

from sparsetel.cloud.bench import entropy
from sparsetel.cloud.bench.entropy import SymbolTable


def _skewed(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return np.minimum(rng.geometric(0.4, n) - 1, size - 1)


def test_round_trip_with_one_table() -> None:
    rng = np.random.default_rng(0)
    table = SymbolTable.fit(_skewed(rng, 2000, 16), 16)
    symbols = _skewed(rng, 300, 16)
    words = entropy.encode(symbols, [table])
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(entropy.decode(words, [table], symbols.size), symbols)


def test_round_trip_with_a_table_per_column() -> None:
    rng = np.random.default_rng(1)
    tables = [
        SymbolTable.fit(_skewed(rng, 500, 8), 8),
        SymbolTable.fit(rng.integers(0, 300, 500), 300),
    ]
    symbols = np.stack([_skewed(rng, 50, 8), rng.integers(0, 300, 50)], axis=1)
    choice = np.tile([0, 1], (50, 1))
    words = entropy.encode(symbols, tables, choice)
    np.testing.assert_array_equal(entropy.decode(words, tables, choice), symbols)


def test_add_one_smoothing_makes_unseen_symbols_codable() -> None:
    table = SymbolTable.fit(np.zeros(1000, dtype=int), 50)
    assert np.all(table.probabilities > 0)
    symbols = np.arange(50)
    words = entropy.encode(symbols, [table])
    np.testing.assert_array_equal(entropy.decode(words, [table], 50), symbols)


def test_tables_fit_on_training_symbols_decode_test_symbols() -> None:
    rng = np.random.default_rng(2)
    table = SymbolTable.fit(_skewed(rng, 5000, 32), 32)
    test = _skewed(np.random.default_rng(99), 1000, 32)
    np.testing.assert_array_equal(
        entropy.decode(entropy.encode(test, [table]), [table], 1000), test
    )


def test_payload_bits_count_every_flushed_word_and_track_the_ideal_cost() -> None:
    rng = np.random.default_rng(3)
    table = SymbolTable.fit(_skewed(rng, 5000, 16), 16)
    symbols = _skewed(rng, 2000, 16)
    words = entropy.encode(symbols, [table])
    bits = entropy.payload_bits(words)
    assert bits == 32 * len(words)
    ideal = table.ideal_bits(symbols)
    assert ideal <= bits <= ideal + 64 + 0.01 * ideal


def test_skewed_symbols_cost_less_than_uniform_ones() -> None:
    rng = np.random.default_rng(4)
    skewed = SymbolTable.fit(_skewed(rng, 5000, 256), 256)
    uniform = SymbolTable(np.ones(256))
    symbols = _skewed(rng, 500, 256)
    assert len(entropy.encode(symbols, [skewed])) < len(entropy.encode(symbols, [uniform]))


def test_empty_input_codes_to_no_words() -> None:
    table = SymbolTable(np.ones(4))
    words = entropy.encode(np.zeros(0, dtype=int), [table])
    assert words.size == 0
    assert entropy.decode(words, [table], 0).size == 0


@pytest.mark.parametrize(
    ("symbols", "choice"),
    [
        (np.array([0, 4]), None),  # symbol outside the alphabet
        (np.array([-1, 0]), None),
        (np.array([0, 1]), np.array([0, 2])),  # no table 2
        (np.array([0, 1]), np.array([0])),  # choice of the wrong shape
    ],
)
def test_encode_rejects_bad_symbols_and_choices(symbols: np.ndarray, choice: np.ndarray) -> None:
    tables = [SymbolTable(np.ones(4)), SymbolTable(np.ones(4))]
    with pytest.raises(ValueError):
        entropy.encode(symbols, tables, choice)


def test_table_rejects_bad_probabilities_and_priors() -> None:
    with pytest.raises(ValueError):
        SymbolTable(np.array([1.0, 0.0]))
    with pytest.raises(ValueError):
        SymbolTable.from_counts(np.array([1, 2]), prior=0.0)
    with pytest.raises(ValueError):
        SymbolTable.fit(np.array([0, 1]), 0)
