"""Fault test: a flood far past serve's queue, with serve's DEFAULT settings, loses nothing.

`sparsetel serve` runs as the README shows it (--model, --db, --broker: a queue of 10,000,
MQTT 3.1.1, the derived client id) against a Mosquitto with the shipped dev.conf limits.
Ten synthetic edges publish 15,000 frames (QoS 1) while serve is frozen (SIGSTOP), so the
broker acknowledges them all to the edges: from then on, serve's acknowledgement is the
only thing between a frame and its loss. Then serve thaws. Mosquitto 2.0.11 does not keep to
`max_inflight_messages` once acknowledgements flow, so it pushes the backlog at serve as
fast as serve acknowledges; the queue fills, and serve must make the broker wait (stop
reading the socket) instead of acknowledging and dropping what does not fit, as it once did
(3,738 of 15,000 frames acknowledged and dropped in this test before the fix).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import data_topic
from sparsetel.shared.wire import Frame, Record, encode_frame
from tests.mosquitto import OwnBroker, shipped_limits
from tests.processes import last_json, sparsetel, started, stop
from tests.quickrun import quick_exported_run

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

EDGES, FRAMES, RECORDS = 10, 1500, 2
GROUP = "flood"


def _frames(manifest: ModelManifest, edge: int, t0_ms: int) -> list[bytes]:
    """`FRAMES` valid frames of `RECORDS` measurements for one synthetic edge."""
    rng = random.Random(edge)
    out = []
    for seq in range(FRAMES):
        records = tuple(
            Record(
                t0_ms + 1000 * (seq * RECORDS + k),
                tuple(sorted(rng.randrange(manifest.K) for _ in range(rng.randint(0, manifest.L)))),
            )
            for k in range(RECORDS)
        )
        frame = Frame(manifest.model_ref, 7, seq, manifest.L, manifest.K, 1000, records)
        out.append(encode_frame(frame))
    return out


def _publish(port: int, edge: int, frames: list[bytes], failures: list[str]) -> None:
    """Publish `frames` QoS 1 as edge `edge`; wait until the broker acknowledged each."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-edge-{edge}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(data_topic(GROUP, f"e{edge}"), f, qos=1) for f in frames]
        for info in infos:
            info.wait_for_publish(120)
        if not all(info.is_published() for info in infos):
            failures.append(f"edge {edge}: not every frame reached the broker")
    finally:
        client.disconnect()
        client.loop_stop()


def _wait_for_subscription(log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while "subscribed to" not in log.read_text():
        assert time.monotonic() < deadline, f"serve did not subscribe: {log.read_text()}"
        time.sleep(0.1)


def _frames_stored(db: Path) -> int:
    with sqlite3.connect(db, timeout=10) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0])


def test_a_flood_past_the_queue_of_a_default_serve_loses_no_frame(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = quick_exported_run(tmp_path_factory)
    manifest = ModelManifest.from_json((run / MANIFEST_FILE).read_text())
    t0_ms = (int(time.time()) - 3 * 3600) * 1000
    floods = [_frames(manifest, edge, t0_ms) for edge in range(EDGES)]
    broker = OwnBroker(tmp_path, shipped_limits())
    broker.start()
    db, log = tmp_path / "cloud.db", tmp_path / "serve.log"
    argv = sparsetel(
        "serve", "--model", str(run), "--db", str(db), "--broker", broker.url, "--json"
    )
    stats: dict[str, Any] = {}
    try:
        # Killed on the way out if the test fails: SIGKILL ends a frozen process as well.
        with open(log, "w") as err, started(argv, stderr=err) as serve:
            _wait_for_subscription(log)
            os.kill(serve.pid, signal.SIGSTOP)  # frozen: the broker takes the flood for it
            failures: list[str] = []
            edges = [
                threading.Thread(target=_publish, args=(broker.port, i, floods[i], failures))
                for i in range(EDGES)
            ]
            for thread in edges:
                thread.start()
            for thread in edges:
                thread.join(180)
            assert not failures, failures
            os.kill(serve.pid, signal.SIGCONT)
            deadline = time.monotonic() + 120
            while _frames_stored(db) < EDGES * FRAMES and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # a frame stored twice would land now
            out, _ = stop(serve, timeout=60)
            stats = last_json(out)
    finally:
        broker.stop()
    with sqlite3.connect(db) as conn:
        frames = conn.execute("SELECT COUNT(*), COUNT(DISTINCT edge || '/' || seq) FROM frames")
        stored, distinct = frames.fetchone()
        measurements = conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
    report = {
        "published": EDGES * FRAMES,
        "stored": stored,
        "distinct": distinct,
        "measurements": measurements,
        "queue_waits": stats.get("queue_waits"),
        "queue_full": stats.get("queue_full"),
        "acks": stats.get("acks"),
    }
    print("chaos-flood:", json.dumps(report))
    assert stored == distinct == EDGES * FRAMES, report
    assert measurements == EDGES * FRAMES * RECORDS, report
    assert stats["queue_waits"] > 0, "the flood never filled the queue: it tests nothing"
