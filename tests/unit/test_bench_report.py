"""The benchmark report: seed aggregation, matched budgets, bits to 30 dB, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetel.cloud.bench.options import BenchOptions, BenchResult
from sparsetel.cloud.bench.report import (
    aggregate_rows,
    bits_for_snr,
    budget_table,
    r2_table,
    render_markdown,
    write_report,
)


def _row(method: str, bits: float, nmse: float, L: int | None = None, r2: float = 0.5) -> dict:
    return {
        "method": method,
        "setting": f"L={L}" if L is not None else f"{bits} bits",
        "L": L,
        "lossy": nmse > 0,
        "seeds": 3,
        "bits_per_measurement": bits,
        "nmse": nmse,
        "nmse_std": nmse / 10,
        "snr_db": None,
        "target_r2": r2,
        "target_r2_std": 0.01,
    }


# "aa" is best at small and mid budgets, "bb" at 24 and 64 bits; "cc" never reaches 30 dB;
# aa's 40-bit setting is beaten by its cheaper 32-bit one (off the lower envelope).
ROWS = [
    _row("aa", 8, 0.1),
    _row("aa", 16, 0.01),
    _row("aa", 32, 0.001),
    _row("aa", 40, 0.05),
    _row("bb", 12, 0.05),
    _row("bb", 24, 0.002),
    _row("bb", 64, 1e-5),
    _row("cc", 4, 0.3),
    _row("float32", 320, 0.0),
]


def test_budget_table_picks_the_best_lossy_family_per_budget() -> None:
    table = budget_table(ROWS)
    assert [t["budget"] for t in table] == [8, 16, 24, 32, 48, 64]
    assert [t["winner"] for t in table] == ["aa", "aa", "bb", "aa", "aa", "bb"]
    assert table[0]["best"] == {"aa": 0.1, "bb": None, "cc": 0.3}
    assert "float32" not in table[-1]["best"]  # lossless codecs are not on the curve


def test_bits_for_30_db_interpolates_along_the_lower_envelope() -> None:
    by = {f: [r for r in ROWS if r["method"] == f] for f in ("aa", "bb", "cc")}
    assert bits_for_snr(by["aa"]) == pytest.approx(32.0)
    share = (-3 - (-2.69897)) / (-5 - (-2.69897))
    assert bits_for_snr(by["bb"]) == pytest.approx(24 + share * 40, rel=1e-4)
    assert bits_for_snr(by["cc"]) is None


def test_aggregate_rows_gives_mean_and_sample_std_over_seeds() -> None:
    records = [
        {"method": "m", "setting": "s", "L": 2, "lossy": True, "seed": s, "nmse": v, "bits": 8}
        for s, v in ((0, 0.1), (1, 0.2), (2, 0.3))
    ]
    records.append(
        {
            "method": "lossless",
            "setting": "-",
            "L": None,
            "lossy": False,
            "seed": 0,
            "nmse": 0.0,
            "snr_db": float("inf"),
            "bits": 320,
        }
    )
    rows = aggregate_rows(records)
    assert rows[0]["nmse"] == pytest.approx(0.2) and rows[0]["nmse_std"] == pytest.approx(0.1)
    assert rows[0]["seeds"] == 3 and rows[0]["bits_std"] == 0.0 and rows[0]["L"] == 2
    assert "seed" not in rows[0] and rows[1]["snr_db"] is None and rows[1]["seeds"] == 1


def test_r2_table_compares_at_sdlgm_L4_bits() -> None:
    rows = [
        _row("sdlgm", 20, 0.01, L=4, r2=0.8),
        _row("sdlgm", 10, 0.05, L=2, r2=0.7),
        _row("omp", 30, 0.02, L=4, r2=0.6),
        _row("pca", 16, 0.05, r2=0.5),
        _row("pca", 24, 0.01, r2=0.9),
    ]
    ref_L, ref_bits, entries = r2_table(rows)
    assert (ref_L, ref_bits) == (4, 20)
    got = {e["method"]: (e["setting"], e["target_r2"]) for e in entries}
    assert got == {"sdlgm": ("L=4", 0.8), "omp": ("L=4", 0.6), "pca": ("16 bits", 0.5)}


def test_r2_table_without_L_families_takes_each_familys_best() -> None:
    ref_L, ref_bits, entries = r2_table(
        [_row("pca", 16, 0.05, r2=0.5), _row("pca", 24, 0.01, r2=0.9)]
    )
    assert ref_L is None and ref_bits is None
    assert [(e["method"], e["target_r2"]) for e in entries] == [("pca", 0.9)]


def _result(tmp_path: Path) -> BenchResult:
    options = BenchOptions(data=tmp_path, kpis=("rsrp (dBm)", "Thrpt DL"), target="Thrpt DL")
    rows = [{**r, "wire_bytes_per_measurement": r["bits_per_measurement"] / 8 + 1} for r in ROWS]
    rows.append(_row("sdlgm", 14, 0.004, L=4, r2=0.7))
    refs = {
        "raw_target_r2": 0.8,
        "raw_target_r2_std": 0.01,
        "persistence_target_r2": 0.4,
        "json_bytes_per_measurement": 120.0,
        "json_wire_bytes_per_measurement": 150.0,
    }
    records = [{"method": "aa", "setting": "x", "seed": 0, "snr_db": float("inf")}]
    timing = {"total_seconds": 12.5, "test_rows": 1000}
    return BenchResult(options, rows, records, refs, timing, {"test": ["a.csv"]}, ["learned"])


def test_markdown_has_the_tables_and_the_winner(tmp_path: Path) -> None:
    text = render_markdown(_result(tmp_path))
    for heading in ("## Every setting", "## Matched budgets", "Target R² at L=4", "30 dB"):
        assert heading in text
    assert "| 24 | 0.01 | 0.002 | 0.3 | 0.004 | bb |" in text
    assert "JSON per measurement (reference)" in text and "not reached" in text
    assert "Not run (module absent): learned." in text


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    paths = write_report(_result(tmp_path), tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"results.json", "results.md", "rd.png", "r2_vs_L.png", "r2_vs_bits.png"}
    for path in paths:
        assert path.stat().st_size > 0
    text = (tmp_path / "out" / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    doc = json.loads(text)
    assert doc["timing"]["total_seconds"] == 12.5 and doc["options"]["Ls"] == [1, 2, 4, 8]
    assert len(doc["rows"]) == len(ROWS) + 1 and doc["references"]["raw_target_r2"] == 0.8
    assert (tmp_path / "out" / "rd.png").read_bytes()[:4] == b"\x89PNG"
