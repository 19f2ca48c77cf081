#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make sure .venv exists and holds sparsetel[dev] as pinned.
# Re-installs when pyproject.toml or setup.py changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "sparsetel: creating $venv" >&2
    "$python" -m venv "$venv"
fi
stamp="$venv/.sparsetel-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ]; then
    echo "sparsetel: installing sparsetel[dev] into $venv (first run takes a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$root[dev]" >&2
    touch "$stamp"
fi
# The temporal codec's compiled modules (setup.py) are rebuilt once their sources change.
stale='import sys; from sparsetel.shared import native
sys.exit("source (stale build)" in native.status().values())'
if ! "$venv/bin/python" -c "$stale" 2>/dev/null; then
    echo "sparsetel: compiling the temporal codec again (its sources changed)" >&2
    "$venv/bin/python" -m pip install --quiet --no-deps -e "$root" >&2
fi
export PATH="$venv/bin:$PATH"
