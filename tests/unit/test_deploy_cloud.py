"""The cloud side of model deployment without a broker: keys, signed bundles, target choice,
and the exit codes of `sparsetel keygen` / `deploy` / `rollback` for bad input."""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sparsetel.cli import main
from sparsetel.cloud.fleet.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    build_bundle,
    keygen,
    load_private_key,
    load_public_key,
)
from sparsetel.cloud.fleet.rollout import broker_from_flags, choose_targets, new_deployment_id
from sparsetel.shared.bundle import pack_bundle, signed_message, unpack_bundle
from sparsetel.shared.errors import ConfigError, ModelMismatchError
from sparsetel.shared.rundir import ENCODER_FILE, MANIFEST_FILE
from sparsetel.shared.topics import validate_id
from tests.tinymodel import write_tiny_model

EDGES = [f"edge-{i:02d}" for i in range(25)]
KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "run")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- keys


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys: tuple[Path, Path]) -> None:
    private_path, public_path = keys
    assert (private_path.name, public_path.name) == (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE)
    assert _mode(private_path) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_loaded_keys_sign_and_verify(keys: tuple[Path, Path]) -> None:
    private_key, public_key = load_private_key(keys[0]), load_public_key(keys[1])
    signature = private_key.sign(b"message")
    public_key.verify(signature, b"message")
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, b"other message")


def test_keygen_refuses_to_overwrite_a_key(keys: tuple[Path, Path]) -> None:
    before = keys[0].read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keygen(keys[0].parent)
    assert keys[0].read_bytes() == before


def test_keygen_refuses_when_only_the_public_key_is_there(tmp_path: Path) -> None:
    (tmp_path / PUBLIC_KEY_FILE).write_text("someone's key")
    with pytest.raises(ConfigError, match=PUBLIC_KEY_FILE):
        keygen(tmp_path)
    assert not (tmp_path / PRIVATE_KEY_FILE).exists()


def test_keygen_with_force_writes_a_new_private_key_still_0600(keys: tuple[Path, Path]) -> None:
    keys[0].chmod(0o644)  # a loose old key must not lend its permissions to the new one
    before = keys[0].read_bytes()
    private_path, _ = keygen(keys[0].parent, force=True)
    assert private_path.read_bytes() != before
    assert _mode(private_path) == 0o600
    assert sorted(p.name for p in private_path.parent.iterdir()) == [
        PRIVATE_KEY_FILE,
        PUBLIC_KEY_FILE,
    ]


def test_load_private_key_explains_what_is_wrong(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="cannot read the private key"):
        load_private_key(tmp_path / "absent")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(keys[1])  # the public half
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(ec_key)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        load_private_key(keys[0]).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="not an unencrypted"):
        load_private_key(encrypted)


def test_load_public_key_explains_what_is_wrong(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="cannot read the public key"):
        load_public_key(tmp_path / "absent")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(keys[0])
    ec_public = tmp_path / "ec.pub"
    ec_public.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_key(ec_public)


def test_loading_a_private_key_others_can_read_warns(
    keys: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    keys[0].chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="sparsetel.cloud.fleet.keys"):
        load_private_key(keys[0])
    assert "readable by others" in caplog.text


# --------------------------------------------------------------------------- bundle


def test_build_bundle_signs_the_exact_files(run_dir: Path, keys: tuple[Path, Path]) -> None:
    bundle = build_bundle(run_dir, load_private_key(keys[0]))
    assert bundle.manifest_bytes == (run_dir / MANIFEST_FILE).read_bytes()
    assert bundle.encoder == (run_dir / ENCODER_FILE).read_bytes()
    load_public_key(keys[1]).verify(bundle.signature, signed_message(bundle.manifest_bytes))
    assert unpack_bundle(pack_bundle(bundle)) == bundle


def test_a_signature_from_another_key_does_not_verify(
    run_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    other_private, _ = keygen(tmp_path / "other")
    bundle = build_bundle(run_dir, load_private_key(other_private))
    with pytest.raises(InvalidSignature):
        load_public_key(keys[1]).verify(bundle.signature, signed_message(bundle.manifest_bytes))


def test_build_bundle_refuses_an_encoder_the_manifest_does_not_name(
    run_dir: Path, keys: tuple[Path, Path]
) -> None:
    with open(run_dir / ENCODER_FILE, "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(ModelMismatchError, match="export the run again"):
        build_bundle(run_dir, load_private_key(keys[0]))


def test_build_bundle_refuses_a_broken_or_missing_manifest(
    run_dir: Path, keys: tuple[Path, Path]
) -> None:
    key = load_private_key(keys[0])
    (run_dir / MANIFEST_FILE).write_text('{"manifest_version": 1}')
    with pytest.raises(ModelMismatchError, match="manifest"):
        build_bundle(run_dir, key)
    (run_dir / MANIFEST_FILE).unlink()
    with pytest.raises(ModelMismatchError, match="cannot read"):
        build_bundle(run_dir, key)


def test_deployment_ids_are_valid_ids_named_by_utc_time() -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    ident = new_deployment_id(when)
    assert re.fullmatch(r"d-20250304T050607-[0-9a-f]{6}", ident)
    assert validate_id(ident) == ident
    assert new_deployment_id(when) != ident


# --------------------------------------------------------------------------- targets


def test_no_flags_target_every_online_edge() -> None:
    assert choose_targets(["b", "a", "c"], None, None, KEY_A) == ["a", "b", "c"]


def test_named_edges_are_targeted_even_when_not_seen_online(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sparsetel.cloud.fleet.rollout"):
        targets = choose_targets(["a", "b"], ["b", "ghost", "b"], None, KEY_A)
    assert targets == ["b", "ghost"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "ghost" in warned[0]


@pytest.mark.parametrize(("share", "n"), [(0.1, 3), (0.04, 1), (0.001, 1), (0.5, 13), (1.0, 25)])
def test_canary_takes_the_share_rounded_up(share: float, n: int) -> None:
    assert len(choose_targets(EDGES, None, share, KEY_A)) == n


def test_canary_share_that_is_exact_in_decimal_is_not_rounded_up_by_float_error() -> None:
    assert len(choose_targets(EDGES[:10], None, 0.3, KEY_A)) == 3  # 0.3 * 10 = 3.0000000000000004


def test_canary_is_deterministic_and_depends_on_the_key() -> None:
    shuffled = random.Random(1).sample(EDGES, len(EDGES))
    picks = choose_targets(EDGES, None, 0.2, KEY_A)
    assert choose_targets(shuffled, None, 0.2, KEY_A) == picks
    assert choose_targets(EDGES, None, 0.2, KEY_B) != picks
    assert set(picks) <= set(EDGES)


def test_a_wider_canary_keeps_the_edges_of_a_narrower_one() -> None:
    narrow = choose_targets(EDGES, None, 0.1, KEY_A)
    assert set(narrow) <= set(choose_targets(EDGES, None, 0.5, KEY_A))


@pytest.mark.parametrize(
    ("online", "edges", "canary", "message"),
    [
        (EDGES, ["a"], 0.5, "not both"),
        (EDGES, None, 0.0, "canary"),
        (EDGES, None, 1.5, "canary"),
        (EDGES, None, float("nan"), "canary"),
        (EDGES, [], None, "names no edge"),
        (EDGES, ["bad/id"], None, "edges"),
        ([], None, None, "no online edge in group g1"),
        ([], None, 0.5, "no online edge"),
    ],
)
def test_choose_targets_refuses(
    online: list[str], edges: list[str] | None, canary: float | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_targets(online, edges, canary, KEY_A, group="g1")


# --------------------------------------------------------------------------- CLI


def test_cli_keygen_prints_the_paths_and_refuses_a_second_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path), "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths == {
        "private_key": str(tmp_path / PRIVATE_KEY_FILE),
        "public_key": str(tmp_path / PUBLIC_KEY_FILE),
    }
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path), "--force"]) == 0


@pytest.mark.parametrize(
    ("flags", "exit_code", "message"),
    [
        ({"--edges": "a", "--canary": "0.5"}, 2, "not allowed with"),
        ({"--canary": "1.5"}, 2, "canary"),
        ({"--edges": "bad/id"}, 2, "edges"),
        ({"--timeout": "0"}, 2, "timeout"),
        ({"--group": "bad/group"}, 2, "group"),
        ({"--key": "absent.pem"}, 2, "cannot read the private key"),
        ({"--model": "absent-run"}, 1, "cannot read"),
        ({"--broker": "http://x"}, 2, "broker.url"),
    ],
)
def test_cli_deploy_refuses_bad_input_before_touching_the_broker(
    run_dir: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: dict[str, str],
    exit_code: int,
    message: str,
) -> None:
    monkeypatch.chdir(run_dir.parent)
    # a port nothing listens on: reaching for the broker would exit 1 with another message
    given = {"--group": "g", "--model": str(run_dir), "--key": str(keys[0])}
    given |= {"--broker": "mqtt://127.0.0.1:9", **flags}
    assert main(["deploy", *(item for pair in given.items() for item in pair)]) == exit_code
    assert message in capsys.readouterr().err


def test_cli_rollback_refuses_a_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["rollback", "--group", "g", "--timeout", "-1", "--broker", "mqtt://127.0.0.1:9"]
    assert main(args) == 2
    assert "timeout" in capsys.readouterr().err


def test_deploy_with_an_unreachable_broker_exits_one(
    run_dir: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["deploy", "--group", "g", "--model", str(run_dir), "--key", str(keys[0])]
    assert main([*args, "--broker", "mqtt://127.0.0.1:9"]) == 1
    assert "cannot connect to broker" in capsys.readouterr().err


# --------------------------------------------------------------------------- broker config


def test_broker_comes_from_file_then_environment_then_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('[broker]\nurl = "mqtt://file-host:1884"\nusername = "from-file"\n')
    monkeypatch.setenv("SPARSETEL_MQTT_USERNAME", "from-env")
    monkeypatch.setenv("SPARSETEL_MQTT_PASSWORD", "pw")
    broker = broker_from_flags(argparse.Namespace(config=config, broker=None))
    assert (broker.url, broker.username, broker.password) == (
        "mqtt://file-host:1884",
        "from-env",
        "pw",
    )
    broker = broker_from_flags(argparse.Namespace(config=config, broker="mqtt://flag-host"))
    assert broker.host == "flag-host"


def test_broker_password_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text('[broker]\nusername = "u"\npassword = "hunter2"\n')
    with pytest.raises(ConfigError, match="SPARSETEL_MQTT_PASSWORD"):
        broker_from_flags(argparse.Namespace(config=config, broker=None))
