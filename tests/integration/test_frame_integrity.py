"""Issue 15 point 7 on the real Mosquitto and SQLite: a frame with a damaged byte is rejected
by its CRC, never stored with a wrong bdSeq, seq, time or period (version 1 frames, which
have no CRC, stored 19 of 37 single-byte header flips)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.ingest.registry import ModelRegistry
from sparsetel.cloud.ingest.service import DecoderService, ServeConfig
from sparsetel.cloud.store.database import open_store
from sparsetel.shared.config import BrokerConfig, parse_broker_url
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import HEADER_SIZE, Frame, Record, encode_frame
from tests.frames import SummingCodec
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

L, K = 4, 32
T0_MS = (int(time.time()) - 600) * 1000  # recent: inside serve's window for frame times


CODEC = SummingCodec(L, K, 2, sha="c1")


@pytest.fixture
def client(broker_url: str) -> Iterator[mqtt.Client]:
    _, host, port = parse_broker_url(broker_url)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"it-crc-{uuid.uuid4().hex[:10]}")
    connected = threading.Event()
    pub.on_connect = lambda c, u, f, rc, p: connected.set()
    pub.connect(host, port, keepalive=10)
    pub.loop_start()
    assert connected.wait(10), "no CONNACK from the broker"
    yield pub
    pub.disconnect()
    pub.loop_stop()


def test_no_header_byte_flip_of_a_frame_is_stored(
    broker_url: str, group: str, client: mqtt.Client, tmp_path: Path
) -> None:
    records = tuple(Record(T0_MS + 1000 * i, (i, 9 + i)) for i in range(3))
    good = encode_frame(Frame(CODEC.manifest.model_ref, 7, 42, L, K, 1000, records))
    flips = [good[:i] + bytes([good[i] ^ 0xFF]) + good[i + 1 :] for i in range(HEADER_SIZE)]
    cfg = ServeConfig(
        broker=BrokerConfig(url=broker_url), group=group, db=str(tmp_path / "crc.db"),
        clean_session=True,
    )  # fmt: skip
    service = DecoderService(cfg, ModelRegistry([CODEC]))
    service.start(timeout=15)
    try:
        for payload in [*flips, good]:
            client.publish(data_topic(group, "edge-a"), payload, qos=1).wait_for_publish(10)
        assert service.wait_for_records(3, timeout=20)
        assert wait_until(lambda: service.stats()["messages"] == len(flips) + 1, 20.0)
        stats = service.stats()
    finally:
        service.stop()
    # magic and version are read before the CRC; every other damaged byte fails it
    assert stats["rejects"] == {"magic": 2, "version": 1, "crc": HEADER_SIZE - 3}
    assert stats["records_stored"] == 3 and stats["frames_ok"] == 1
    with open_store(tmp_path / "crc.db") as store:
        rows = store.fetch_measurements("edge-a")
    assert [(r["seq"], r["t_ms"]) for r in rows] == [(42, r.t_ms) for r in records]
