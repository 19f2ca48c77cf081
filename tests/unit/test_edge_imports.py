"""The edge never imports torch or pandas, not even through a dependency.

Each check runs in a fresh interpreter: in this test process other tests may already have
imported torch, which would hide an edge import of it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas")
KNOWN_EDGE_MODULES = {"agent", "settings", "encoder", "publisher", "replay", "source", "statedir"}

# Imports every module of sparsetel.edge (found by pkgutil, so new ones are covered too) and
# any extra modules given, then reports which edge modules it found and what heavy packages
# ended up in sys.modules.
PROBE = f"""
import importlib, json, pkgutil, sys
import sparsetel.edge
found = sorted(m.name for m in pkgutil.iter_modules(sparsetel.edge.__path__))
for name in found:
    importlib.import_module("sparsetel.edge." + name)
for name in sys.argv[1:]:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {set(HEAVY)})
print(json.dumps({{"found": found, "heavy": heavy}}))
"""


def _probe(*extra: str) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_every_edge_module_imports_without_torch_or_pandas() -> None:
    report = _probe()
    assert set(report["found"]) >= KNOWN_EDGE_MODULES
    assert report["heavy"] == []


@pytest.mark.parametrize("heavy", HEAVY)
def test_the_probe_notices_a_heavy_import(heavy: str) -> None:
    pytest.importorskip(heavy)
    assert heavy in _probe(heavy)["heavy"]
