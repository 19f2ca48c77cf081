"""The locked-down broker of ``deploy/mosquitto/provision.py``, run for real: TLS only, one
login per edge, and ACLs that keep an edge to its own topics.

The test provisions a fleet of three edges in two groups, starts Mosquitto with the generated
configuration on a free port, and checks with real clients that:

- an edge cannot publish as another edge, command one, push a model, or read another edge's
  commands; anonymous, wrong-password and plain-TCP clients are refused;
- the real protocol still works through it: an agent logging in as its edge over TLS streams
  frames, and a deployment signed and sent as the cloud user switches it to a new model,
  while the same deployment sent with an edge's credentials reaches nobody.
"""

from __future__ import annotations

import getpass
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cloud.fleet.client import BrokerLink, discover_edges
from sparsetel.cloud.fleet.keys import keygen
from sparsetel.cloud.fleet.rollout import deploy
from sparsetel.edge.agent import AgentStats, EdgeConfig, run_agent
from sparsetel.shared.birth import birth_payload, state_from_manifest
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import (
    data_topic,
    deploy_topic,
    health_topic,
    model_topic,
    ncmd_topic,
    receipt_topic,
    state_topic,
)
from tests.helpers import free_port
from tests.mosquitto import OwnBroker
from tests.tinymodel import write_tiny_model

pytestmark = pytest.mark.integration

PROVISION = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "provision.py"
FLEET = [("site-a", "e1"), ("site-a", "e2"), ("site-b", "e3")]
WAIT_S = 10.0


class Fleet:
    """The provisioned files and a running broker."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "broker"
        self.port = free_port()
        (tmp / "data").mkdir()
        fleet = tmp / "fleet.csv"
        fleet.write_text("group,edge\n" + "".join(f"{g},{e}\n" for g, e in FLEET))
        subprocess.run(
            [sys.executable, str(PROVISION), "--fleet", str(fleet), "--out", str(self.dir),
             "--host", "127.0.0.1", "--host", "localhost", "--port", str(self.port),
             "--bind", "127.0.0.1", "--data", str(tmp / "data"), "--run-as", getpass.getuser()],
            check=True, capture_output=True,
        )  # fmt: skip
        self.broker = OwnBroker(tmp, conf=self.dir / "mosquitto.conf", port=self.port)

    def login(self, name: str) -> BrokerConfig:
        env = dict(
            line.split("=", 1)
            for line in (self.dir / "credentials" / f"{name}.env").read_text().splitlines()
        )
        return BrokerConfig(
            url=f"mqtts://127.0.0.1:{self.port}",
            username=env["SPARSETEL_MQTT_USERNAME"],
            password=env["SPARSETEL_MQTT_PASSWORD"],
            tls_ca=self.dir / "ca.crt",
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path)
    made.broker.start()
    yield made
    made.broker.stop()


class Client:
    """A paho client logged in with `cfg`, queueing what it receives on `filters`."""

    def __init__(self, cfg: BrokerConfig, *filters: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.granted: list[int] = []
        self.connack: list[str] = []
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            self.client.tls_set(ca_certs=str(cfg.tls_ca))

        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            self.connack.append(str(rc))
            if filters:
                c.subscribe([(t, 1) for t in filters])
            else:
                ready.set()

        def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list, p: object) -> None:
            self.granted = [int(rc.value) for rc in rcs]
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect(cfg.host, cfg.port)
        self.client.loop_start()
        assert ready.wait(WAIT_S), "no CONNACK/SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def topics_until(self, marker: str) -> list[str]:
        """Topics received up to and including the one with payload `marker`."""
        topics = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                m = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            topics.append(m.topic)
            if m.payload == marker.encode():
                return topics
        pytest.fail(f"no {marker!r} within {WAIT_S} s; got {topics}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_edge_publishes_only_on_its_own_topics(fleet: Fleet) -> None:
    cloud = Client(fleet.login("cloud"), "sparsetel/#")
    e1 = Client(fleet.login("e1"))
    own = [data_topic("site-a", "e1"), state_topic("site-a", "e1"), health_topic("site-a", "e1")]
    own.append(deploy_topic("site-a", "e1"))
    forged = [
        data_topic("site-a", "e2"),  # as another edge
        state_topic("site-a", "e2"),
        data_topic("site-b", "e1"),  # as itself in another group
        ncmd_topic("site-a", "e2"),  # a command to another edge
        ncmd_topic("site-a", "e1"),  # a command to itself
        receipt_topic("site-a", "e2"),  # a receipt that would make another edge forget frames
        receipt_topic("site-a", "e1"),
        model_topic("site-a", "0123456789abcdef"),  # a model
    ]
    for topic in forged + own:
        e1.publish(topic, b"x")
    e1.publish(data_topic("site-a", "e1"), b"end")  # same connection: arrives last
    got = cloud.topics_until("end")
    e1.close()
    cloud.close()
    assert set(got) == set(own) and not set(got) & set(forged), got


def test_an_edge_reads_only_its_own_commands_and_receipts_and_its_groups_models(
    fleet: Fleet,
) -> None:
    e1 = Client(
        fleet.login("e1"),
        ncmd_topic("site-a", "e1"),
        ncmd_topic("site-a", "e2"),
        receipt_topic("site-a", "e1"),
        receipt_topic("site-a", "e2"),
        "sparsetel/v1/site-a/MODEL/#",
        "sparsetel/v1/site-b/MODEL/#",
        data_topic("site-a", "e2"),
    )
    cloud = Client(fleet.login("cloud"))
    for topic in (
        ncmd_topic("site-a", "e2"),
        receipt_topic("site-a", "e2"),
        data_topic("site-a", "e2"),
        model_topic("site-b", "0123456789abcdef"),
        model_topic("site-a", "0123456789abcdef"),
        receipt_topic("site-a", "e1"),
    ):
        cloud.publish(topic, b"x")
    cloud.publish(ncmd_topic("site-a", "e1"), b"end")
    got = e1.topics_until("end")
    e1.close()
    cloud.close()
    mine = [model_topic("site-a", "0123456789abcdef"), receipt_topic("site-a", "e1")]
    assert got == [*mine, ncmd_topic("site-a", "e1")]


@pytest.mark.parametrize("how", ["anonymous", "wrong password", "plain TCP", "unknown CA"])
def test_clients_without_valid_credentials_over_tls_are_refused(
    fleet: Fleet, how: str, tmp_path: Path
) -> None:
    good = fleet.login("e1")
    cfg = {
        "anonymous": BrokerConfig(url=good.url, tls_ca=good.tls_ca),
        "wrong password": BrokerConfig(
            url=good.url, username="e1", password="not-it", tls_ca=good.tls_ca
        ),
        "plain TCP": BrokerConfig(url=f"mqtt://127.0.0.1:{fleet.port}", username="e1"),
        "unknown CA": BrokerConfig(
            url=good.url, username="e1", password=good.password, tls_ca=_other_ca(tmp_path)
        ),
    }[how]
    model = write_tiny_model(tmp_path / "run")
    stats = AgentStats()
    agent = EdgeConfig(
        group="site-a", edge_id="e1", model=model, source=str(_csv(tmp_path)),
        state_dir=tmp_path / "state", broker=cfg, connect_timeout_s=2.0, ack_timeout_s=0.5,
        confirm="broker",
    )  # fmt: skip
    code = run_agent(agent, stats=stats)
    # A refused login is fatal (exit 1). A failed TLS handshake looks like an unreachable
    # broker: the agent measures into its spool, and nothing is acknowledged.
    refused = how in ("anonymous", "wrong password")
    assert code == (1 if refused else 0), stats.error
    assert refused == ("refused" in (stats.error or ""))
    assert stats.acked == 0 and stats.connects == 0


def _csv(tmp: Path) -> Path:
    path = tmp / "kpis.csv"
    path.write_text("RSRP,RSRQ,SNR\n-90,-10,5\n-91,-11,4\n")
    return path


def _other_ca(tmp: Path) -> Path:
    other = tmp / "other"
    other.mkdir()
    fleet = other / "fleet.csv"
    fleet.write_text("g,x\n")
    subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import provision; "
         "provision.make_certificates(__import__('pathlib').Path(sys.argv[2]), ['127.0.0.1'])",
         str(PROVISION.parent), str(other)],
        check=True,
    )  # fmt: skip
    return other / "ca.crt"


def test_the_real_protocol_passes_and_only_the_cloud_can_deploy(
    fleet: Fleet, tmp_path: Path
) -> None:
    old = write_tiny_model(tmp_path / "old")
    new = write_tiny_model(tmp_path / "new", bias=(1.0, 5.0, 2.0, 4.0))
    private, public = keygen(tmp_path / "keys")
    agent_cfg = EdgeConfig(
        group="site-a", edge_id="e1", model=old, source="-", state_dir=tmp_path / "state",
        broker=fleet.login("e1"), trust_key=public, batch=1, fetch_timeout_s=5.0,
        confirm="broker",
    )  # fmt: skip
    read, write = _pipe()
    stats = AgentStats()
    runner = threading.Thread(target=lambda: run_agent(agent_cfg, stats=stats, stdin=read))
    runner.start()
    try:
        time.sleep(1.0)
        write.write(b"[-90, -10, 5]\n")
        write.flush()
        as_edge = deploy(fleet.login("e2"), "site-a", new, private, edges=["e1"], timeout_s=3.0)
        as_cloud = deploy(fleet.login("cloud"), "site-a", new, private, timeout_s=WAIT_S)
        write.write(b"[-91, -11, 4]\n")
        write.flush()
    finally:
        write.close()
        runner.join(timeout=30)
    assert as_edge["timed_out"] == ["e1"], as_edge  # its command and bundle were dropped
    assert as_cloud["targets"] == ["e1"] and as_cloud["switched"] == 1, as_cloud
    assert stats.error is None and stats.acked == stats.frames == 2 and stats.switches == 1


def _pipe() -> tuple[BinaryIO, BinaryIO]:
    r, w = os.pipe()
    return os.fdopen(r, "rb"), os.fdopen(w, "wb")


def test_an_edge_cannot_discover_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    e1 = Client(fleet.login("e1"))
    birth = birth_of("e1", tmp_path)
    e1.client.publish(state_topic("site-a", "e1"), birth, qos=1, retain=True)
    e1.client.publish(data_topic("site-a", "e1"), b"end", qos=1).wait_for_publish(WAIT_S)
    e1.close()
    seen = {}
    for who in ("cloud", "e2"):
        with BrokerLink(fleet.login(who)) as link:
            seen[who] = discover_edges(link, "site-a", settle_s=0.5)
    assert seen == {"cloud": ["e1"], "e2": []}


def birth_of(edge: str, tmp: Path) -> bytes:
    model = ModelManifest.load(write_tiny_model(tmp / "birth-model") / MANIFEST_FILE)
    state = state_from_manifest(
        model, edge=edge, group="site-a", bd_seq=0, agent_version="t", runtime_version="t",
        timestamp_ms=0,
    )  # fmt: skip
    return birth_payload(state)
