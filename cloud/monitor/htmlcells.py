"""HTML table pieces of the monitor's page: every cell carries its key and raw value
(``data-key``, ``data-value``) beside the text it shows, for tools and tests to read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["num", "table", "td"]


def num(value: Any, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{unit}"


def table(table_id: str, head: Sequence[str], rows: Sequence[str], texts: int = 1) -> str:
    cells = "".join(
        f"<th class='{'text' if i < texts else ''}'>{escape(h)}</th>" for i, h in enumerate(head)
    )
    body = "".join(rows)
    return f"<table id='{table_id}'><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def td(key: str, value: Any, shown: str, css: str = "") -> str:
    raw = "" if value is None else escape(str(value), quote=True)
    return f"<td data-key='{key}' data-value='{raw}' class='{css}'>{escape(shown)}</td>"


# -- fleet ----------------------------------------------------------------------------------
