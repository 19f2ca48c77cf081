#!/usr/bin/env bash
# mypy --strict on sparsetel.shared and sparsetel.edge, with `sparsetel.*` imports really checked.
#
# The editable install maps the folders shared/ and edge/ onto sparsetel.shared and
# sparsetel.edge with an import hook that mypy cannot follow, so `mypy shared edge` saw every
# `from sparsetel...` import as Any. Here mypy reads the package from a throwaway tree of
# symlinks laid out as it is installed (sparsetel/{__init__.py, shared, edge}), and the paths in
# its messages are mapped back to the repository's files.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
cd "$root"

tree="$(mktemp -d "${TMPDIR:-/tmp}/sparsetel-mypy.XXXXXX")"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/sparsetel"
ln -s "$root/sparsetel/__init__.py" "$tree/sparsetel/__init__.py"
ln -s "$root/shared" "$tree/sparsetel/shared"
ln -s "$root/edge" "$tree/sparsetel/edge"

# Run from inside the tree, so the repository's own sparsetel/ folder (the CLI only, without
# shared/ and edge/) is not on mypy's search path.
cd "$tree"
MYPYPATH="$tree" mypy --config-file "$root/pyproject.toml" --cache-dir "$root/.mypy_cache" \
    --strict -p sparsetel.shared -p sparsetel.edge \
    | sed -e "s|^sparsetel/shared/|shared/|" -e "s|^sparsetel/edge/|edge/|" \
        -e "s|^sparsetel/__init__.py|sparsetel/__init__.py|"
