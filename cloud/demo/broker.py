"""A broker for demos and tests: amqtt in a background thread, plus a probe for any broker.

Production uses Mosquitto (deploy/mosquitto has per-device credentials, ACLs and TLS). The
embedded broker is for one machine: it allows anonymous clients, so it binds to a loopback
address only. It runs in a thread with its own asyncio loop, so synchronous code (the CLI,
paho clients, tests) can start and stop it like any object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import struct
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["EmbeddedBroker", "broker_answers", "run_broker", "start_embedded_broker"]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _connect_packet(client_id: str, keepalive: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials (spec 3.1)."""
    cid = client_id.encode("utf-8")
    variable = b"\x00\x04MQTT" + bytes([4, 0x02]) + struct.pack(">H", keepalive)
    payload = struct.pack(">H", len(cid)) + cid
    remaining = len(variable) + len(payload)
    assert remaining < 128  # one length byte is enough for this fixed packet
    return bytes([0x10, remaining]) + variable + payload


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def broker_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when an MQTT broker answers on host:port: a CONNACK comes back to a CONNECT.

    Any CONNACK counts, even one refusing the (anonymous) probe: something speaks MQTT there.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_connect_packet(f"sparsetel-probe-{os.urandom(4).hex()}"))
            connack = _recv_exactly(sock, 4)
            if len(connack) == 4 and connack[0] == 0x20 and connack[1] == 0x02:
                if connack[3] == 0:
                    sock.sendall(b"\xe0\x00")  # DISCONNECT, so no will or error is logged
                return True
            return False
    except OSError:
        return False


class EmbeddedBroker:
    """An amqtt broker serving on `host`:`port` from a background thread; `stop()` ends it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sparsetel-broker", daemon=True)

    @property
    def alive(self) -> bool:
        """True while the broker's thread serves."""
        return self._thread.is_alive()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            # Anonymous clients, and no $SYS publisher or packet logger: a quiet demo broker.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # start() reports a failure to start; later ones are logged
            self._error = exc
            if self._ready.is_set():
                log.error("embedded broker on %s failed: %s", self.url, exc)
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        from amqtt.broker import Broker  # the cloud extra; only the broker needs it

        self._stop = asyncio.Event()
        broker = Broker(self._config())
        await broker.start()
        try:
            self.port = _bound_port(broker, self.port)
            self._ready.set()
            await self._stop.wait()
        finally:
            await broker.shutdown()

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start serving; return once the broker answers a CONNECT (RuntimeError if not)."""
        transitions = logging.getLogger("transitions")  # amqtt's state machine: an INFO per packet
        if transitions.level == logging.NOTSET:
            transitions.setLevel(logging.WARNING)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"embedded broker did not start on {self.url}: {self._error}")
        deadline = time.monotonic() + timeout
        while not broker_answers(self.host, self.port, timeout=1.0):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded broker on {self.url} does not answer")
            time.sleep(0.05)
        log.info("embedded broker listening on %s", self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every client and close the listener; safe to call twice."""
        if self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: stopped
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bound_port(broker: Any, asked: int) -> int:
    """The port the listener really got (asked 0: the system picked one)."""
    if asked:
        return asked
    server = broker._servers["default"].instance  # amqtt 0.12 keeps its asyncio.Server here
    return int(server.sockets[0].getsockname()[1])


def start_embedded_broker(
    host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
) -> EmbeddedBroker:
    """Start an amqtt broker on a loopback `host` (`port` 0: a free one) and wait until it
    answers. It allows anonymous clients, keeps retained messages and speaks QoS 0-2."""
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"the embedded broker allows anonymous clients, so it binds to loopback only "
            f"({', '.join(LOOPBACK_HOSTS)}), not {host!r}; use Mosquitto (deploy/mosquitto)"
        )
    if not 0 <= port < 65536:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return EmbeddedBroker(host, port).start(timeout)


def run_broker(host: str = "127.0.0.1", port: int = 1883) -> int:
    """`sparsetel broker`: serve in the foreground until SIGINT or SIGTERM; return 0, or 1
    when the broker cannot start (port taken, ...)."""
    done = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the broker", signum)
        done.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        try:
            broker = start_embedded_broker(host, port)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        print(f"sparsetel broker: listening on {broker.url} (Ctrl-C to stop)", flush=True)
        try:
            while not done.wait(0.5):
                if not broker.alive:
                    log.error("the embedded broker stopped unexpectedly")
                    return 1
        finally:
            broker.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
