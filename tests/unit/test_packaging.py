"""The package as it ships: a wheel built from the tree holds every module of edge/, cloud/
and shared/ as a file under sparsetel/ (sparsetel/'s links are followed, none is copied as a
link), and nothing else from the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import PACKAGE_FOLDERS, REPO, copy_checkout, package_files


def test_the_wheel_holds_every_module_as_a_file(tmp_path: Path) -> None:
    # a copy, so the build leaves no build/ folder in the checkout
    tree = copy_checkout(tmp_path / "tree", (*PACKAGE_FOLDERS, "pyproject.toml", "README.md"))
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
    in_checkout = [p.relative_to(REPO).as_posix() for p in package_files()]
    expected = {p if p.startswith("sparsetel/") else f"sparsetel/{p}" for p in in_checkout}
    assert len(expected) > 100
    assert shipped == expected
