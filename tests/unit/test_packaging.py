"""The package as it ships: a wheel built from the tree holds every module of edge/, cloud/
and shared/ as a file under sparsetel/ (sparsetel/'s links are followed, none is copied as a
link), and nothing else from the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("sparsetel", "edge", "cloud", "shared", "pyproject.toml", "README.md")


def test_the_wheel_holds_every_module_as_a_file(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in SOURCES:  # a copy, so the build leaves no build/ folder in the checkout
        src = ROOT / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, tree / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, tree / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(tree)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("sparsetel-*.whl")
    with zipfile.ZipFile(wheel) as z:
        infos = [i for i in z.infolist() if not i.filename.startswith("sparsetel-")]
    links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    assert links == []
    shipped = {i.filename for i in infos}
    expected = {
        f"sparsetel/{p.relative_to(ROOT).as_posix()}"
        for d in ("edge", "cloud", "shared")
        for p in (ROOT / d).rglob("*.py")
    } | {f"sparsetel/{p.name}" for p in (ROOT / "sparsetel").glob("*.py")}
    assert len(expected) > 100
    assert shipped == expected
