"""`serve --workers N` and `--shared`: configuration only (the running is integration)."""

from __future__ import annotations

import pytest

from sparsetel.cli import _build_parser
from sparsetel.cloud.service import ServeConfig, serve_config_from_flags
from sparsetel.cloud.workers import torch_threads, worker_configs
from sparsetel.shared.config import BrokerConfig
from sparsetel.shared.errors import ConfigError


def test_each_worker_is_shared_over_mqtt5_with_a_session_of_its_own() -> None:
    cfg = ServeConfig(broker=BrokerConfig(client_id="dec"), workers=3, stop_after_records=10)
    workers = worker_configs(cfg)
    assert [w.broker.client_id for w in workers] == ["dec-w0", "dec-w1", "dec-w2"]
    assert all(w.shared and w.workers == 1 and w.broker.protocol == "5" for w in workers)
    assert all(w.stop_after_records is None for w in workers)  # the parent counts the store
    assert [w.broker.client_id for w in worker_configs(ServeConfig(workers=2))] == [None, None]


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
