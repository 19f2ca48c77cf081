"""What deploy/ ships: service units that start real sparsetel commands, the broker
provisioning script's fleet parsing and ACL, and broker configs that hold, not drop, what
waits (persistence, deep queues) and refuse oversized packets."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from sparsetel.cli import _build_parser
from sparsetel.shared.bundle import MAX_BUNDLE_BYTES
from sparsetel.shared.wire import MAX_FRAME_BYTES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted(DEPLOY.glob("systemd/*.service"))


def _provision() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "provision", DEPLOY / "mosquitto" / "provision.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_service_unit_runs_a_command_the_cli_accepts(unit: Path) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    assert parser["Service"]["EnvironmentFile"].startswith("/etc/sparsetel/credentials/")
    argv = shlex.split(parser["Service"]["ExecStart"].replace("%i", "gnb-0042"))
    assert Path(argv[0]).name == "sparsetel"
    args = _build_parser().parse_args(argv[1:])  # SystemExit (a failure) on an unknown flag
    assert args.command in ("edge", "serve")
    assert parser["Service"]["KillSignal"] == "SIGTERM" and parser["Service"]["Restart"]


def test_the_units_cover_edge_and_cloud() -> None:
    assert {u.name for u in UNITS} == {"sparsetel-edge@.service", "sparsetel-serve.service"}


def test_the_fleet_file_is_checked_line_by_line(tmp_path: Path) -> None:
    provision = _provision()
    good = tmp_path / "good.csv"
    good.write_text("group,edge\nsite-a, e1\n\nsite-b,e2\n")
    assert provision.read_fleet(good) == [("site-a", "e1"), ("site-b", "e2")]
    for text, word in (
        ("site-a,e/1\n", ":1:"),
        ("site-a,e1\nsite-b,e1\n", "twice"),
        ("site-a\n", ":1:"),
        ("group,edge\n", "no edge"),
        ("site-a,sparsetel-cloud\n", "twice"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(provision.ProvisionError, match=word):
            provision.read_fleet(bad)


def test_the_acl_gives_each_edge_its_own_topics_and_the_cloud_all() -> None:
    acl = _provision().acl_text([("site-a", "e1")]).splitlines()
    assert acl[1:3] == ["user sparsetel-cloud", "topic readwrite sparsetel/#"]
    start = acl.index("user e1")
    assert acl[start + 1 : start + 8] == [
        "topic write sparsetel/v1/site-a/DATA/e1",
        "topic write sparsetel/v1/site-a/STATE/e1",
        "topic write sparsetel/v1/site-a/HEALTH/e1",
        "topic write sparsetel/v1/site-a/DEPLOY/e1",
        "topic read sparsetel/v1/site-a/NCMD/e1",
        "topic read sparsetel/v1/site-a/ACK/e1",
        "topic read sparsetel/v1/site-a/MODEL/#",
    ]
    assert not any("#" in line and "e1" in line for line in acl)  # no wildcard of its own


def test_the_example_configs_load_and_the_edge_confirms_by_the_store() -> None:
    from sparsetel.cloud.ingest.service import ServeConfig
    from sparsetel.edge.settings import EdgeConfig
    from sparsetel.shared.config import load_config

    edge = load_config(EdgeConfig, DEPLOY / "examples" / "edge.toml", environ={})
    assert (edge.confirm, edge.confirm_wait_s) == ("store", 30.0)
    serve = load_config(ServeConfig, DEPLOY / "examples" / "serve.toml", environ={})
    assert serve.group in ("+", edge.group) and serve.metrics == "127.0.0.1:9108"
    assert not serve.clean_session  # a persistent session under a stable, derived id


def _options(text: str) -> dict[str, str]:
    """A Mosquitto config's options (the last of each), comments left out."""
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip())
    return {key: value.strip() for key, value in pairs if not key.startswith("#")}


def _shipped_broker_configs(tmp_path: Path) -> dict[str, dict[str, str]]:
    conf = _provision().conf_text(tmp_path, 8883, "0.0.0.0", Path("/var/lib/mosquitto"), "mosq")
    return {
        "dev.conf": _options((DEPLOY / "mosquitto" / "dev.conf").read_text()),
        "provision.py": _options(conf),
    }


def test_every_shipped_broker_config_keeps_sessions_and_holds_what_waits(tmp_path: Path) -> None:
    for name, options in _shipped_broker_configs(tmp_path).items():
        assert options["persistence"] == "true", name
        assert Path(options["persistence_location"]).is_absolute(), name
        assert int(options["max_queued_messages"]) >= 100_000, name  # the default 1000 drops
        assert int(options["max_queued_bytes"]) >= 64 * 2**20, name
        assert int(options["max_inflight_messages"]) <= 1000, name
        assert options["persistent_client_expiration"].endswith("d"), name


def test_every_shipped_broker_config_bounds_packets_above_a_frame_and_a_bundle(
    tmp_path: Path,
) -> None:
    for name, options in _shipped_broker_configs(tmp_path).items():
        size = int(options["max_packet_size"])
        # a frame or a bundle plus MQTT's fixed header, topic and packet id; no more
        assert MAX_FRAME_BYTES + 1024 < size <= 16 * 2**20, name
        assert size > MAX_BUNDLE_BYTES + 1024, name


def test_the_broker_unit_hands_the_persistence_folder_to_the_user_mosquitto_runs_as() -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(DEPLOY / "mosquitto" / "sparsetel-broker.service")
    service = parser["Service"]
    assert shlex.split(service["ExecStart"])[-1] == "/etc/sparsetel/broker/mosquitto.conf"
    # provision.py's defaults: --data /var/lib/mosquitto, --run-as mosquitto
    pre = shlex.split(service["ExecStartPre"])
    assert pre[:2] == ["/usr/bin/install", "-d"] and pre[-1] == "/var/lib/mosquitto"
    assert pre[pre.index("-o") + 1] == "mosquitto"
    source = (DEPLOY / "mosquitto" / "provision.py").read_text()
    assert 'default=Path("/var/lib/mosquitto")' in source and 'default="mosquitto"' in source


def test_the_dev_broker_keeps_its_database_where_anyone_can_write() -> None:
    options = _options((DEPLOY / "mosquitto" / "dev.conf").read_text())
    folder = Path(options["persistence_location"])
    assert folder.is_dir() and os.access(folder, os.W_OK)
    assert folder.stat().st_mode & 0o1002 == 0o1002  # world-writable with the sticky bit


def test_provision_warns_when_mosquitto_could_not_write_its_database(tmp_path: Path) -> None:
    provision = _provision()
    data = tmp_path / "mosquitto"
    data.mkdir(mode=0o700)
    if os.getuid() == 65534:
        pytest.skip("the test runs as nobody, the user it needs as a stranger")
    assert "not writable by nobody" in provision.data_warning(data, "nobody")
    data.chmod(0o1777)
    assert provision.data_warning(data, "nobody") is None
    assert provision.data_warning(data, "no-such-user-here") is None
