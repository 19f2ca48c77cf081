"""What deploy/ ships: service units that start real sparsetel commands, and the broker
provisioning script's fleet parsing and ACL."""

from __future__ import annotations

import configparser
import importlib.util
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from sparsetel.cli import _build_parser

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
    from sparsetel.cloud.service import ServeConfig
    from sparsetel.edge.config import EdgeConfig
    from sparsetel.shared.config import load_config

    edge = load_config(EdgeConfig, DEPLOY / "examples" / "edge.toml", environ={})
    assert (edge.confirm, edge.confirm_wait_s) == ("store", 30.0)
    serve = load_config(ServeConfig, DEPLOY / "examples" / "serve.toml", environ={})
    assert serve.group in ("+", edge.group) and serve.broker.client_id is not None
