"""The edge agent against a real MQTT broker: frames, birth, death, bdSeq, rebirth, SIGTERM.

The broker is Mosquitto at 127.0.0.1:1883 unless SPARSETEL_TEST_BROKER=mqtt://host:port says
otherwise; when it does not answer these tests skip, or fail under CI=true (the suite's
`broker_url` fixture). Every test uses a group of its own, so runs never see each other's
messages, and clears its retained STATE messages afterwards.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from sparsetel.edge.agent import AgentStats, run_agent
from sparsetel.edge.encoder import OnnxEncoder
from sparsetel.shared.birth import parse_state
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.topics import data_topic, ncmd_topic, parse_topic, state_topic
from sparsetel.shared.wire import decode_frame, encode_frame
from tests.agents import AGENT_MAIN, EDGE, agent_argv, agent_config, collect, write_csv
from tests.mosquitto import OwnBroker
from tests.mqttclients import TIMEOUT, Listener
from tests.processes import PIPE, started, stop
from tests.tinymodel import ranged_model, reference_codes

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_agent_streams_a_csv_as_frames_between_birth_and_death(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    tmp_path: Path,
    protocol: Literal["3.1.1", "5"],
) -> None:
    rows = write_csv(tmp_path / "kpis.csv", 23)
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    mqtt_broker = BrokerConfig(url=broker.url, protocol=protocol)
    cfg = agent_config(model_dir, group, mqtt_broker, source=str(tmp_path / "kpis.csv"), batch=5)
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0
    frames, states = collect(listener, 24)
    listener.close()

    encoder = OnnxEncoder(model_dir)
    bd_seq = stats.bd_seq
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [len(f.records) for f in frames] == [5, 5, 5, 5, 4]
    assert {(f.bd_seq, f.model_ref, f.L, f.K, f.period_ms) for f in frames} == {
        (bd_seq, encoder.model_ref, encoder.L, encoder.K, 1000)
    }
    records = [r for f in frames for r in f.records]
    assert [r.codes for r in records] == encoder.encode_records(rows)
    assert np.diff([r.t_ms for r in records]).tolist() == [1000] * 23

    birth, death = states[0], states[-1]
    assert birth.online and birth.bd_seq == bd_seq and birth.edge == EDGE and birth.group == group
    assert birth.model_sha256 == encoder.model_sha256
    assert birth.kpi_schema_hash == encoder.manifest.kpi_schema_hash
    assert not death.online and death.bd_seq == bd_seq
    assert (stats.measurements, stats.frames, stats.acked) == (24, 5, 5)
    # the row with "12 dBm" is kept with its RSRP missing, as training keeps it
    assert stats.rejects == {}
    assert stats.cells == {"missing": 4, "invalid": 1}
    assert stats.invalid_cells == {"RSRP": 1}
    assert stats.bytes_sent == sum(len(encode_frame(f)) for f in frames)

    late = Listener(broker, state_topic(group, EDGE))
    retained = late.next("the retained death")
    late.close()
    assert retained.retain and not parse_state(bytes(retained.payload)).online


def test_a_second_run_has_the_next_bd_seq_and_restarts_seq(
    broker: BrokerConfig, group: str, model_dir: Path, tmp_path: Path
) -> None:
    write_csv(tmp_path / "kpis.csv", 6)
    cfg = agent_config(model_dir, group, broker, source=str(tmp_path / "kpis.csv"), batch=4)
    seen = []
    for _ in range(2):
        listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
        assert run_agent(cfg) == 0
        seen.append(collect(listener, 7))
        listener.close()
    (first_frames, first_states), (second_frames, second_states) = seen
    first = first_states[0].bd_seq  # drawn at random: the state folder was new
    second = (first + 1) % 2**32
    assert [s.bd_seq for s in first_states] == [first, first]
    assert [s.bd_seq for s in second_states] == [second, second]
    assert [(f.bd_seq, f.seq) for f in first_frames] == [(first, 0), (first, 1)]
    assert [(f.bd_seq, f.seq) for f in second_frames] == [(second, 0), (second, 1)]
    assert (model_dir.parent / "state" / "bdseq").read_text().strip() == str(second)


def test_retained_birth_while_running_and_rebirth_on_command(
    broker: BrokerConfig, group: str, model_dir: Path
) -> None:
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    read_fd, write_fd = os.pipe()
    stdin = os.fdopen(read_fd, "rb")
    cfg = agent_config(model_dir, group, broker, batch=2)
    codes: list[int] = []
    agent = threading.Thread(target=lambda: codes.append(run_agent(cfg, stdin=stdin)))
    agent.start()
    try:
        os.write(write_fd, b"[1, 2, 3]\n" + json.dumps({"kpis": {"RSRP": 4}}).encode() + b"\n")
        first = [listener.next("the birth and the first frame") for _ in range(2)]
        assert sorted(parse_topic(m.topic).kind for m in first) == ["DATA", "STATE"]

        late = Listener(broker, state_topic(group, EDGE))
        retained = late.next("the retained birth")
        birth = parse_state(bytes(retained.payload))
        assert retained.retain and birth.online
        assert birth.model_sha256 == OnnxEncoder(model_dir).model_sha256

        late.publish(ncmd_topic(group, EDGE), b"rebirth")
        late.close()
        again = parse_state(bytes(listener.next("the rebirth").payload))
        assert again.online and again.bd_seq == birth.bd_seq
        assert again.timestamp_ms >= birth.timestamp_ms
    finally:
        os.close(write_fd)
        agent.join(TIMEOUT)
    assert not agent.is_alive() and codes == [0]
    death = parse_state(bytes(listener.next("the death").payload))
    listener.close()
    assert not death.online and death.bd_seq == birth.bd_seq


def test_sigterm_flushes_the_partial_batch_publishes_the_death_and_exits_0(
    broker: BrokerConfig, group: str, model_dir: Path
) -> None:
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    argv = agent_argv(AGENT_MAIN, model_dir, group, broker.url)
    with started(argv, stdin=PIPE, text=False) as proc:
        assert proc.stdin is not None
        proc.stdin.write(b"[1, 2, 3]\n[4, 5, 6]\n[7, 8, 9]\n")
        proc.stdin.flush()
        kinds = [parse_topic(listener.next("birth and frame 0").topic).kind for _ in range(2)]
        assert sorted(kinds) == ["DATA", "STATE"]
        # stdin stays open: the reader is blocked in it
        out, err = stop(proc, timeout=TIMEOUT * 2)
    assert proc.returncode == 0, err.decode()
    frame = decode_frame(bytes(listener.next("the flushed partial batch").payload))
    death = parse_state(bytes(listener.next("the death").payload))
    listener.close()
    assert (frame.seq, len(frame.records)) == (1, 1)
    assert not death.online
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert (stats["measurements"], stats["frames"], stats["acked"]) == (3, 2, 2)


def test_the_broker_publishes_the_death_when_the_agent_dies_abruptly(
    broker: BrokerConfig, group: str, model_dir: Path
) -> None:
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    argv = agent_argv(AGENT_MAIN, model_dir, group, broker.url)
    with started(argv, stdin=PIPE, stdout=None, stderr=None, text=False) as proc:
        birth = parse_state(bytes(listener.next("the birth").payload))
        proc.kill()  # no clean disconnect: the broker must send the last will
        proc.wait(timeout=TIMEOUT)
        will = parse_state(bytes(listener.next("the last will").payload))
    listener.close()
    assert birth.online and not will.online and will.bd_seq == birth.bd_seq


def test_an_agent_booting_without_its_broker_measures_offline_and_delivers_later(
    model_dir: Path, tmp_path: Path
) -> None:
    broker = OwnBroker(tmp_path)  # its port stays closed for the first second
    write_csv(tmp_path / "kpis.csv", 30)
    cfg = agent_config(
        model_dir,
        "g",
        BrokerConfig(url=broker.url),
        source=str(tmp_path / "kpis.csv"),
        rate_hz=10.0,
        batch=5,
        connect_timeout_s=0.3,
    )
    stats = AgentStats()
    late = threading.Timer(1.0, broker.start)
    late.start()
    try:
        assert run_agent(cfg, stats=stats) == 0
    finally:
        late.join()
        broker.stop()
    assert stats.error is None and stats.connects == 1
    assert (stats.measurements, stats.frames, stats.acked) == (31, 7, 7)
    assert stats.spool_depth == 0  # everything measured offline reached the broker


def test_an_agent_the_broker_refuses_exits_1_naming_the_refusal(
    model_dir: Path, tmp_path: Path
) -> None:
    broker = OwnBroker(tmp_path, anonymous=False)
    broker.start()
    try:
        stats = AgentStats()
        assert (
            run_agent(agent_config(model_dir, "g", BrokerConfig(url=broker.url)), stats=stats) == 1
        )
    finally:
        broker.stop()
    assert stats.error is not None and "refused" in stats.error and str(broker.port) in stats.error
    assert stats.frames == 0


def test_agent_fails_fast_on_a_model_that_does_not_fit_the_source(model_dir: Path) -> None:
    cfg = agent_config(model_dir, "g", BrokerConfig(), kpis=("RSRP", "RSRQ", "CQI"))
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 1
    assert stats.error is not None and "CQI" in stats.error
    assert not (model_dir.parent / "state" / "bdseq").exists(), "no bdSeq spent on a bad start"


def test_agent_rejects_a_bad_edge_id_as_a_config_error(model_dir: Path) -> None:
    stats = AgentStats()
    assert run_agent(agent_config(model_dir, "g", BrokerConfig(), edge_id="a/b"), stats=stats) == 2
    assert stats.error is not None and "a/b" in stats.error


def test_agent_streams_from_a_custom_python_collector(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "site_probe.py").write_text(
        "rows = iter([[-90, -11, 5], [-91, -12, 4], [-92, -12, 3], [-93, -13, 2]])\n"
        "def collect():\n"
        "    return next(rows, None)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    cfg = agent_config(model_dir, group, broker, source="py:site_probe:collect", batch=2)
    stats = AgentStats()
    assert run_agent(cfg, stats=stats) == 0
    frames, _ = collect(listener, 4)
    listener.close()
    rows = np.array([[-90, -11, 5], [-91, -12, 4], [-92, -12, 3], [-93, -13, 2]], np.float32)
    assert [r.codes for f in frames for r in f.records] == OnnxEncoder(model_dir).encode_records(
        rows
    )
    assert stats.measurements == 4


def test_measurements_beyond_the_models_range_are_counted_and_the_rest_delivered(
    broker: BrokerConfig, group: str, tmp_path: Path
) -> None:
    run = ranged_model(tmp_path / "run")
    listener = Listener(broker, data_topic(group, EDGE), state_topic(group, EDGE))
    rows = [[-100, -10, 5], [-900, -10, 5], [-101, -11, 4], [-102, -12, -3], [-103, -13, 3]]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    cfg = agent_config(run, group, broker, batch=5)
    stats = AgentStats()
    assert run_agent(cfg, stats=stats, stdin=io.BytesIO(lines)) == 0
    frames, _ = collect(listener, 3)
    listener.close()
    kept = np.array([rows[0], rows[2], rows[4]], np.float32)
    assert [r.codes for f in frames for r in f.records] == reference_codes(kept)
    assert stats.rejects == {"out_of_range": 2} and stats.measurements == 3
