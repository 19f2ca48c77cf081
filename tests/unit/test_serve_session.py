"""serve's MQTT session: stable client ids, a persistent session and a bounded send-ahead
window in the CONNECT it really sends, and the watch for a session taken over."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sparsetel.cloud.ingest.mqttsession import (
    SESSION_EXPIRY_S,
    TakeoverWatch,
    connect_properties,
    serve_client_id,
)
from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.ingest.workers import worker_configs
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import SparsetelError


def test_the_client_id_is_derived_from_the_group_unless_configured() -> None:
    assert serve_client_id(None, "site-a") == "sparsetel-serve-site-a"
    assert serve_client_id(None, "+") == "sparsetel-serve-all"
    assert serve_client_id("dec-1", "site-a") == "dec-1"
    assert (
        serve_client_id(None, "+", shared=True, host="cloud 7/x") == "sparsetel-serve-all-cloud-7-x"
    )
    throwaway = {serve_client_id(None, "+", clean_session=True) for _ in range(3)}
    assert len(throwaway) == 3 and all(c.startswith("sparsetel-serve-") for c in throwaway)


def test_each_worker_gets_the_derived_id_with_its_number() -> None:
    ids = [w.broker.client_id for w in worker_configs(ServeConfig(group="g", workers=2))]
    assert ids == ["sparsetel-serve-g-w0", "sparsetel-serve-g-w1"]
    clean = worker_configs(ServeConfig(workers=2, clean_session=True))
    assert [w.broker.client_id for w in clean] == [None, None]  # each draws a random one


def test_connect_properties_bound_the_window_and_keep_the_session() -> None:
    props = connect_properties(persistent=True, receive_maximum=500)
    assert (props.ReceiveMaximum, props.SessionExpiryInterval) == (500, SESSION_EXPIRY_S)
    assert not hasattr(connect_properties(False, 10), "SessionExpiryInterval")
    with pytest.raises(ValueError):
        connect_properties(True, 65_536)


@dataclass
class _Capture:
    """A TCP server that keeps the first packet a client sends and answers nothing."""

    port: int = 0
    packet: bytes = b""
    got: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def silent_broker() -> Iterator[_Capture]:
    capture = _Capture()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    capture.port = server.getsockname()[1]

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            capture.packet = conn.recv(4096)
            capture.got.set()
            conn.recv(1)  # hold it open until the client gives up

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield capture
    server.close()


def _connect_fields(packet: bytes) -> tuple[int, Properties | None, bytes]:
    """(connect flags, MQTT 5 properties or None, the rest: the payload) of a CONNECT."""
    assert packet[0] == 0x10
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    assert packet[i : i + 6] == b"\x00\x04MQTT"
    level, flags = packet[i + 6], packet[i + 7]
    rest = packet[i + 10 :]
    if level != 5:
        return flags, None, rest
    props, length = Properties(PacketTypes.CONNECT).unpack(rest)  # type: ignore[no-untyped-call]
    return flags, props, rest[length:]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_serve_connects_with_a_stable_id_a_kept_session_and_receive_maximum(
    silent_broker: _Capture, tmp_path: Path, protocol: str
) -> None:
    url = f"mqtt://127.0.0.1:{silent_broker.port}"
    cfg = ServeConfig(
        broker=BrokerConfig(url=url, protocol=protocol),  # type: ignore[arg-type]
        group="g1",
        db=f"{tmp_path}/s.db",
        queue_size=700,
    )
    with pytest.raises(SparsetelError, match="not subscribed"):
        DecoderService(cfg, ModelRegistry()).start(timeout=0.5)
    assert silent_broker.got.wait(5)
    flags, props, payload = _connect_fields(silent_broker.packet)
    assert flags & 0x02 == 0  # clean session / clean start: off
    assert b"sparsetel-serve-g1" in payload
    if protocol == "5":
        assert props is not None
        assert props.ReceiveMaximum == 700 and props.SessionExpiryInterval == SESSION_EXPIRY_S


def test_a_clean_session_is_asked_for_only_when_configured(
    silent_broker: _Capture, tmp_path: Path
) -> None:
    url = f"mqtt://127.0.0.1:{silent_broker.port}"
    cfg = ServeConfig(broker=BrokerConfig(url=url), db=f"{tmp_path}/s.db", clean_session=True)
    with pytest.raises(SparsetelError):
        DecoderService(cfg, ModelRegistry()).start(timeout=0.5)
    assert silent_broker.got.wait(5)
    flags, _, payload = _connect_fields(silent_broker.packet)
    assert flags & 0x02 and b"sparsetel-serve-all" not in payload


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeated_short_connections_are_reported_once_as_a_takeover() -> None:
    clock = _Clock()
    watch = TakeoverWatch(times=3, window_s=60, short_s=10, clock=clock)
    reports = []
    for _ in range(6):  # another client with our id: each connection lasts a second
        watch.connected()
        clock.now += 1.0
        reports.append(watch.lost(None))
        clock.now += 1.0
    assert reports == [False, False, True, False, False, False] and watch.total == 6
    clock.now += 120
    watch.connected()
    clock.now += 300  # a long connection lost: a network failure, not a takeover
    assert watch.lost(None) is False and watch.total == 6


def test_an_mqtt5_takeover_counts_however_long_the_connection_lasted() -> None:
    clock = _Clock()
    watch = TakeoverWatch(times=2, window_s=60, short_s=10, clock=clock)
    for expected in (False, True):
        watch.connected()
        clock.now += 30
        assert watch.lost(0x8E) is expected
