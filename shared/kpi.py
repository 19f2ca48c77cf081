"""KPI schema and cell parsing: the one rule, shared by the edge sources and the cloud loader.

A KPI cell is text (or, from JSON, a number or null). It becomes a float or NaN with a status:

- ``"missing"``: blank, or a missing token (``-``, ``nan``, ``N/A``, ``null``, ...; any case);
- ``"invalid"``: anything else that is not a plain ASCII decimal number (``12 dBm``, ``1,5``,
  ``0x1F``, ``1_000``, ``inf``, unicode digits, a JSON boolean) or beyond float32's range
  (`LARGEST_VALUE`: KPIs travel as float32, where it would become infinite);
- ``"sentinel"``: a number that is a placeholder, such as 2147483647 (Android's "unavailable"),
  globally or for one column (``RSRP=-200``);
- ``"ok"``: a finite number.

Nothing non-numeric ever becomes a number silently. ``cloud.data.datasets`` applies the same rule
to whole columns with pandas, using `NUMBER_PATTERN` and `MISSING_TOKENS` from here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import DataError

__all__ = [
    "DEFAULT_SENTINELS",
    "INVALID",
    "LARGEST_VALUE",
    "MISSING",
    "MISSING_TOKENS",
    "NUMBER_PATTERN",
    "OK",
    "SENTINEL",
    "STATUSES",
    "Sentinels",
    "column_key",
    "match_columns",
    "parse_kpi_list",
    "parse_sentinels",
    "parse_value",
]

OK = "ok"
MISSING = "missing"
SENTINEL = "sentinel"
INVALID = "invalid"
STATUSES = (OK, MISSING, SENTINEL, INVALID)

# Compared after strip() and lower(); listed in their usual spellings.
MISSING_TOKENS: tuple[str, ...] = (
    "",
    "-",
    "--",
    "?",
    "nan",
    "NaN",
    "NA",
    "N/A",
    "n/a",
    "#N/A",
    "null",
    "NULL",
    "None",
    "none",
)
_MISSING_LOWER = frozenset(token.lower() for token in MISSING_TOKENS)

# Integer extremes that loggers write for "no value" (int32, uint32, int64), as floats.
DEFAULT_SENTINELS: tuple[float, ...] = (
    2147483647.0,
    -2147483648.0,
    -2147483647.0,
    2147483648.0,
    4294967295.0,
    9223372036854775807.0,
    -9223372036854775808.0,
)

# A plain decimal number in ASCII digits, after strip(): no thousands separators, no '_',
# no hex, no inf/nan words. Python's float() alone would accept '1_000' and unicode digits.
NUMBER_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER = re.compile(NUMBER_PATTERN)
LARGEST_VALUE = 3.4028234663852886e38  # float32's largest: larger magnitudes are invalid


def column_key(name: str) -> str:
    """The form under which two column names are the same: NFC, case-folded, '_' as a space,
    runs of whitespace as one space, no surrounding whitespace (``" DL_bitrate "`` ->
    ``"dl bitrate"``)."""
    return " ".join(unicodedata.normalize("NFC", name).replace("_", " ").split()).casefold()


@dataclass(frozen=True)
class Sentinels:
    """Numbers that mean "no value": `global_values` in every column, `per_column` in one.

    `per_column` maps a column name (matched like `match_columns`: exact, then `column_key`)
    to its extra sentinel values.
    """

    global_values: tuple[float, ...] = DEFAULT_SENTINELS
    per_column: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    _cache: dict[str, frozenset[float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def for_column(self, column: str) -> frozenset[float]:
        """All sentinel values that apply to `column` (cached per column name)."""
        found = self._cache.get(column)
        if found is None:
            extra = self.per_column.get(column)
            if extra is None:
                key = column_key(column)
                extra = tuple(
                    v for name, vs in self.per_column.items() if column_key(name) == key for v in vs
                )
            found = self._cache[column] = frozenset(self.global_values) | frozenset(extra)
        return found


_DEFAULT = Sentinels()


def parse_kpi_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of column names, trimming each (spaces inside are kept).

    ``"RSRP, RSRQ , DL bitrate"`` -> ``("RSRP", "RSRQ", "DL bitrate")``. ValueError on an empty
    list, an empty name, or a name given twice (compared with `column_key`).
    """
    names = tuple(part.strip() for part in text.split(","))
    if not text.strip():
        raise ValueError("the KPI list is empty")
    if any(not name for name in names):
        raise ValueError(f"the KPI list {text!r} has an empty name")
    seen: dict[str, str] = {}
    for name in names:
        key = column_key(name)
        if key in seen:
            raise ValueError(f"the KPI list names {seen[key]!r} and {name!r}: the same column")
        seen[key] = name
    return names


def parse_sentinels(text: str, *, include_defaults: bool = True) -> Sentinels:
    """Parse ``"2147483647,RSRP=-200"``: bare numbers apply to every column, ``COL=value`` to one.

    The `DEFAULT_SENTINELS` are kept unless `include_defaults` is False. ValueError on a value
    that is not a number or an empty column name.
    """
    global_values: list[float] = list(DEFAULT_SENTINELS) if include_defaults else []
    per_column: dict[str, tuple[float, ...]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        column, sep, value_text = part.rpartition("=")
        value = _sentinel_number(value_text.strip(), part)
        if not sep:
            if value not in global_values:
                global_values.append(value)
            continue
        column = column.strip()
        if not column:
            raise ValueError(f"sentinel {part!r} has an empty column name")
        per_column[column] = (*per_column.get(column, ()), value)
    return Sentinels(tuple(global_values), per_column)


def _sentinel_number(text: str, part: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"sentinel {part!r}: {text!r} is not a number")
    return float(text)


def parse_value(
    text: str | float | int | None, column: str = "", sentinels: Sentinels | None = None
) -> tuple[float, str]:
    """One cell -> (value or NaN, status in `STATUSES`).

    `text` is a CSV cell or a JSON value (number, string or null); a JSON boolean is invalid.
    `sentinels` defaults to `DEFAULT_SENTINELS` for every column.
    """
    if text is None:
        return math.nan, MISSING
    if isinstance(text, bool):
        return math.nan, INVALID
    if isinstance(text, int | float):
        try:
            value = float(text)
        except OverflowError:  # a JSON integer beyond the float range, e.g. 10**400
            return math.nan, INVALID
        if math.isnan(value):
            return math.nan, MISSING
    else:
        stripped = text.strip()
        if stripped.lower() in _MISSING_LOWER:
            return math.nan, MISSING
        if not _NUMBER.fullmatch(stripped):
            return math.nan, INVALID
        value = float(stripped)
    if not abs(value) <= LARGEST_VALUE:  # also NaN-safe for inf
        return math.nan, INVALID
    if value in (sentinels or _DEFAULT).for_column(column):
        return math.nan, SENTINEL
    return value, OK


def match_columns(header: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Index in `header` of each `wanted` column: an exact match, else one under `column_key`.

    DataError naming the wanted column and listing the available ones when it is absent or
    when several columns match it.
    """
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        exact.setdefault(name, []).append(i)
        loose.setdefault(column_key(name), []).append(i)
    indices = []
    for name in wanted:
        found = exact.get(name) or loose.get(column_key(name), [])
        if len(found) != 1:
            problem = "is not among the columns"
            if found:
                problem = (
                    "matches several columns (" + ", ".join(repr(header[i]) for i in found) + ")"
                )
            raise DataError(f"column {name!r} {problem}; {_listing(header)}")
        indices.append(found[0])
    return indices


def _listing(header: Sequence[str]) -> str:
    return "available: " + (", ".join(repr(name) for name in header) or "(none)")
