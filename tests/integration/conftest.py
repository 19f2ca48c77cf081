"""Fixtures of the integration tests: the real broker and database set up for one test, the
tiny model and signing keys a deployment needs, and a Mosquitto of the test's own.

The services themselves (`broker_url`, `postgres_url`) and the test's `group` come from
tests/conftest.py, which skips, or fails under CI=true, when a service is missing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetel.cloud.fleet.keys import keygen
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import state_topic
from tests.agents import EDGE
from tests.conftest import in_ci
from tests.mosquitto import OwnBroker
from tests.mqttclients import Publisher, clear_retained
from tests.tinymodel import write_tiny_model


@pytest.fixture
def broker(broker_url: str, group: str) -> Iterator[BrokerConfig]:
    """The suite's real broker. An agent `EDGE` of the test's `group` leaves its last STATE
    retained there: it is cleared after the test."""
    config = BrokerConfig(url=broker_url)
    yield config
    clear_retained(config, [state_topic(group, EDGE)])


@pytest.fixture
def retained(broker: BrokerConfig) -> Iterator[list[str]]:
    """Topics the test leaves retained messages on (bundles, births), cleared afterwards."""
    topics: list[str] = []
    yield topics
    clear_retained(broker, topics)


@pytest.fixture
def publisher(broker_url: str) -> Iterator[Publisher]:
    pub = Publisher(broker_url)
    yield pub
    pub.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A Mosquitto of the test's own (tests/mosquitto.py), started; to stop and start."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed; the test script installs it")
    b = OwnBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """The tiny model (tests/tinymodel.py) in `tmp_path/run`; agents keep their state beside."""
    return write_tiny_model(tmp_path / "run")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A signing key pair in `tmp_path/keys`: (private, public)."""
    return keygen(tmp_path / "keys")


def _working_url(url: str) -> str:
    """`url`, or the same server as user root when the postgres role is missing."""
    psycopg = pytest.importorskip("psycopg")
    candidates = [url]
    if "SPARSETEL_TEST_POSTGRES" not in os.environ and "://postgres@" in url:
        candidates.append(url.replace("://postgres@", "://root@"))
    errors = []
    for candidate in candidates:
        try:
            psycopg.connect(candidate, connect_timeout=3).close()
            return candidate
        except psycopg.Error as exc:
            errors.append(f"{candidate}: {str(exc).strip()}")
    reason = "cannot log in to PostgreSQL (" + "; ".join(errors) + ")"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections work in a fresh schema of their own, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    base = _working_url(postgres_url)
    schema = f"sparsetel_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
