"""Signed model deployment to a real agent process through the real Mosquitto.

`sparsetel deploy` (cloud.deploy) publishes a signed bundle and commands the agent; the agent
verifies it, switches between two frames, announces the new model in a fresh birth and
reports each step on DEPLOY. Tampered, unsigned, foreign-signed, mismatched and self-test
failing models are rejected with the old model still running; a model that fails after the
switch is rolled back automatically, the batch re-encoded by the old one; `rollback` returns
to the previous model, and a restarted agent runs the model it was last switched to.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetel.cloud.fleet.keys import build_bundle, keygen, load_private_key
from sparsetel.cloud.fleet.rollout import deploy, rollback
from sparsetel.shared.birth import parse_state
from sparsetel.shared.bundle import Bundle, pack_bundle
from sparsetel.shared.commands import deploy_command, parse_report
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.manifest import KpiNorm, ModelManifest
from sparsetel.shared.rundir import MANIFEST_FILE
from sparsetel.shared.topics import (
    data_topic,
    deploy_topic,
    model_topic,
    ncmd_topic,
    parse_topic,
    state_topic,
)
from sparsetel.shared.wire import decode_frame
from tests.agents import EDGE
from tests.mqttclients import TIMEOUT, Listener
from tests.processes import PIPE, end_process, python
from tests.tinymodel import reference_codes, write_tiny_model

pytestmark = pytest.mark.integration

NEW_BIAS = (1.0, 5.0, 2.0, 4.0)
AGENT = """
import json, sys
from pathlib import Path
from sparsetel.edge.agent import EdgeConfig, run_agent
from sparsetel.shared.config import BrokerConfig
a = json.loads(sys.argv[1])
cfg = EdgeConfig(group=a["group"], edge_id=a["edge"], model=Path(a["model"]), source="-",
                 batch=2, max_batch_delay_s=60.0, state_dir=Path(a["state"]),
                 broker=BrokerConfig(url=a["url"]), probation_frames=3, fetch_timeout_s=5.0,
                 trust_key=Path(a["key"]) if a["key"] else None, health_interval_s=3600,
                 confirm="broker")
raise SystemExit(run_agent(cfg, print_json=True))
"""


class Agent:
    """An agent process reading JSON lines from a pipe, and a listener on its topics; as a
    context manager, killed (unless it has finished) and its listener closed at the end."""

    def __init__(self, tmp: Path, group: str, broker: BrokerConfig, key: Path | None) -> None:
        self.listener = Listener(
            broker, data_topic(group, EDGE), state_topic(group, EDGE), deploy_topic(group, EDGE)
        )
        args = {"group": group, "edge": EDGE, "model": str(tmp / "old"), "url": broker.url}
        args.update(state=str(tmp / "state"), key=str(key) if key else "")
        self.proc = subprocess.Popen(
            python(AGENT, json.dumps(args)), stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        self.births: list[str] = []  # model sha256 of every live birth, in order
        self.reports: list[Any] = []
        self.frames: list[Any] = []
        try:
            self.wait_for(lambda: len(self.births) >= 1, "the first birth")
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def send(self, *rows: tuple[int, int, int]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(json.dumps(list(r)).encode() + b"\n" for r in rows))
        self.proc.stdin.flush()

    def wait_for(self, done: Any, what: str) -> None:
        while not done():
            message = self.listener.next(what)
            kind = parse_topic(message.topic).kind
            if kind == "DATA":
                self.frames.append(decode_frame(bytes(message.payload)))
            elif kind == "DEPLOY":
                self.reports.append(parse_report(bytes(message.payload)))
            elif message.payload and not message.retain:
                state = parse_state(bytes(message.payload))
                if state.online:
                    self.births.append(state.model_sha256)

    def steps(self, deployment: str) -> list[str]:
        return [r.step for r in self.reports if r.deployment == deployment]

    def wait_final(self, deployment: str) -> str:
        final = {"switched", "rejected", "rolled_back", "failed"}
        self.wait_for(lambda: set(self.steps(deployment)) & final, f"{deployment}'s outcome")
        return next(s for s in self.steps(deployment) if s in final)

    def finish(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=TIMEOUT * 2)  # closes stdin: the source ends
        self.listener.close()
        assert self.proc.returncode == 0, err.decode()[-2000:]
        stats: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return stats

    def kill(self) -> None:
        """The process killed unless it has exited, and the listener closed."""
        end_process(self.proc)
        self.listener.close()


@pytest.fixture
def models(tmp_path: Path, keys: tuple[Path, Path]) -> dict[str, Any]:
    """The agent's model (old), the one deployed to it (new) and the key pair signing it."""
    old = write_tiny_model(tmp_path / "old")
    new = write_tiny_model(tmp_path / "new", bias=NEW_BIAS)
    private, public = keys
    return {"old": old, "new": new, "private": private, "public": public}


def _ref(run_dir: Path) -> str:
    return ModelManifest.load(run_dir / MANIFEST_FILE).model_ref.hex()


def _sha(run_dir: Path) -> str:
    return ModelManifest.load(run_dir / MANIFEST_FILE).model_sha256


def test_a_signed_model_is_switched_to_between_frames_and_rolled_back_on_command(
    broker: BrokerConfig,
    group: str,
    models: dict[str, Any],
    tmp_path: Path,
    retained: list[str],
) -> None:
    retained.append(model_topic(group, _ref(models["new"])))
    with Agent(tmp_path, group, broker, models["public"]) as agent:
        agent.send((1, 2, 3), (4, 5, 6), (7, 8, 9))  # frame 0 and half of frame 1
        agent.wait_for(lambda: len(agent.frames) >= 1, "frame 0")
        result = deploy(broker, group, models["new"], models["private"], timeout_s=TIMEOUT)
        agent.send((1, 1, 1), (2, 2, 2), (3, 3, 3))
        agent.wait_for(lambda: len(agent.frames) >= 3, "frames 1 and 2")
        back = rollback(broker, group, timeout_s=TIMEOUT)
        agent.send((5, 5, 5), (6, 6, 6))
        agent.wait_for(lambda: len(agent.frames) >= 4, "frame 3")
        agent.wait_for(lambda: len(agent.births) >= 3, "the births")
        stats = agent.finish()

    assert result["targets"] == [EDGE] and result["switched"] == 1, result
    assert agent.steps(result["deployment"]) == ["received", "verified", "switched"]
    assert back["results"][EDGE]["step"] == "rolled_back", back
    old, new = _sha(models["old"]), _sha(models["new"])
    assert agent.births == [old, new, old]  # a fresh birth names each switch
    # Every measurement once, each frame encoded whole by the model its header names.
    sent = [(1, 2, 3), (4, 5, 6), (7, 8, 9), (1, 1, 1), (2, 2, 2), (3, 3, 3), (5, 5, 5), (6, 6, 6)]
    refs = [f.model_ref.hex() for f in agent.frames]
    assert refs == [old[:16], new[:16], new[:16], old[:16]]
    got = [r.codes for f in agent.frames for r in f.records]
    rows = np.array(sent, np.float32)
    want = (
        reference_codes(rows[:2]) + reference_codes(rows[2:6], NEW_BIAS) + reference_codes(rows[6:])
    )
    assert got == want
    assert (stats["switches"], stats["rollbacks"], stats["rejects"]) == (1, 1, {})


def test_a_restarted_agent_runs_the_model_it_was_last_switched_to(
    broker: BrokerConfig,
    group: str,
    models: dict[str, Any],
    tmp_path: Path,
    retained: list[str],
) -> None:
    retained.append(model_topic(group, _ref(models["new"])))
    with Agent(tmp_path, group, broker, models["public"]) as agent:
        result = deploy(broker, group, models["new"], models["private"], timeout_s=TIMEOUT)
        agent.finish()
    assert result["switched"] == 1, result
    with Agent(tmp_path, group, broker, models["public"]) as again:
        again.send((1, 2, 3), (4, 5, 6))
        again.wait_for(lambda: len(again.frames) >= 1, "frame 0")
        stats = again.finish()
    assert again.births == [_sha(models["new"])]
    assert again.frames[0].model_ref.hex() == _ref(models["new"])
    assert stats["model_sha256"] == _sha(models["new"])


def _bad_bundles(models: dict[str, Any], tmp_path: Path) -> dict[str, tuple[Bundle, str]]:
    """Bundles of the new model that must be refused, with a word of the expected reason."""
    key = load_private_key(models["private"])
    good = build_bundle(models["new"], key)
    other_private, _ = keygen(tmp_path / "other-keys")
    foreign = build_bundle(models["new"], load_private_key(other_private))
    tampered = replace(good, encoder=good.encoder[:-1] + bytes([good.encoder[-1] ^ 1]))
    # Another KPI schema, and wrong probe codes: each signed, so only that check refuses it.
    manifest = ModelManifest.load(models["new"] / MANIFEST_FILE)
    kpis = ("RSRP", "RSRQ", "CQI")
    schema = replace(manifest, kpis=kpis, norms=tuple(KpiNorm(k, 0.0, 1.0) for k in kpis))
    probes = replace(manifest, probe_codes=((0,),) * len(manifest.probe_codes))
    signed = {}
    for name, changed in (("schema", schema), ("probes", probes)):
        run = tmp_path / name
        run.mkdir()
        (run / "encoder.onnx").write_bytes(good.encoder)
        changed.save(run / MANIFEST_FILE)
        signed[name] = build_bundle(run, key)
    return {
        "unsigned": (replace(good, signature=b""), "unsigned"),
        "foreign": (foreign, "signature"),
        "tampered": (tampered, "sha256"),
        "schema": (signed["schema"], "CQI"),
        "probes": (signed["probes"], "self-test"),
    }


def test_tampered_unsigned_foreign_or_mismatched_models_are_rejected_and_the_old_one_runs(
    broker: BrokerConfig,
    group: str,
    models: dict[str, Any],
    tmp_path: Path,
    retained: list[str],
) -> None:
    ref, sha = _ref(models["new"]), _sha(models["new"])
    topic = model_topic(group, ref)
    retained.append(topic)
    bad = _bad_bundles(models, tmp_path)
    outcomes = {}
    with Agent(tmp_path, group, broker, models["public"]) as agent:
        for name, (bundle, _) in bad.items():
            agent.listener.publish(topic, pack_bundle(bundle), retain=True)
            agent.listener.publish(ncmd_topic(group, EDGE), deploy_command(name, ref, sha))
            outcomes[name] = agent.wait_final(name)
        agent.send((1, 2, 3), (4, 5, 6))
        agent.wait_for(lambda: len(agent.frames) >= 1, "a frame after the rejections")
        stats = agent.finish()
    assert outcomes == dict.fromkeys(bad, "rejected")
    for name, (_, word) in bad.items():
        reasons = [r.reason for r in agent.reports if r.deployment == name and r.reason]
        assert reasons and word in reasons[-1], (name, reasons)
        assert agent.steps(name) == ["received", "rejected"]
    assert agent.frames[0].model_ref.hex() == _ref(models["old"])
    assert agent.births == [_sha(models["old"])]  # no new birth: nothing switched
    assert stats["switches"] == 0 and not (tmp_path / "state" / "models" / ref).exists()


def test_an_agent_without_a_trust_key_refuses_every_deployment(
    broker: BrokerConfig,
    group: str,
    models: dict[str, Any],
    tmp_path: Path,
    retained: list[str],
) -> None:
    retained.append(model_topic(group, _ref(models["new"])))
    with Agent(tmp_path, group, broker, None) as agent:
        result = deploy(broker, group, models["new"], models["private"], timeout_s=TIMEOUT)
        agent.finish()
    assert result["results"][EDGE]["step"] == "rejected"
    assert "trust-key" in result["results"][EDGE]["reason"]
    assert agent.births == [_sha(models["old"])]


def test_a_model_failing_after_the_switch_is_rolled_back_and_its_batch_reencoded(
    broker: BrokerConfig,
    group: str,
    models: dict[str, Any],
    tmp_path: Path,
    retained: list[str],
) -> None:
    # Its probes pass, so it verifies; but it does not sort its codes, which the agent's
    # output check catches on the first measurement whose codes come out of order.
    probes = ((1.0, -3.0, 2.0), (1.0, -2.0, 4.0), (1.0, -1.0, 5.0))
    shaky = write_tiny_model(tmp_path / "shaky", broken="unsorted", probes=probes)
    retained.append(model_topic(group, _ref(shaky)))
    with Agent(tmp_path, group, broker, models["public"]) as agent:
        result = deploy(broker, group, shaky, models["private"], timeout_s=TIMEOUT)
        agent.send((1, -3, 2), (1, -2, 4))  # fine with the shaky model: frame 0
        agent.send((-5, -7, 40), (0, -3, 9))  # out of order: rolled back, re-encoded
        agent.wait_for(lambda: len(agent.frames) >= 2, "frames 0 and 1")
        agent.wait_for(lambda: "rolled_back" in agent.steps(result["deployment"]), "rollback")
        agent.wait_for(lambda: len(agent.births) >= 3, "the births")
        stats = agent.finish()
    assert result["switched"] == 1, result
    assert agent.steps(result["deployment"]) == ["received", "verified", "switched", "rolled_back"]
    old = _sha(models["old"])
    assert agent.births == [old, _sha(shaky), old]
    assert [f.model_ref.hex() for f in agent.frames] == [_ref(shaky), old[:16]]
    rows = np.array([(-5, -7, 40), (0, -3, 9)], np.float32)
    assert [r.codes for r in agent.frames[1].records] == reference_codes(rows)
    assert stats["rejects"] == {} and stats["measurements"] == 4 and stats["rollbacks"] == 1
