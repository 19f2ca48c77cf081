"""Fixtures shared by the suite: real services and the real data set, skipped only off CI.

Under CI=true a missing broker, database or data folder fails the test instead of skipping
it, so a green CI run always means the integration tests really ran.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
UCCMISL = REPO.parent / "shared" / "data" / "uccmisl-5g"
UCCMISL_KPIS = "RSRP,RSRQ,SNR,CQI,RSSI,NRxRSRP,NRxRSRQ,DL_bitrate,UL_bitrate,Speed"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip on a user's checkout; fail under CI, where every test must really run."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: integration tests must not skip)")
    pytest.skip(reason)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The real MQTT broker: SPARSETEL_TEST_BROKER or mqtt://127.0.0.1:1883."""
    url = os.environ.get("SPARSETEL_TEST_BROKER", "mqtt://127.0.0.1:1883")
    parts = urlparse(url)
    if not _answers(parts.hostname or "127.0.0.1", parts.port or 1883):
        skip_or_fail(
            f"no MQTT broker answers at {url} (start mosquitto or set SPARSETEL_TEST_BROKER)"
        )
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real PostgreSQL server: SPARSETEL_TEST_POSTGRES or the local `test` database."""
    url = os.environ.get("SPARSETEL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    parts = urlparse(url)
    if not _answers(parts.hostname or "127.0.0.1", parts.port or 5432):
        skip_or_fail(f"no PostgreSQL answers at {url} (start it or set SPARSETEL_TEST_POSTGRES)")
    return url


@pytest.fixture(scope="session")
def uccmisl_dir() -> Path:
    """The real 5G KPI traces beside the repository (../shared/data/uccmisl-5g)."""
    if not UCCMISL.is_dir():
        skip_or_fail(f"real data not found at {UCCMISL} (a user's checkout does not have it)")
    return UCCMISL


@pytest.fixture
def group() -> str:
    """A fleet group unique to one test, so tests on a shared broker never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"
