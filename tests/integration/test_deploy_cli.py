"""`sparsetel deploy` and `rollback` against a real MQTT broker and scripted edges.

Each `Responder` is a plain paho client playing an edge: it publishes a retained online birth
and answers NCMD commands the way an agent does, fetching the retained bundle from the MODEL
topic and really verifying its signature. The broker is Mosquitto at 127.0.0.1:1883 unless
SPARSETEL_TEST_BROKER says otherwise (the suite's `broker_url` fixture); every test has a
group of its own and clears the retained births and bundle it leaves behind.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from sparsetel.cli import main
from sparsetel.cloud.fleet.keys import keygen, load_public_key
from sparsetel.cloud.fleet.rollout import choose_targets, deploy, rollback
from sparsetel.shared.birth import EdgeState, birth_payload
from sparsetel.shared.bundle import signed_message, unpack_bundle
from sparsetel.shared.commands import DeployReport, parse_command
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import ModelMismatchError
from sparsetel.shared.manifest import ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import (
    deploy_topic,
    model_topic,
    ncmd_topic,
    parse_topic,
    state_topic,
)
from tests.mqttclients import clear_retained

pytestmark = pytest.mark.integration

TIMEOUT = 10.0
Behaviour = Literal["switch", "reject", "stall"]


class Responder:
    """A scripted edge. On deploy it reports ``received``, fetches the bundle, then reports
    ``verified`` + ``switched`` when the signature verifies with `trusted`, else ``rejected``;
    with behaviour "stall" it stops after ``received``. On rollback it reports ``rolled_back``
    when it `has_previous` model, else ``failed``. It also sends a malformed report and one of
    another deployment first, which the cloud must skip."""

    def __init__(
        self,
        broker: BrokerConfig,
        group: str,
        edge: str,
        trusted: Ed25519PublicKey,
        behaviour: Behaviour = "switch",
        has_previous: bool = True,
    ) -> None:
        self.group, self.edge, self.trusted = group, edge, trusted
        self.behaviour, self.has_previous = behaviour, has_previous
        self.commands: list[dict[str, Any]] = []
        self._deploying: dict[str, dict[str, Any]] = {}  # model topic -> its deploy command
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(ncmd_topic(group, edge), 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT), f"{edge}: no SUBACK"
        self._publish(state_topic(group, edge), self._birth(), retain=True)

    def _birth(self) -> bytes:
        state = EdgeState(
            online=True, edge=self.edge, group=self.group, bd_seq=1, model_sha256="0" * 64,
            model_ref="0" * 16, L=4, K=16, D=3, kpi_schema_hash="1" * 64,
            agent_version="test", runtime_version="test", timestamp_ms=int(time.time() * 1000),
        )  # fmt: skip
        return birth_payload(state)

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def _report(self, command: dict[str, Any], step: str, reason: str | None = None) -> None:
        report = DeployReport(
            deployment=command["deployment"], edge=self.edge, group=self.group, step=step,
            model_sha256=command.get("model_sha256"), previous_sha256="0" * 64, reason=reason,
            timestamp_ms=int(time.time() * 1000),
        )  # fmt: skip
        # paho's thread: publish without waiting for the PUBACK
        self.client.publish(deploy_topic(self.group, self.edge), report.to_json(), qos=1)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = parse_topic(msg.topic).kind
        if kind == "NCMD":
            self._on_command(client, parse_command(msg.payload))
        elif kind == "MODEL" and msg.payload and msg.topic in self._deploying:
            self._on_bundle(self._deploying.pop(msg.topic), bytes(msg.payload))

    def _on_command(self, client: mqtt.Client, command: dict[str, Any]) -> None:
        self.commands.append(command)
        topic = deploy_topic(self.group, self.edge)
        client.publish(topic, b"not a report", qos=1)
        client.publish(topic, DeployReport("d-other", self.edge, self.group, "switched",
                                           None, None, None, 0).to_json(), qos=1)  # fmt: skip
        if command["command"] == "deploy":
            self._report(command, "received")
            if self.behaviour != "stall":
                model = model_topic(self.group, command["model_ref"])
                self._deploying[model] = command
                client.subscribe(model, 1)  # the retained bundle arrives on its own
        elif command["command"] == "rollback":
            self._report(command, "rolled_back" if self.has_previous else "failed")

    def _on_bundle(self, command: dict[str, Any], payload: bytes) -> None:
        try:
            bundle = unpack_bundle(payload)
            self.trusted.verify(bundle.signature, signed_message(bundle.manifest_bytes))
            if bundle.encoder_sha256 != command["model_sha256"]:
                raise ModelMismatchError("encoder sha256 differs from the command's")
        except InvalidSignature:
            self._report(command, "rejected", "bad signature")
            return
        except ModelMismatchError as exc:
            self._report(command, "rejected", str(exc))
            return
        self._report(command, "verified")
        self._report(command, "switched")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(
    broker: BrokerConfig, group: str, model_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[Callable[..., Responder]]:
    """Start responders with `fleet(edge, behaviour=..., has_previous=...)`; "reject" ones
    trust another key. Afterwards their births and the model's bundle are cleared."""
    trusted = load_public_key(keys[1])
    stranger = load_public_key(keygen(tmp_path / "stranger")[1])
    started: list[Responder] = []

    def start(edge: str, behaviour: Behaviour = "switch", has_previous: bool = True) -> Responder:
        key = stranger if behaviour == "reject" else trusted
        started.append(Responder(broker, group, edge, key, behaviour, has_previous))
        return started[-1]

    yield start
    for responder in started:
        responder.close()
    ref = ModelManifest.load(model_dir / MANIFEST_FILE).model_ref.hex()
    topics = [state_topic(group, r.edge) for r in started] + [model_topic(group, ref)]
    clear_retained(broker, topics)


def _retained(broker: BrokerConfig, topic: str, wait_s: float) -> bytes | None:
    """The message retained on `topic`, or None when none came within `wait_s`."""
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
    client.on_message = lambda c, u, m: got.put(bytes(m.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        return got.get(timeout=wait_s)
    except queue.Empty:
        return None
    finally:
        client.disconnect()
        client.loop_stop()


def _deploy_args(broker: BrokerConfig, group: str, model_dir: Path, key: Path) -> list[str]:
    return ["deploy", "--broker", broker.url, "--group", group, "--model", str(model_dir),
            "--key", str(key), "--timeout", str(TIMEOUT)]  # fmt: skip


def test_deploy_switches_the_trusting_edge_and_reports_the_rejecting_one(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    keys: tuple[Path, Path],
    fleet: Callable[..., Responder],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet("e-good")
    fleet("e-bad", behaviour="reject")
    assert main([*_deploy_args(broker, group, model_dir, keys[0]), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    manifest = ModelManifest.load(model_dir / MANIFEST_FILE)
    assert (result["group"], result["model_sha256"]) == (group, manifest.model_sha256)
    assert result["model_ref"] == manifest.model_ref.hex()
    assert result["targets"] == ["e-bad", "e-good"]
    assert (result["unknown"], result["timed_out"]) == ([], [])
    assert (result["switched"], result["failed"]) == (1, 1)
    assert result["results"]["e-good"] == {
        "step": "switched",
        "reason": None,
        "steps": ["received", "verified", "switched"],
    }
    assert result["results"]["e-bad"] == {
        "step": "rejected",
        "reason": "bad signature",
        "steps": ["received", "rejected"],
    }
    retained = _retained(broker, model_topic(group, result["model_ref"]), TIMEOUT)
    assert retained is not None and len(retained) == result["bundle_bytes"]
    assert unpack_bundle(retained).manifest_bytes == (model_dir / MANIFEST_FILE).read_bytes()


def test_deploy_to_named_edges_exits_zero_when_all_switch(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    keys: tuple[Path, Path],
    fleet: Callable[..., Responder],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, bad = fleet("e-good"), fleet("e-bad", behaviour="reject")
    args = [*_deploy_args(broker, group, model_dir, keys[0]), "--edges", "e-good"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "e-good: switched"
    assert "1 switched, 0 failed, 0 timed out of 1 edge(s)" in lines[-1]
    assert [c["command"] for c in good.commands] == ["deploy"]
    assert bad.commands == []


def test_canary_of_half_over_two_edges_commands_exactly_one(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    keys: tuple[Path, Path],
    fleet: Callable[..., Responder],
) -> None:
    responders = [fleet("e-1"), fleet("e-2")]
    result = deploy(broker, group, model_dir, keys[0], canary=0.5, timeout_s=TIMEOUT, settle_s=0.5)
    sha = ModelManifest.load(model_dir / MANIFEST_FILE).model_sha256
    assert result["targets"] == choose_targets(["e-1", "e-2"], None, 0.5, sha)
    assert len(result["targets"]) == 1 and result["switched"] == 1
    commanded = [r.edge for r in responders if r.commands]
    assert commanded == result["targets"]
    assert sum(len(r.commands) for r in responders) == 1


def test_edges_that_never_finish_or_were_never_seen_time_out(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    keys: tuple[Path, Path],
    fleet: Callable[..., Responder],
) -> None:
    fleet("e-stuck", behaviour="stall")
    result = deploy(
        broker, group, model_dir, keys[0], edges=["e-stuck", "e-ghost"], timeout_s=1.5, settle_s=0.5
    )
    assert result["targets"] == ["e-ghost", "e-stuck"]
    assert result["unknown"] == ["e-ghost"]
    assert result["timed_out"] == ["e-ghost", "e-stuck"]
    assert (result["switched"], result["failed"]) == (0, 0)
    assert result["results"]["e-stuck"]["steps"] == ["received"]
    assert result["results"]["e-ghost"] == {"step": None, "reason": None, "steps": []}


def test_deploy_to_a_group_with_no_online_edge_exits_two_and_publishes_nothing(
    broker: BrokerConfig,
    group: str,
    model_dir: Path,
    keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_deploy_args(broker, group, model_dir, keys[0])) == 2
    assert f"no online edge in group {group}" in capsys.readouterr().err
    ref = ModelManifest.load(model_dir / MANIFEST_FILE).model_ref.hex()
    assert _retained(broker, model_topic(group, ref), 0.5) is None


def test_rollback_collects_rolled_back_and_failed(
    broker: BrokerConfig,
    group: str,
    fleet: Callable[..., Responder],
    capsys: pytest.CaptureFixture[str],
) -> None:
    back, first = fleet("e-back"), fleet("e-first", has_previous=False)
    result = rollback(broker, group, timeout_s=TIMEOUT, settle_s=0.5)
    assert result["targets"] == ["e-back", "e-first"]
    assert (result["rolled_back"], result["failed"], result["timed_out"]) == (1, 1, [])
    assert result["results"]["e-back"]["steps"] == ["rolled_back"]
    assert result["results"]["e-first"]["step"] == "failed"
    assert back.commands[0] == {"command": "rollback", "deployment": result["deployment"]}
    assert first.commands[0]["command"] == "rollback"
    args = ["rollback", "--broker", broker.url, "--group", group, "--edges", "e-back", "--json"]
    assert main([*args, "--timeout", str(TIMEOUT)]) == 0
    assert json.loads(capsys.readouterr().out)["rolled_back"] == 1
    assert main(["rollback", "--broker", broker.url, "--group", group]) == 1
