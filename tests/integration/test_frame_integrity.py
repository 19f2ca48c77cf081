"""Issue 15 point 7 on the real Mosquitto and SQLite: a frame with a damaged byte is rejected
by its CRC, never stored with a wrong bdSeq, seq, time or period (version 1 frames, which
have no CRC, stored 19 of 37 single-byte header flips)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.registry import ModelRegistry
from sparsetel.cloud.service import DecoderService, ServeConfig
from sparsetel.cloud.store import open_store
from sparsetel.shared.config import BrokerConfig, parse_broker_url
from sparsetel.shared.manifest import KpiNorm, ModelManifest
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import HEADER_SIZE, Frame, Record, encode_frame

pytestmark = pytest.mark.integration

L, K = 4, 32
T0_MS = (int(time.time()) - 600) * 1000  # recent: inside serve's window for frame times


class FakeCodec:
    """A Decoder for tests: KPIs [nnz, sum of indices], prediction = sum of window counts."""

    def __init__(self) -> None:
        self.manifest = ModelManifest(
            model_sha256="c1" * 32, L=L, K=K, kpis=("a", "b"),
            norms=(KpiNorm("a", 0.0, 1.0), KpiNorm("b", 0.0, 1.0)),
            target="a", horizon=1, window=2, opset=17,
        )  # fmt: skip
        self.window, self.horizon = 2, 1

    def decode(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([[len(c), sum(c)] for c in codes], dtype=np.float32)

    def counts(self, codes: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(codes), K), np.float32)
        for i, c in enumerate(codes):
            np.add.at(out[i], list(c), 1.0)
        return out

    def predict(self, count_windows: np.ndarray) -> np.ndarray:
        return count_windows.sum(axis=(1, 2))

    def predict_sequence(self, counts: np.ndarray) -> np.ndarray:
        windows = sliding_window_view(counts, self.window, axis=0).transpose(0, 2, 1)
        return self.predict(np.ascontiguousarray(windows))


CODEC = FakeCodec()


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


def _wait_until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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
        assert _wait_until(lambda: service.stats()["messages"] == len(flips) + 1)
        stats = service.stats()
    finally:
        service.stop()
    # magic and version are read before the CRC; every other damaged byte fails it
    assert stats["rejects"] == {"magic": 2, "version": 1, "crc": HEADER_SIZE - 3}
    assert stats["records_stored"] == 3 and stats["frames_ok"] == 1
    with open_store(tmp_path / "crc.db") as store:
        rows = store.fetch_measurements("edge-a")
    assert [(r["seq"], r["t_ms"]) for r in rows] == [(42, r.t_ms) for r in records]
