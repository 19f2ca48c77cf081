"""Builds sparsetel (pyproject.toml holds the metadata) and compiles the temporal codec's
modules with mypyc: see `sparsetel.shared.native`.

The compiled modules are optional extensions: without a C compiler (or with
``SPARSETEL_PURE=1`` when building) the build leaves them out and the sources run. After the
build, the sha256 of each compiled source goes into the manifest beside them, so a module
whose source changes later runs from source until the next build instead of running stale.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = runpy.run_path(str(ROOT / "shared" / "native.py"))
SOURCES = [f"sparsetel/shared/{name}.py" for name in NATIVE["COMPILED"]]


def _extensions() -> list[Extension]:
    if NATIVE["pure_requested"]():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # building without the build requirements: the sources run
        return []
    extensions: list[Extension] = mypycify(SOURCES, opt_level="3", group_name="sparsetel_codec")
    for extension in extensions:
        extension.optional = True
    return extensions


class BuildExt(build_ext):
    """build_ext that writes the manifest of what it compiled beside the modules."""

    def run(self) -> None:
        super().run()
        built = {
            name: Path(self.get_ext_fullpath(f"sparsetel.shared.{name}"))
            for name in NATIVE["COMPILED"]
        }
        built = {name: path for name, path in built.items() if path.is_file()}
        if not built:
            return
        folder = next(iter(built.values())).parent
        digest = NATIVE["source_digest"]
        lines = [f"{name} {digest(ROOT / 'shared' / f'{name}.py')}" for name in built]
        (folder / NATIVE["MANIFEST"]).write_text("\n".join(lines) + "\n", encoding="ascii")


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
