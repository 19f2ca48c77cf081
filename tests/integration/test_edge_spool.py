"""Store-and-forward against real Mosquitto: frames stay on disk until the broker has them,
and what a run leaves behind (broker gone, agent SIGKILLed) is replayed by the next run,
flagged historical, in order, under its own bdSeq and seq. And the agent's heartbeats."""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.edge.agent import SPOOL_FILE, AgentStats, run_agent
from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.edge.spool import Spool
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import data_topic, health_topic, state_topic
from sparsetel.shared.wire import Frame, Record, decode_frame, encode_frame
from tests.agents import AGENT_MAIN, EDGE, agent_argv, agent_config, collect, write_csv
from tests.mosquitto import OwnBroker
from tests.mqttclients import TIMEOUT, Listener
from tests.processes import DEVNULL, PIPE, started

pytestmark = pytest.mark.integration


def test_frames_left_in_the_spool_go_first_flagged_historical(
    broker: BrokerConfig, group: str, model_dir: Path, tmp_path: Path
) -> None:
    encoder = OnnxEncoder(model_dir)
    state = model_dir.parent / "state"
    old = Spool(state / SPOOL_FILE)
    for seq in range(3):  # what a run with bdSeq 41 could not deliver
        recs = tuple(Record(1000 * (2 * seq + i), (1, 2)) for i in range(2))
        frame = Frame(encoder.model_ref, 41, seq, encoder.L, encoder.K, 1000, recs)
        old.put(41, seq, encode_frame(frame))
    old.close()
    write_csv(tmp_path / "kpis.csv", 6)
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    cfg = agent_config(model_dir, group, broker, source=str(tmp_path / "kpis.csv"), batch=4)
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0
    frames, _ = collect(listener, 6 + 7)
    listener.close()

    assert [(f.bd_seq, f.seq, f.historical) for f in frames] == [
        (41, 0, True),
        (41, 1, True),
        (41, 2, True),
        (stats.bd_seq, 0, False),
        (stats.bd_seq, 1, False),
    ]
    assert (stats.replayed, stats.spool_depth, stats.acked) == (3, 0, 5)
    assert Spool(state / SPOOL_FILE).depth == 0  # every frame acknowledged, none left


def test_frames_of_a_sigkilled_agent_reach_the_cloud_after_the_broker_came_back(
    own_broker: OwnBroker, model_dir: Path
) -> None:
    broker = BrokerConfig(url=own_broker.url)
    group = "spool"
    argv = agent_argv(AGENT_MAIN, model_dir, group, broker.url)
    with started(argv, stdin=PIPE, stdout=DEVNULL, stderr=DEVNULL, text=False) as proc:
        listener = Listener(broker, data_topic(group, EDGE))
        spool = model_dir.parent / "state" / SPOOL_FILE
        assert proc.stdin is not None
        proc.stdin.write(b"[1, 2, 3]\n[4, 5, 6]\n")  # frame 0, delivered
        proc.stdin.flush()
        first = decode_frame(bytes(listener.next("frame 0").payload))
        listener.close()
        own_broker.stop()  # the broker goes away: frames 1..4 cannot be acknowledged
        proc.stdin.write(b"".join(f"[{i}, {i}, {i}]\n".encode() for i in range(8)))
        proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and Spool(spool).depth < 4:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: nothing is flushed, nothing said
        proc.wait(timeout=TIMEOUT)
    assert first.seq == 0
    assert Spool(spool).depth == 4

    own_broker.start()
    listener = Listener(broker, data_topic(group, EDGE))
    cfg = agent_config(model_dir, group, broker, source="-", batch=2)
    stats = AgentStats()
    assert run_agent(cfg, stats=stats, stdin=io.BytesIO(b"")) == 0
    frames = [decode_frame(bytes(listener.next(f"replayed frame {i}").payload)) for i in range(4)]
    listener.close()
    assert [(f.bd_seq, f.seq, f.historical) for f in frames] == [
        (first.bd_seq, 1, True),
        (first.bd_seq, 2, True),
        (first.bd_seq, 3, True),
        (first.bd_seq, 4, True),
    ]
    rows = np.array([[i, i, i] for i in range(8)], dtype=np.float32)
    codes = [r.codes for f in frames for r in f.records]
    assert codes == OnnxEncoder(model_dir).encode_records(rows)  # every measurement, once
    assert stats.replayed == 4 and stats.bd_seq == (first.bd_seq + 1) % 2**32
    assert Spool(spool).depth == 0


def test_heartbeats_on_health_carry_the_agents_vital_signs(
    broker: BrokerConfig, group: str, model_dir: Path, tmp_path: Path
) -> None:
    write_csv(tmp_path / "kpis.csv", 30)
    listener = Listener(broker, health_topic(group, EDGE))
    cfg = agent_config(
        model_dir,
        group,
        broker,
        source=str(tmp_path / "kpis.csv"),
        batch=5,
        rate_hz=20.0,
        max_batch_delay_s=1.0,
        health_interval_s=0.2,
    )
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0
    beats = []
    while True:
        try:
            beats.append(json.loads(listener.messages.get(timeout=1.0).payload))
        except queue.Empty:
            break
    listener.close()
    assert len(beats) >= 3  # 30 rows at 20 Hz: about 1.5 s, a beat every 0.2 s
    first, last = beats[0], beats[-1]
    assert (first["edge"], first["group"], first["bd_seq"]) == (EDGE, group, stats.bd_seq)
    assert first["model_sha256"] == OnnxEncoder(model_dir).model_sha256
    uptimes = [b["uptime_s"] for b in beats]
    assert uptimes == sorted(uptimes) and uptimes[0] >= 0
    assert [b["measurements"] for b in beats] == sorted(b["measurements"] for b in beats)
    assert last["measurements"] > 0 and last["frames_sent"] >= 1
    assert last["spool_depth"] >= 0 and last["spool_dropped"] == 0
    assert last["rejects"] == {}  # the CSV's one bad cell is a missing value, not a reject
    timed = [b["encode_ms_per_measurement"] for b in beats if b["encode_ms_per_measurement"]]
    assert timed and all(0 < t < 1000 for t in timed)


AGENT_SMALL_QUEUE = """
import json, sys
from pathlib import Path
from sparsetel.edge.agent import EdgeConfig, run_agent
from sparsetel.shared.config import BrokerConfig
a = json.loads(sys.argv[1])
cfg = EdgeConfig(group=a["group"], edge_id=a["edge"], model=Path(a["model"]), source="-",
                 batch=2, max_batch_delay_s=0.3, state_dir=Path(a["state"]),
                 broker=BrokerConfig(url=a["url"]), max_queued_frames=2, confirm="broker")
raise SystemExit(run_agent(cfg, print_json=True))
"""


def test_frames_the_memory_queue_could_not_hold_are_resent_from_the_spool(
    own_broker: OwnBroker, model_dir: Path
) -> None:
    broker = BrokerConfig(url=own_broker.url)
    group = "resend"
    # A persistent session: what the agent publishes after the restart waits for this
    # subscriber, whichever of the two reconnects first.
    received: queue.Queue[bytes] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="resend-sub", clean_session=False)
    subscribed = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(data_topic(group, EDGE), qos=1)
    sub.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    sub.on_message = lambda c, u, m: received.put(bytes(m.payload))
    sub.reconnect_delay_set(min_delay=1, max_delay=1)
    sub.connect("127.0.0.1", own_broker.port)
    sub.loop_start()
    assert subscribed.wait(TIMEOUT)

    def next_frame(what: str) -> Frame:
        try:
            return decode_frame(received.get(timeout=TIMEOUT * 2))
        except queue.Empty:
            pytest.fail(f"no frame within {TIMEOUT * 2} s while waiting for {what}")

    log = model_dir.parent / "agent.log"
    argv = agent_argv(AGENT_SMALL_QUEUE, model_dir, group, broker.url)
    rows = [[i, i, i] for i in range(14)]
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    try:
        with log.open("wb") as err, started(argv, stdin=PIPE, stderr=err, text=False) as proc:
            assert proc.stdin is not None
            proc.stdin.write(b"".join(lines[:2]))  # frame 0, delivered
            proc.stdin.flush()
            frames = [next_frame("frame 0")]
            own_broker.stop()
            proc.stdin.write(b"".join(lines[2:]))  # frames 1..6: 2 fit in memory, 4 wait on disk
            proc.stdin.flush()
            time.sleep(1.0)
            own_broker.start()
            while {f.seq for f in frames} != set(range(7)):
                frames.append(next_frame("the frames after the outage"))
            proc.stdin.close()  # the source ends: the agent finishes
            proc.wait(timeout=TIMEOUT * 2)
            assert proc.stdout is not None
            out = proc.stdout.read()
    finally:
        sub.loop_stop()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, stats
    by_seq = {f.seq: f for f in frames}
    assert [by_seq[s].historical for s in range(7)] == [False] * 3 + [True] * 4
    codes = [r.codes for s in range(7) for r in by_seq[s].records]
    assert codes == OnnxEncoder(model_dir).encode_records(np.array(rows, dtype=np.float32))
    assert (stats["deferred"], stats["resent"], stats["spool_depth"]) == (4, 4, 0)
    # deferred is not dropped: nothing counted or logged as lost, as nothing was
    assert (stats["failed"], stats["spool_dropped"], stats["rejects"]) == (0, 0, {})
    assert "dropped" not in log.read_text()
    assert "wait in the spool" in log.read_text()
