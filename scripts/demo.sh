#!/usr/bin/env bash
# The whole pipeline on one machine: simulate KPIs, train, export, broker, two edges, cloud, report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$root"
exec sparsetel demo "$@"
