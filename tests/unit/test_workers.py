"""`serve --workers N`, `--shared`, `--metrics`, `--clean-session`: configuration only (the
running is integration)."""

from __future__ import annotations

import pytest

from sparsetel.cli import _build_parser
from sparsetel.cloud.ingest.service import ServeConfig, serve_config_from_flags
from sparsetel.cloud.ingest.workers import torch_threads, worker_configs
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import ConfigError


def test_each_worker_is_shared_over_mqtt5_with_a_session_of_its_own() -> None:
    cfg = ServeConfig(broker=BrokerConfig(client_id="dec"), workers=3, stop_after_records=10)
    workers = worker_configs(cfg)
    assert [w.broker.client_id for w in workers] == ["dec-w0", "dec-w1", "dec-w2"]
    assert all(w.shared and w.workers == 1 and w.broker.protocol == "5" for w in workers)
    assert all(w.stop_after_records is None for w in workers)  # the parent counts the store
    derived = [w.broker.client_id for w in worker_configs(ServeConfig(workers=2))]
    assert derived == ["sparsetel-serve-all-w0", "sparsetel-serve-all-w1"]  # stable, not random


def test_worker_i_serves_its_metrics_on_port_plus_i() -> None:
    cfg = ServeConfig(workers=3, metrics="0.0.0.0:9108")
    assert [w.metrics for w in worker_configs(cfg)] == [
        "0.0.0.0:9108", "0.0.0.0:9109", "0.0.0.0:9110",
    ]  # fmt: skip
    assert [w.metrics for w in worker_configs(ServeConfig(workers=2, metrics="[::1]:0"))] == [
        "[::1]:0", "[::1]:0",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="metrics"):
        ServeConfig(workers=4, metrics="127.0.0.1:65534")


def test_the_serve_flags_set_metrics_and_a_clean_session() -> None:
    args = _build_parser().parse_args(["serve", "--metrics", "127.0.0.1:9108", "--clean-session"])
    cfg = serve_config_from_flags(args)
    assert cfg.metrics == "127.0.0.1:9108" and cfg.clean_session
    default = serve_config_from_flags(_build_parser().parse_args(["serve"]))
    assert default.metrics is None and not default.clean_session


@pytest.mark.parametrize(
    ("fields", "key"),
    [({"workers": 0}, "workers"), ({"workers": 65}, "workers"), ({"shared": True}, "shared")],
)
def test_bad_worker_settings_name_their_key(fields: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ServeConfig(**fields)  # type: ignore[arg-type]


def test_the_shared_flag_switches_the_broker_to_mqtt5() -> None:
    args = _build_parser().parse_args(["serve", "--shared", "--workers", "2"])
    cfg = serve_config_from_flags(args)
    assert cfg.shared and cfg.workers == 2 and cfg.broker.protocol == "5"


def test_each_worker_gets_its_share_of_the_cores_for_torch() -> None:
    assert [torch_threads(n, cores=2) for n in (1, 2, 4)] == [2, 1, 1]
    assert [torch_threads(n, cores=16) for n in (1, 3, 4, 32)] == [16, 5, 4, 1]
    assert torch_threads(1) >= 1
