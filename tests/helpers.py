"""Helpers shared by tests (import them; never import one test module from another).

Beside this module, by concern: tests/frames.py (the fake model and the DATA frames fed to
the decoder), tests/stores.py (store rows, a filled fleet, checks run on SQLite and on
PostgreSQL), tests/mqttclients.py (MQTT clients on a real broker), tests/agents.py (the edge
agent's config, input and process), tests/processes.py (child processes, always cleaned up),
tests/tinymodel.py, tests/quickrun.py, tests/mosquitto.py and tests/codeccases.py (random
temporal codecs and what they code). Fixtures live in conftest.py
files: tests/conftest.py (the services), tests/integration/conftest.py.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparsetel.cloud.ingest.limits import IngestLimits
from sparsetel.cloud.store.schema import MIGRATIONS
from sparsetel.shared.temporalcodec import TemporalCodec, uniform_tables

REPO = Path(__file__).resolve().parents[1]
# The package's folders in the checkout: sparsetel/ (the command line, and links to the others).
PACKAGE_FOLDERS = ("sparsetel", "edge", "cloud", "shared")

# For tests whose frames carry fixed synthetic times (1970, November 2023) rather than times
# near their arrival: the default window (8 days back, 1 day ahead) would refuse them.
ANY_TIME = IngestLimits(
    frame_max_age_s=100 * 365 * 86_400.0, frame_max_ahead_s=100 * 365 * 86_400.0
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check` every 50 ms until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def store_a_frame_before_digests(
    url: str | Path, key: tuple[str, int], model_ref: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store frame (edge, bd_seq, 0) in the database at `url` as the code before schema
    version 7 did (no digest column yet), then put every migration back."""
    import sparsetel.cloud.store.database as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:6])
    with store_module.open_store(url) as old:
        old._execute(
            "INSERT INTO frames (edge, bd_seq, seq, model_ref, n_records, n_bytes, historical, "
            "received_ms) VALUES (?, ?, 0, ?, 2, 42, ?, 1)",
            (*key, model_ref.hex(), False),
        )
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition `text` as {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def package_files() -> list[Path]:
    """Every module file of the package where it lies in the checkout: sparsetel/*.py and all
    of edge/, cloud/ and shared/ (sparsetel/'s links to those three are not followed)."""
    files = sorted((REPO / "sparsetel").glob("*.py"))
    for folder in PACKAGE_FOLDERS[1:]:
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def copy_checkout(dest: Path, names: Iterable[str] = PACKAGE_FOLDERS) -> Path:
    """The checkout's `names` (folders or files) copied into `dest`, links kept as links and no
    __pycache__: a tree a test may change or build in, leaving the checkout alone."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REPO / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, dest / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, dest / name)
    return dest


def small_temporal_codec(
    unit: float = 0.1,
    kpis: tuple[str, ...] = ("a", "b", "c"),
    L: int = 3,
    groups: tuple[tuple[int, ...], ...] = ((0, 1), (2,)),
    lossless: bool = False,
) -> TemporalCodec:
    """A hand-made temporal codec of three KPIs: units (unit, 0.25, 0.5), one step each, KPIs
    0 and 1 grouped; four key words; uniform tables."""
    D = len(kpis)
    keys = np.array([[0, 0, 0], [10, 4, 2], [-10, -4, -2], [5, -4, 0]])[:, :D]
    return TemporalCodec(
        kpis=kpis, L=L, clip=6.0, span=6.0, sigma2=1e-3,
        mean=np.zeros(D), std=np.ones(D), log=np.zeros(D, dtype=bool),
        unit=np.array([unit, 0.25, 0.5])[:D], origin=np.zeros(D), weight=np.ones(D),
        steps=np.ones(D, dtype=np.int64), groups=groups, keys=keys, lossless=lossless,
        **uniform_tables(D, groups, len(keys)),
    )  # fmt: skip
