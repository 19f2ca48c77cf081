"""The temporal codec compiled with mypyc (`sparsetel.shared.native`, setup.py): it codes the
same bytes as its sources run as Python, a stale build runs from source, and CI tests the
compiled one."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsetel.cloud.codec.payloaddecoder import decode_payload
from sparsetel.shared import native
from sparsetel.shared.temporalpayload import encode_payload
from tests.codeccases import coded_digests, random_codec_case

ROOT = Path(__file__).resolve().parents[2]


def test_the_codec_codes_the_same_bytes_compiled_and_from_source() -> None:
    script = (
        "import json; from sparsetel.shared import native; from tests.codeccases import "
        "coded_digests; print(json.dumps([native.status(), coded_digests(range(40))]))"
    )
    env = {**os.environ, "SPARSETEL_PURE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    status, expected = json.loads(out.stdout)
    assert set(status.values()) <= {"source", "source (SPARSETEL_PURE)"}, status
    assert coded_digests(range(40)) == expected


def test_what_the_compiled_encoder_codes_the_cloud_decodes() -> None:
    for seed in range(10):
        codec, x, keys = random_codec_case(seed)
        payload, edge = encode_payload(codec, x, keys, None)
        cloud = decode_payload(codec, payload, keys, None)
        assert cloud.codes == edge.codes and cloud.state == edge.state
        assert np.array_equal(cloud.recon, edge.recon, equal_nan=True)


def test_ci_runs_the_compiled_codec() -> None:
    status = native.status()
    if os.environ.get("CI") != "true" and set(status.values()) != {"compiled"}:
        pytest.skip(f"the temporal codec is not compiled here ({status}); CI requires it")
    assert set(status.values()) == {"compiled"}, status


SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _built(folder: Path, names: tuple[str, ...], manifest: dict[str, str] | None) -> None:
    for name in names:
        (folder / f"{name}.py").write_text(f"X = {name!r}\n")
        (folder / f"{name}{SUFFIX}").write_bytes(b"")
    if manifest is not None:
        lines = [f"{name} {digest}" for name, digest in manifest.items()]
        (folder / native.MANIFEST).write_text("\n".join(lines) + "\n")


def test_a_build_whose_sources_match_its_manifest_is_current(tmp_path: Path) -> None:
    _built(tmp_path, ("a", "b"), None)
    digests = {name: native.source_digest(tmp_path / f"{name}.py") for name in ("a", "b")}
    _built(tmp_path, ("a", "b"), digests)
    assert native.stale(tmp_path, ("a", "b", "never_built")) == {}


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (None, "no native_sources.txt beside it"),
        ({"b": "0" * 64}, "native_sources.txt does not name it"),
        ({"a": "0" * 64}, "its source changed since it was built"),
    ],
)
def test_a_stale_build_is_named_with_why(
    tmp_path: Path, manifest: dict[str, str] | None, why: str
) -> None:
    _built(tmp_path, ("a",), manifest)
    assert native.stale(tmp_path, ("a",)) == {"a": why}


@pytest.mark.parametrize("pure", [False, True])
def test_a_stale_build_runs_from_source_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    """A package whose "compiled" modules are empty files: importing one would fail, so the
    check must run both from source, the second importing the first."""
    folder = tmp_path / "stalepkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    _built(folder, ("a",), None)
    (folder / "b.py").write_text("from .a import X\nY = X + '!'\n")
    (folder / f"b{SUFFIX}").write_bytes(b"")
    digests = {name: native.source_digest(folder / f"{name}.py") for name in ("a", "b")}
    _built(folder, (), {**digests, "a": "0" * 64} if not pure else digests)
    monkeypatch.setenv("SPARSETEL_PURE", "1" if pure else "")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        status = native.check("stalepkg", folder, ("a", "b"))
        assert sys.modules["stalepkg.b"].Y == "a!"
    finally:
        for name in ("stalepkg", "stalepkg.a", "stalepkg.b"):
            sys.modules.pop(name, None)
    why = "source (SPARSETEL_PURE)" if pure else "source (stale build)"
    assert status == {"a": why, "b": why}
