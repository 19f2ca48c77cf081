"""Deployment messages (shared.deployment) and the edge's model store and trust key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sparsetel.cloud.fleet.keys import keygen
from sparsetel.edge.updater import ActiveModels, ModelStore, load_trust_key
from sparsetel.shared.bundle import Bundle
from sparsetel.shared.commands import (
    DeployReport,
    deploy_command,
    parse_command,
    parse_report,
    rollback_command,
)
from sparsetel.shared.errors import ConfigError

SHA = "0123456789abcdef" * 4


def test_commands_round_trip() -> None:
    assert parse_command(deploy_command("d-1", SHA[:16], SHA)) == {
        "command": "deploy",
        "deployment": "d-1",
        "model_ref": SHA[:16],
        "model_sha256": SHA,
    }
    assert parse_command(rollback_command("d-2")) == {"command": "rollback", "deployment": "d-2"}
    assert parse_command(b"rebirth") == {"command": "rebirth"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b'{"x": 1}', "no command"),
        (b'{"command": "deploy", "model_ref": "0123456789abcdef"}', "bad deployment id"),
        (b'{"command": "rollback", "deployment": "a/b"}', "bad deployment id"),
        (
            json.dumps({"command": "deploy", "deployment": "d", "model_ref": "x" * 16}).encode(),
            "bad model_ref",
        ),
        (  # a ref that is not the start of the sha256
            json.dumps(
                {"command": "deploy", "deployment": "d", "model_ref": "f" * 16, "model_sha256": SHA}
            ).encode(),
            "bad model_ref",
        ),
    ],
)
def test_bad_commands_become_invalid_with_a_reason(payload: bytes, reason: str) -> None:
    command = parse_command(payload)
    assert command["command"] == "invalid" and reason in command["reason"]


def test_reports_round_trip_and_bad_ones_are_refused() -> None:
    report = DeployReport("d-1", "e", "g", "switched", SHA, None, None, 5)
    assert parse_report(report.to_json()) == report and report.final
    assert not DeployReport("d-1", "e", "g", "verified", SHA, None, None, 5).final
    for bad in (b"x", b"[]", b'{"deployment": "d"}', report.to_json().replace(b"switched", b"x")):
        with pytest.raises(ValueError):
            parse_report(bad)


def test_the_trust_key_must_be_an_ed25519_public_key(tmp_path: Path) -> None:
    private, public = keygen(tmp_path)
    assert load_trust_key(public) is not None
    with pytest.raises(ConfigError, match="trust_key"):
        load_trust_key(tmp_path / "missing.pub")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_trust_key(private)
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_trust_key(tmp_path / "junk.pub")
    # a PEM public key of another kind is refused by name

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pub").write_bytes(
        other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_trust_key(tmp_path / "ec.pub")


def test_the_model_store_keeps_bundles_and_records_the_active_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.read_active() is None
    run = store.save(Bundle(b"{}", b"sig", b"onnx"), "0123456789abcdef")
    assert (run / "encoder.onnx").read_bytes() == b"onnx"
    assert (run / "manifest.json").read_bytes() == b"{}"
    assert (run / "manifest.sig").read_bytes() == b"sig"
    assert [p.name for p in store.root.iterdir()] == ["0123456789abcdef"]  # no temporary left
    active = ActiveModels("/base", str(run), "/base")
    store.write_active(active)
    assert store.read_active() == active
    (store.root / "active.json").write_text("{broken")
    assert store.read_active() is None  # a broken record is ignored, not fatal
    store.discard(run)
    assert not run.exists()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.discard(outside)
    assert outside.exists()  # never removes what is not in the store
