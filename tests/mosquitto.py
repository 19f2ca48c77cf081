"""A Mosquitto of a test's own, on a free port, to stop, start and lock down at will.

The suite's shared broker (127.0.0.1:1883) must never be restarted; tests that take the broker
away, or need a configuration of their own (no anonymous clients, ACLs), start one of these.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port

__all__ = ["OwnBroker", "shipped_limits"]

START_TIMEOUT_S = 10.0
DEV_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "dev.conf"
_LIMITS = ("max_inflight_messages", "max_queued", "max_packet_size", "persistent_client_expiration")


def shipped_limits() -> str:
    """The queue and packet limits of the shipped deploy/mosquitto/dev.conf, as `extra` lines
    for an `OwnBroker` (its listener and persistence stay the test's own)."""
    lines = DEV_CONF.read_text().splitlines()
    return "".join(f"{line}\n" for line in lines if line.startswith(_LIMITS))


class OwnBroker:
    """Mosquitto on a free loopback port with persistence in `tmp`, its log in
    ``tmp/mosquitto.log``; `extra` lines are appended to its configuration. With `conf`, that
    configuration file is run as it is, and `port` must be the one it listens on.
    `persistence_location`: another folder for its database; `run_as`: the user Mosquitto
    drops to when started as root (default: the test's own user)."""

    def __init__(
        self,
        tmp: Path,
        extra: str = "",
        anonymous: bool = True,
        *,
        conf: Path | None = None,
        port: int | None = None,
        persistence_location: Path | None = None,
        run_as: str | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if conf is not None:  # a configuration made elsewhere, listening on `port`
            self.conf = conf
            return
        self.conf = tmp / "mosquitto.conf"
        # Persistence: a subscriber's session and its queued messages outlive a restart.
        # `user`: started as root, Mosquitto would drop to the "mosquitto" user, which cannot
        # write its database into the test's private directory: sessions would silently not
        # survive a restart.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            f"persistence true\npersistence_location {persistence_location or tmp}/\n"
            f"user {run_as or getpass.getuser()}\n{extra}"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port}: see {self.log}")

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its sessions and goes; the clients see it vanish."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=START_TIMEOUT_S)
            self.proc = None
