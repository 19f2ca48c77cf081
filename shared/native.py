"""The temporal codec's modules, compiled with mypyc where the build could, and the check that
keeps a stale compiled module from running.

The edge's closed loop (`temporalpayload.encode_payload` and what it calls) is plain Python
that mypyc compiles to C unchanged: `setup.py` builds `COMPILED` as extension modules beside
their sources, so ``import sparsetel.shared.temporalpayload`` finds the compiled one first
(about twice as fast; the payload bytes are the same, which the tests check against the
sources run as Python). Where no C compiler was at hand the build leaves them out and the
sources run.

After a successful build, `setup.py` writes `MANIFEST` (the sha256 of each source it
compiled) beside them. `check` runs when `sparsetel.shared` is imported, before any of these
modules: a compiled module whose source has changed since it was built (an edited checkout,
a half-finished build) is stale, and so is every compiled module when the manifest is
missing. When one is stale they all run from their sources instead (compiled as one group,
each expects the others' compiled classes), with a warning saying why; so they do when the
environment sets ``SPARSETEL_PURE=1``. `status` says which is which.

Standard library only: `setup.py` reads `COMPILED` and `MANIFEST` from this file before
anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path

__all__ = ["COMPILED", "MANIFEST", "check", "pure_requested", "source_digest", "stale", "status"]

log = logging.getLogger(__name__)

# compiled in this order's dependency sense: each may import those before it
COMPILED = ("rangecoder", "temporaltables", "temporalcodec", "temporalpayload")
MANIFEST = "native_sources.txt"  # "<module> <sha256 of its source>" per line

_status: dict[str, str] = {}


def pure_requested() -> bool:
    """Whether the environment asks for the sources to run (and be built): ``SPARSETEL_PURE``
    set, and not to 0."""
    return os.environ.get("SPARSETEL_PURE", "") not in ("", "0")


def source_digest(path: Path) -> str:
    """The sha256 of a source file, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compiled_file(folder: Path, name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        found = folder / (name + suffix)
        if found.is_file():
            return found
    return None


def _manifest(folder: Path) -> dict[str, str] | None:
    try:
        text = (folder / MANIFEST).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    digests = {}
    for line in text.splitlines():
        name, _, digest = line.partition(" ")
        digests[name] = digest.strip()
    return digests


def stale(folder: Path, names: tuple[str, ...] = COMPILED) -> dict[str, str]:
    """Of `names`, those compiled in `folder` that must not run, each with why: its source
    changed since the build, or the build's manifest is missing or does not name it."""
    manifest = _manifest(folder)
    found = {}
    for name in names:
        if _compiled_file(folder, name) is None:
            continue
        if manifest is None:
            found[name] = f"no {MANIFEST} beside it"
        elif name not in manifest:
            found[name] = f"{MANIFEST} does not name it"
        elif manifest[name] != source_digest(folder / f"{name}.py"):
            found[name] = "its source changed since it was built"
    return found


def _run_source(package: str, folder: Path, name: str) -> None:
    """Import `package.name` from its .py source, ahead of the compiled module."""
    spec = importlib.util.spec_from_loader(
        f"{package}.{name}",
        importlib.machinery.SourceFileLoader(f"{package}.{name}", str(folder / f"{name}.py")),
    )
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        assert spec.loader is not None
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise


def check(package: str, folder: Path, names: tuple[str, ...] = COMPILED) -> dict[str, str]:
    """Before any of `COMPILED` is imported: run all of them from source when one is stale
    (they were compiled as one group, each expecting the others' compiled classes) or with
    ``SPARSETEL_PURE=1``. Returns what runs (see `status`), which `status` reports for
    this package."""
    pure = pure_requested()
    bad = stale(folder, names)
    if bad:
        log.warning(
            "sparsetel: running %s from source, not compiled: %s (reinstall to rebuild)",
            ", ".join(names),
            "; ".join(f"{name}: {why}" for name, why in bad.items()),
        )
    found = {}
    for name in names:  # in order, so a module run from source imports the ones before it
        if _compiled_file(folder, name) is None:
            found[name] = "source"
        elif pure or bad:  # one group: compiled code expects its siblings compiled too
            _run_source(package, folder, name)
            found[name] = "source (SPARSETEL_PURE)" if pure else "source (stale build)"
        else:
            found[name] = "compiled"
    if package == __package__:
        _status.update(found)
    return found


def status() -> dict[str, str]:
    """Per module of `COMPILED`: ``compiled``, ``source`` (none was built), ``source (stale
    build)`` or ``source (SPARSETEL_PURE)``."""
    return dict(_status)
