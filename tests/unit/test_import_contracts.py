"""The import contracts of pyproject.toml ([tool.importlinter]): kept by the tree, broken by a
wrong-way import, and checked over every import arrow of the package.

`lint-imports` reads the package through sparsetel/'s links to edge/, cloud/ and shared/; the
last test counts the arrows itself from the source files, so a layout that hid some of them
from the tool (as the old package-dir mapping did) fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from tests.helpers import REPO as ROOT
from tests.helpers import copy_checkout, package_files


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept, 0 broken" in result.stdout


def test_a_wrong_way_import_breaks_a_contract(tmp_path: Path) -> None:
    tree = copy_checkout(tmp_path / "tree")
    reads = tree / "cloud" / "store" / "reads.py"
    reads.write_text(reads.read_text() + "\nfrom ..ingest import handler  # the wrong way\n")
    result = _lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sparsetel.cloud.store.reads -> sparsetel.cloud.ingest.handler" in result.stdout


def _module_name(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a file of the package, from its place in the tree."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    if parts[0] != "sparsetel":
        parts.insert(0, "sparsetel")
    return ".".join(parts), is_package


def _arrows_in_source() -> set[tuple[str, str]]:
    """Every (importer, imported) pair between the package's modules, read from the files."""
    files = package_files()
    modules = {_module_name(p)[0] for p in files}
    arrows = set()
    for path in files:
        name, is_package = _module_name(path)
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            arrows |= {(name, t) for t in targets if t in modules and t != name}
    return arrows


def test_the_tool_sees_every_import_arrow_of_the_source() -> None:
    graph = grimp.build_graph("sparsetel", cache_dir=None)
    seen = {(m, t) for m in graph.modules for t in graph.find_modules_directly_imported_by(m)}
    expected = _arrows_in_source()
    assert len(expected) > 250  # the package's import arrows, cloud's folders and all
    assert seen == expected
