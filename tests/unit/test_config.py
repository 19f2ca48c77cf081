"""Config loading: types and keys checked with dotted paths, precedence, secrets kept secret."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pytest

from sparsetel.shared.config import (
    BrokerConfig,
    build,
    dump_config,
    env_field,
    load_config,
    parse_broker_url,
)
from sparsetel.shared.errors import ConfigError


@dataclass(frozen=True)
class Spool:
    path: Path = Path("spool")
    max_mb: int = 100


@dataclass(frozen=True)
class App:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    spool: Spool = field(default_factory=Spool)
    batch: int = 50
    ratio: float = 0.5
    verbose: bool = False
    kpis: tuple[str, ...] = ("RSRP", "SNR")
    window: tuple[int, int] = (0, 10)
    mode: Literal["live", "replay"] = "live"
    group: str | None = None
    retries: int = env_field("RETRIES", default=3)


@dataclass(frozen=True)
class Named:
    name: str
    size: int = 1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path | None = None, env: dict[str, str] | None = None, **overrides: object) -> App:
    return load_config(App, path, "SPARSETEL_", overrides, environ=env or {})


# --------------------------------------------------------------------------- build


def test_defaults_when_nothing_is_given() -> None:
    assert load() == App()


def test_file_values_fill_nested_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, """
batch = 10
ratio = 1
kpis = ["RSRP", "DL bitrate"]
window = [5, 6]
mode = "replay"
[broker]
url = "mqtts://broker.example.com"
keepalive = 60
tls_ca = "/etc/ca.pem"
[spool]
path = "/var/spool/st"
""")  # fmt: skip
    cfg = load(path)
    assert (cfg.batch, cfg.ratio, cfg.mode) == (10, 1.0, "replay")
    assert isinstance(cfg.ratio, float)
    assert cfg.kpis == ("RSRP", "DL bitrate") and cfg.window == (5, 6)
    assert cfg.broker.port == 8883 and cfg.broker.tls and cfg.broker.keepalive == 60
    assert cfg.broker.tls_ca == Path("/etc/ca.pem") and cfg.spool.path == Path("/var/spool/st")
    assert cfg.spool.max_mb == 100


BAD_DATA = [
    ("unknown_top", {"batchsize": 5}, "batchsize"),
    ("unknown_nested", {"broker": {"uri": "mqtt://h"}}, "broker.uri"),
    ("int_as_string", {"batch": "50"}, "batch"),
    ("int_as_bool", {"batch": True}, "batch"),
    ("int_as_float", {"batch": 5.0}, "batch"),
    ("bool_as_int", {"verbose": 1}, "verbose"),
    ("float_as_string", {"ratio": "0.5"}, "ratio"),
    ("nested_wrong_type", {"spool": {"max_mb": "big"}}, "spool.max_mb"),
    ("deep_wrong_type", {"broker": {"keepalive": "30"}}, "broker.keepalive"),
    ("table_as_scalar", {"broker": "mqtt://h"}, "broker"),
    ("tuple_as_string", {"kpis": "RSRP"}, "kpis"),
    ("tuple_item_type", {"kpis": ["RSRP", 3]}, "kpis[1]"),
    ("fixed_tuple_length", {"window": [1, 2, 3]}, "window"),
    ("literal_not_allowed", {"mode": "batch"}, "mode"),
    ("literal_wrong_type", {"broker": {"protocol": 5}}, "broker.protocol"),
    ("optional_wrong_type", {"group": 7}, "group"),
    ("path_empty", {"spool": {"path": ""}}, "spool.path"),
    ("null_for_required_type", {"batch": None}, "batch"),
    ("bad_url", {"broker": {"url": "http://h"}}, "broker.url"),
    ("keepalive_range", {"broker": {"keepalive": 70000}}, "broker.keepalive"),
    ("password_without_user", {"broker": {"password": "pw"}}, "broker.password"),
    ("ca_without_tls", {"broker": {"tls_ca": "/ca.pem"}}, "broker.tls_ca"),
    ("empty_client_id", {"broker": {"client_id": ""}}, "broker.client_id"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "key"), [b[1:] for b in BAD_DATA], ids=[b[0] for b in BAD_DATA])
def test_build_rejects_with_dotted_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(App, data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        build(App, {"bacth": 1})


def test_build_reports_missing_required_key() -> None:
    with pytest.raises(ConfigError) as info:
        build(Named, {"size": 2}, prefix="model")
    assert info.value.key == "model.name"
    assert build(Named, {"name": "x"}) == Named("x")


def test_build_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        build(dict, {})


# --------------------------------------------------------------------------- precedence


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'retries = 5\nbatch = 10\n[broker]\nusername = "file-user"\n')
    env = {"SPARSETEL_MQTT_USERNAME": "env-user", "SPARSETEL_RETRIES": "7"}
    assert load(path).broker.username == "file-user"
    assert load(path).retries == 5
    from_env = load(path, env)
    assert (from_env.broker.username, from_env.retries, from_env.batch) == ("env-user", 7, 10)
    flags = load(path, env, **{"broker.username": "flag-user", "retries": 9, "batch": 20})
    assert (flags.broker.username, flags.retries, flags.batch) == ("flag-user", 9, 20)


def test_flag_given_as_none_is_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "batch = 10\n")
    assert load(path, batch=None).batch == 10


def test_nested_flag_mapping_keeps_other_file_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nurl = "mqtt://a:1884"\nkeepalive = 45\n')
    cfg = load(path, broker={"url": "mqtt://b", "client_id": None})
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.keepalive) == ("b", 1883, 45)


def test_environment_is_read_only_for_env_fields() -> None:
    assert load(env={"SPARSETEL_BATCH": "3", "SPARSETEL_BROKER_URL": "mqtt://x"}) == App()


def test_empty_environment_variable_counts_as_unset() -> None:
    assert load(env={"SPARSETEL_MQTT_USERNAME": ""}).broker.username is None


def test_environment_value_of_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SPARSETEL_RETRIES": "many"})
    assert info.value.key == "retries"


def test_env_prefix_without_underscore_works() -> None:
    env = {"SPARSETEL_MQTT_USERNAME": "u"}
    assert load_config(App, None, "SPARSETEL", {}, environ=env).broker.username == "u"


def test_missing_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "batch = = 1"))


# --------------------------------------------------------------------------- secrets

SECRET_ENV = {"SPARSETEL_MQTT_USERNAME": "edge-1", "SPARSETEL_MQTT_PASSWORD": "s3cret-pw"}


def test_password_comes_from_the_environment() -> None:
    assert load(env=SECRET_ENV).broker.password == "s3cret-pw"


def test_password_in_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nusername = "u"\npassword = "pw"\n')
    with pytest.raises(ConfigError) as info:
        load(path, SECRET_ENV)
    assert info.value.key == "broker.password"
    assert "SPARSETEL_MQTT_PASSWORD" in str(info.value) and "pw" not in str(info.value).split()


def test_password_as_flag_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load(env=SECRET_ENV, **{"broker.password": "pw"})
    assert info.value.key == "broker.password"


def test_password_is_hidden_from_repr_and_dump() -> None:
    cfg = load(env=SECRET_ENV)
    assert "s3cret-pw" not in repr(cfg) and "s3cret-pw" not in str(cfg.broker)
    dumped = dump_config(cfg)
    assert "password" not in dumped["broker"]
    assert "s3cret-pw" not in json.dumps(dumped)


def test_dump_config_reads_back_without_secrets() -> None:
    cfg = replace(load(env=SECRET_ENV), kpis=("a", "b c"), spool=Spool(Path("/x"), 5))
    dumped = json.loads(json.dumps(dump_config(cfg)))
    assert dumped["spool"] == {"path": "/x", "max_mb": 5} and dumped["kpis"] == ["a", "b c"]
    assert build(App, dumped) == replace(cfg, broker=replace(cfg.broker, password=None))


# --------------------------------------------------------------------------- broker URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", (False, "127.0.0.1", 1883)),
        ("mqtt://broker", (False, "broker", 1883)),
        ("mqtts://broker.example.com", (True, "broker.example.com", 8883)),
        ("mqtts://broker:8884/", (True, "broker", 8884)),
        ("mqtt://[::1]:1884", (False, "::1", 1884)),
    ],
)
def test_parse_broker_url(url: str, expected: tuple[bool, str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://broker", "tcp://broker:1883", "broker:1883", "mqtt://", "mqtt://:1883",
     "mqtt://h:0", "mqtt://h:65536", "mqtt://h:port", "mqtt://h/topic", "mqtt://h?x=1",
     "mqtt://h#f", " mqtt://h", "mqtt://[::1", ""],
)  # fmt: skip
def test_parse_broker_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_broker_url(url)
    assert info.value.key == "broker.url"


def test_parse_broker_url_refuses_credentials_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        parse_broker_url("mqtt://edge:hunter2@broker:1883")
    assert "hunter2" not in str(info.value)
    assert info.value.key == "broker.url"
