"""What importing a part of sparsetel loads: the edge, shared, the ingest service, the store
and the monitor never load torch or pandas when imported, not even through a dependency.

Each check runs in a fresh interpreter: in this test process other tests may already have
imported torch, which would hide an import of it. The import contracts in pyproject.toml say
the same of the import graph (test_import_contracts.py); this is the check at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas")
# Each package, and modules it must have: a probe that found none of them looked elsewhere.
LIGHT_PACKAGES = {
    "sparsetel.edge": {"agent", "settings", "encoder", "publisher", "replay", "source", "statedir"},
    "sparsetel.shared": {"wire", "topics", "rundir"},
    "sparsetel.cloud.ingest": {"service", "handler"},
    "sparsetel.cloud.store": {"database", "reads"},
    "sparsetel.cloud.monitor": {"dashboard", "server"},
}

# Imports every module of the package given first (found by pkgutil, so new ones are covered
# too) and any extra modules given, then reports which modules it found and what heavy
# packages ended up in sys.modules.
PROBE = f"""
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
found = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
for name in found:
    importlib.import_module(sys.argv[1] + "." + name)
for name in sys.argv[2:]:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {set(HEAVY)})
print(json.dumps({{"found": found, "heavy": heavy}}))
"""


def _probe(package: str, *extra: str) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, package, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_every_module_imports_without_torch_or_pandas(package: str) -> None:
    report = _probe(package)
    assert set(report["found"]) >= LIGHT_PACKAGES[package]
    assert report["heavy"] == []


@pytest.mark.parametrize("heavy", HEAVY)
def test_the_probe_notices_a_heavy_import(heavy: str) -> None:
    pytest.importorskip(heavy)
    assert heavy in _probe("sparsetel.edge", heavy)["heavy"]
