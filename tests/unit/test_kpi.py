"""The shared cell rule, KPI lists, sentinels and column matching (sparsetel.shared.kpi)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparsetel.shared.errors import DataError
from sparsetel.shared.kpi import (
    DEFAULT_SENTINELS,
    NUMBER_PATTERN,
    Sentinels,
    column_key,
    match_columns,
    parse_kpi_list,
    parse_sentinels,
    parse_value,
)

NAN = math.nan

# (cell text, expected value (NaN unless ok), expected status)
TRICKY_CELLS = [
    ("-92", -92.0, "ok"),
    (" -92 ", -92.0, "ok"),
    ("\t-3.5\n", -3.5, "ok"),
    ("\xa0-92\xa0", -92.0, "ok"),
    ("+5", 5.0, "ok"),
    (".5", 0.5, "ok"),
    ("5.", 5.0, "ok"),
    ("-0", -0.0, "ok"),
    ("1e3", 1000.0, "ok"),
    ("1.5E-2", 0.015, "ok"),
    ("-8.388338000000001", -8.388338000000001, "ok"),
    ("", NAN, "missing"),
    ("   ", NAN, "missing"),
    ("-", NAN, "missing"),
    (" - ", NAN, "missing"),
    ("--", NAN, "missing"),
    ("nan", NAN, "missing"),
    ("NaN", NAN, "missing"),
    ("NAN", NAN, "missing"),
    ("NA", NAN, "missing"),
    ("N/A", NAN, "missing"),
    ("#N/A", NAN, "missing"),
    ("null", NAN, "missing"),
    ("None", NAN, "missing"),
    ("2147483647", NAN, "sentinel"),
    ("2147483647.0", NAN, "sentinel"),
    ("-2147483648", NAN, "sentinel"),
    ("4294967295", NAN, "sentinel"),
    ("2147483646", 2147483646.0, "ok"),
    ("inf", NAN, "invalid"),
    ("-Infinity", NAN, "invalid"),
    ("1e400", NAN, "invalid"),
    ("9E38", NAN, "invalid"),  # a hex cell id that reads as a number beyond float32
    ("-3e38", -3e38, "ok"),
    ("12 dBm", NAN, "invalid"),
    ("1,5", NAN, "invalid"),
    ("1,000", NAN, "invalid"),
    ("1_000", NAN, "invalid"),
    ("0x1F", NAN, "invalid"),
    ("١٢٣", NAN, "invalid"),  # Arabic-Indic digits: float() would accept them
    ("１２", NAN, "invalid"),  # full-width digits
    ("−92", NAN, "invalid"),  # U+2212 minus sign
    ("--5", NAN, "invalid"),
    ("5-", NAN, "invalid"),
    ("e5", NAN, "invalid"),
    (".", NAN, "invalid"),
    ('"-92"', NAN, "invalid"),
    ("True", NAN, "invalid"),
    ("LTE", NAN, "invalid"),
]


@pytest.mark.parametrize(("text", "value", "status"), TRICKY_CELLS)
def test_parse_value_follows_the_cell_rule(text: str, value: float, status: str) -> None:
    got_value, got_status = parse_value(text, "RSRP")
    assert got_status == status
    if status == "ok":
        assert got_value == value and math.copysign(1, got_value) == math.copysign(1, value)
    else:
        assert math.isnan(got_value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "missing"),
        (NAN, "missing"),
        (True, "invalid"),
        (False, "invalid"),
        (math.inf, "invalid"),
        (2147483647, "sentinel"),
        (-92, "ok"),
        (3.25, "ok"),
    ],
)
def test_parse_value_takes_json_values(value: float | None, expected: str) -> None:
    assert parse_value(value, "RSRP")[1] == expected


def test_parse_value_returns_the_number_of_a_json_number() -> None:
    assert parse_value(-92, "RSRP") == (-92.0, "ok")


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_parse_value_calls_a_json_integer_beyond_the_float_range_invalid(value: int) -> None:
    parsed, status = parse_value(value, "RSRP")
    assert status == "invalid" and math.isnan(parsed)


def test_per_column_sentinel_applies_to_its_column_only() -> None:
    sentinels = parse_sentinels("RSRP=-200")
    assert parse_value("-200", "RSRP", sentinels)[1] == "sentinel"
    assert parse_value("-200.0", "RSRP", sentinels)[1] == "sentinel"
    assert parse_value("-200", "RSRQ", sentinels) == (-200.0, "ok")
    assert parse_value("2147483647", "RSRQ", sentinels)[1] == "sentinel"


def test_per_column_sentinel_matches_the_column_loosely() -> None:
    sentinels = parse_sentinels("dl bitrate=0")
    assert parse_value("0", "DL_bitrate", sentinels)[1] == "sentinel"
    assert sentinels.for_column("UL_bitrate") == frozenset(DEFAULT_SENTINELS)


def test_parse_sentinels_reads_global_and_per_column_values() -> None:
    sentinels = parse_sentinels(
        " 65535 , RSRP = -200, RSRP=-140,NRx RSRQ=-204", include_defaults=False
    )
    assert sentinels.global_values == (65535.0,)
    assert sentinels.per_column == {"RSRP": (-200.0, -140.0), "NRx RSRQ": (-204.0,)}


def test_parse_sentinels_keeps_the_defaults_unless_told_not_to() -> None:
    assert parse_sentinels("RSRP=-200").global_values == DEFAULT_SENTINELS
    assert parse_sentinels("2147483647").global_values == DEFAULT_SENTINELS
    assert parse_sentinels("", include_defaults=False) == Sentinels((), {})
    assert parse_value("2147483647", "x", parse_sentinels("", include_defaults=False))[1] == "ok"


@pytest.mark.parametrize("text", ["RSRP=abc", "=5", "abc", "RSRP=", "RSRP=1_000"])
def test_parse_sentinels_rejects_bad_entries(text: str) -> None:
    with pytest.raises(ValueError, match="sentinel"):
        parse_sentinels(text)


def test_parse_kpi_list_trims_names_and_keeps_inner_spaces() -> None:
    assert parse_kpi_list("RSRP, RSRQ , DL bitrate") == ("RSRP", "RSRQ", "DL bitrate")
    assert parse_kpi_list('SNR "dB",débit') == ('SNR "dB"', "débit")


@pytest.mark.parametrize("text", ["", "  ", "RSRP,,RSRQ", "RSRP,", "RSRP,RSRP", "RSRP, rsrp"])
def test_parse_kpi_list_rejects_empty_and_duplicate_names(text: str) -> None:
    with pytest.raises(ValueError):
        parse_kpi_list(text)


def test_column_key_folds_case_underscores_and_whitespace() -> None:
    assert column_key("  DL_bitrate ") == "dl bitrate"
    assert column_key("DL \t  BITRATE") == "dl bitrate"
    assert column_key("e\u0301") == column_key("\u00e9")  # decomposed and composed é


HEADER = ["Timestamp", "RSRP", "rsrq", "DL_bitrate", " SNR dB ", 'CQI "x"', "débit, UL"]


@pytest.mark.parametrize(
    ("wanted", "index"),
    [
        ("RSRP", 1),
        ("rsrp", 1),
        ("RSRQ", 2),
        ("dl bitrate", 3),
        ("DL  BITRATE", 3),
        ("snr_dB", 4),
        ('CQI "x"', 5),
        ("débit, ul", 6),
    ],
)
def test_match_columns_finds_exact_then_loose_names(wanted: str, index: int) -> None:
    assert match_columns(HEADER, [wanted]) == [index]


def test_match_columns_keeps_the_order_asked_for() -> None:
    assert match_columns(HEADER, ["DL_bitrate", "Timestamp", "RSRP"]) == [3, 0, 1]


@pytest.mark.parametrize("wanted", ["dlbitrate", "DL-bitrate", "RSRP dBm", "RSR", ""])
def test_match_columns_does_no_fuzzy_matching(wanted: str) -> None:
    with pytest.raises(DataError):
        match_columns(HEADER, [wanted])


def test_match_columns_error_names_the_column_and_lists_the_available_ones() -> None:
    with pytest.raises(DataError) as info:
        match_columns(["Timestamp", "RSRP", "DL_bitrate"], ["RSRP", "SINR"])
    message = str(info.value)
    assert "'SINR'" in message
    assert "'Timestamp', 'RSRP', 'DL_bitrate'" in message


def test_match_columns_prefers_an_exact_match_over_loose_ones() -> None:
    assert match_columns(["rsrp", "RSRP", "Rsrp"], ["RSRP"]) == [1]


def test_match_columns_rejects_an_ambiguous_name() -> None:
    with pytest.raises(DataError, match="several") as info:
        match_columns(["DL_bitrate", "DL bitrate", "RSRP"], ["dl bitrate"])
    assert "'DL_bitrate', 'DL bitrate'" in str(info.value)
    assert "available" in str(info.value)


def test_match_columns_rejects_a_duplicated_exact_name() -> None:
    with pytest.raises(DataError, match="several"):
        match_columns(["RSRP", "RSRP"], ["RSRP"])


@given(st.text(alphabet="0123456789+-.eE _,xX\u0661\u2212 naif", max_size=12))
def test_only_plain_ascii_numbers_become_numbers(text: str) -> None:
    value, status = parse_value(text, "col", Sentinels((), {}))
    if status == "ok":
        assert re.fullmatch(NUMBER_PATTERN, text.strip(), flags=re.ASCII)
        assert value == float(text.strip()) and math.isfinite(value)
    else:
        assert math.isnan(value)
