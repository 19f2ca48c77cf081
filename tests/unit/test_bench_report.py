"""The benchmark report: seed aggregation, matched budgets, BD-rates and bits at 20-40 dB,
R² at equal target fidelity, one section per framing, files written."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from sparsetel.cli import _build_parser
from sparsetel.cloud.bench.options import BenchOptions, BenchResult
from sparsetel.cloud.bench.report import (
    aggregate_rows,
    budget_table,
    command_line,
    fidelity_table,
    r2_table,
    rd_table,
    render_markdown,
    write_report,
)


def _row(
    method: str, bits: float, nmse: float, L: int | None = None, r2: float = 0.5, frame: int = 50
) -> dict:
    snr = -10 * math.log10(nmse) if nmse > 0 else None
    return {
        "method": method,
        "setting": f"L={L}" if L is not None else f"{bits} bits",
        "L": L,
        "lossy": nmse > 0,
        "frame": frame,
        "seeds": 3,
        "bits_per_measurement": bits,
        "nmse": nmse,
        "nmse_std": nmse / 10,
        "snr_db": snr,
        "target_snr_db": snr,
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
    assert table[0]["best"] == {"aa": 0.1, "bb": None, "cc": 0.3, "float32": None}
    assert table[-1]["best"]["float32"] is None  # 320 bits: over every budget


def test_a_lossless_codec_within_a_budget_beats_every_lossy_point_there() -> None:
    rows = [*ROWS, _row("exact", 30.0, 0.0), _row("exact2", 30.0, 0.0)]
    rows[-1]["bits_per_measurement"] = 31.0
    table = {t["budget"]: t for t in budget_table(rows)}
    assert table[24]["best"]["exact"] is None and table[24]["winner"] == "bb"
    assert table[32]["best"]["exact"] == 0.0 and table[32]["winner"] == "exact"  # fewer bits
    assert table[64]["winner"] == "exact"


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


# The grid-aware predictive coder (the BD-rate reference) and a codec needing half its bits.
REF_CURVE = [_row("grid-predictive-previous", b, 10 ** (-s / 10)) for b, s in
             ((10, 18), (14, 22), (20, 27), (28, 32), (40, 38), (56, 44))]  # fmt: skip
HALF = [{**r, "method": "half", "bits_per_measurement": r["bits_per_measurement"] / 2}
        for r in REF_CURVE]  # fmt: skip


def test_rd_table_gives_bd_rates_against_the_reference_and_bits_at_each_level() -> None:
    table = {e["method"]: e for e in rd_table([*ROWS, *REF_CURVE, *HALF])}
    assert table["half"]["bd_rate"] == pytest.approx(-50.0, abs=0.1)
    assert table["grid-predictive-previous"]["bd_rate"] is None  # against itself: nothing
    assert table["grid-predictive-previous"]["bits"][38.0 - 18.0] > 10.0
    assert table["half"]["bits"][20.0] == pytest.approx(
        table["grid-predictive-previous"]["bits"][20.0] / 2
    )
    assert table["aa"]["bd_rate"] is None  # 19, 20 and 30 dB: too few points in 20-40 dB
    assert table["cc"]["bits"][20.0] is None  # never reaches 20 dB
    assert not table["float32"]["lossy"] and table["float32"]["bits"][40.0] == 320


def test_fidelity_table_takes_each_family_s_cheapest_setting_reaching_the_target_snr() -> None:
    table = {e["method"]: e["at"] for e in fidelity_table(ROWS)}
    assert table["aa"][20.0]["bits_per_measurement"] == 16  # 20 dB at 16 bits
    assert table["aa"][30.0]["bits_per_measurement"] == 32
    assert table["aa"][40.0] is None
    assert table["bb"][40.0]["bits_per_measurement"] == 64
    assert table["float32"][40.0]["bits_per_measurement"] == 320  # lossless: every level


def _result(tmp_path: Path) -> BenchResult:
    options = BenchOptions(data=tmp_path, kpis=("rsrp (dBm)", "Thrpt DL"), target="Thrpt DL")
    rows = [{**r, "wire_bytes_per_measurement": r["bits_per_measurement"] / 8 + 1} for r in ROWS]
    rows.append(_row("sdlgm", 14, 0.004, L=4, r2=0.7))
    rows += [*REF_CURVE, *HALF]
    rows.append({**_row("aa", 30, 0.01), "frame": 1, "wire_bytes_per_measurement": 50.0})
    refs = {
        "raw_target_r2": 0.8,
        "raw_target_r2_std": 0.01,
        "persistence_target_r2": 0.4,
        "json_bytes_per_measurement": 120.0,
        "json_wire_bytes_per_measurement": 150.0,
        "agent_frame": 1,
    }
    records = [{"method": "aa", "setting": "x", "seed": 0, "snr_db": float("inf")}]
    timing = {"total_seconds": 12.5, "test_rows": 1000}
    return BenchResult(options, rows, records, refs, timing, {"test": ["a.csv"]}, ["learned"])


HEADINGS = (
    "### Every setting",
    "### Matched budgets",
    "### Rate at equal SNR",
    "### Target R² at equal target fidelity",
    "### Bytes on the wire",
)


def test_markdown_has_every_table_once_per_framing(tmp_path: Path) -> None:
    text = render_markdown(_result(tmp_path))
    frame50, frame1 = text.split("## Frames of 50")[1].split("## Frames of 1 (the edge agent")
    for part in (frame50, frame1):
        for heading in HEADINGS:
            assert heading in part
    budget_24 = next(line for line in frame50.splitlines() if line.startswith("| 24 |"))
    assert budget_24.startswith("| 24 | 0.01 | 0.002 | 0.3 |") and budget_24.endswith(
        "| — | half |"
    )
    assert "| half | -50.0 % |" in frame50 and "| float32 | lossless |" in frame50
    assert "| aa | 30 bits |" in frame1 and "| bb |" not in frame1
    assert "JSON per measurement (reference)" in text
    assert "Not run (module absent): learned." in text


def test_write_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    paths = write_report(_result(tmp_path), tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {
        "results.json", "results.md", "rd.png", "r2_vs_L.png", "r2_vs_bits.png", "rd_frame1.png"
    }  # fmt: skip
    for path in paths:
        assert path.stat().st_size > 0
    text = (tmp_path / "out" / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    doc = json.loads(text)
    assert doc["timing"]["total_seconds"] == 12.5 and doc["options"]["Ls"] == [1, 2, 4, 8]
    assert (
        len(doc["rows"]) == len(ROWS) + 2 + len(REF_CURVE) + len(HALF)
        and doc["references"]["raw_target_r2"] == 0.8
    )
    assert (tmp_path / "out" / "rd.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_s_command_line_runs_the_same_options(tmp_path: Path) -> None:
    options = BenchOptions(
        data=tmp_path, kpis=("rsrp (dBm)", "Thrpt DL"), target="Thrpt DL", Ls=(1, 4),
        seeds=(3,), framings=("50", "agent"), on="validation", target_weight=2.5,
        methods=("sdlgm", "grid-lossless"), quick=True,
    )  # fmt: skip
    line = command_line(options)
    argv = shlex.split(line.replace("\\\n", " "))[1:]  # without the program's name
    args = _build_parser().parse_args([*argv, "--out", str(tmp_path / "out")])
    assert BenchOptions.from_cli(args) == replace(options, out=tmp_path / "out")
